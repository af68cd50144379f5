"""MoCo v2 for video: a query encoder, a momentum key encoder, a queue of negatives.

`forward` returns (logits, labels) so the loss is plain cross-entropy. The positive is column 0, then the optional
semi-negative column (the key of the video that gave the merged clip its background), then the queue.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def mlp_head(in_dim: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, dim))


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all ranks (no gradient); itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MoCo(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        dim: int = 128,
        queue_size: int = 16384,
        momentum: float = 0.999,
        temperature: float = 0.1,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        self.momentum, self.temperature, self.symmetric = momentum, temperature, symmetric
        self.encoder_q = nn.Sequential(backbone, mlp_head(backbone.out_dim, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q[0]

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = gather(keys)
        size = self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys[-size:] if keys.shape[0] > size else keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @staticmethod
    def _encode(encoder: nn.Sequential, x: torch.Tensor, block: int | None):
        """Unit embedding, and the feature map of backbone block `block` when asked (for the micro-bias term)."""
        backbone, head = encoder[0], encoder[1]
        blocks = backbone.forward_blocks(x)
        z = F.normalize(head(backbone.pool(blocks[-1]).flatten(1)), dim=1)
        return z, (blocks[block] if block is not None else None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder_q, x, None)[0]

    @torch.no_grad()
    def embed_key(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(self.encoder_k, x, None)[0]

    def contrast(self, q: torch.Tensor, k: torch.Tensor, extra: torch.Tensor | None = None):
        """Logits [positive, (semi-negative), queue...] / T and the targets (all 0)."""
        columns = [(q * k).sum(1, keepdim=True)]
        if extra is not None:
            columns.append((q * extra).sum(1, keepdim=True))
        columns.append(q @ self.queue.clone().detach().T)
        logits = torch.cat(columns, dim=1) / self.temperature
        return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, extra_neg: torch.Tensor | None = None, block: int | None = None
    ):
        """(logits, labels), plus the block feature maps when `block` is given: see `forward_features`."""
        logits, labels, maps = self.forward_features(query, key, extra_neg, block)
        return (logits, labels) if block is None else (logits, labels, maps)

    def forward_features(
        self, query: torch.Tensor, key: torch.Tensor, extra_neg: torch.Tensor | None = None, block: int | None = None
    ):
        """query: the (FAME) view; key: another clip of the same video; extra_neg: a view of the partner video.

        Symmetric: the key view is also a query against the query view's key; both halves are stacked, so
        cross-entropy over them is the mean of the two directions. Returns (logits, labels, maps) where maps holds
        the block-`block` feature maps of the query view (query encoder) and the key view (key encoder), or None.
        """
        q, q_map = self._encode(self.encoder_q, query, block)
        with torch.no_grad():
            self._momentum_update()
            k, k_map = self._encode(self.encoder_k, key, block)
            extra = self.embed_key(extra_neg) if extra_neg is not None else None
        logits, labels = self.contrast(q, k, extra)
        keys = [k]
        if self.symmetric:
            q2 = self.embed(key)
            with torch.no_grad():
                k2 = self.embed_key(query)
            logits2, labels2 = self.contrast(q2, k2, extra)
            logits, labels = torch.cat([logits, logits2]), torch.cat([labels, labels2])
            keys.append(k2)
        self._enqueue(torch.cat(keys))
        return logits, labels, (q_map, k_map) if block is not None else None

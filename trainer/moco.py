"""MoCo v2 for video: a query encoder, a momentum key encoder, a queue of negatives.

`forward` returns (logits, labels) so the loss is plain cross-entropy. The positive is column 0, then one column
per extra negative view (the semi-negative: the key of the video that gave the merged clip its background; the
background negative: the merged clip's own background without its foreground), then the queue.

Queue: each step enqueues the key encoder's embeddings of the key view (`k`) and, when symmetric, of the query view
(`k2`, the positive of the second half); the semi-negative keys are not enqueued. Every rank enqueues the same
gathered block, rank by rank, each rank's `k` then `k2`: batch x world x (2 if symmetric else 1) keys a step, which
must fit in the queue (`check_queue`).

Batch norm: a key normalised with the statistics of the batch its query sits in lets the model find the positive
through BN rather than through content. Shuffle-BN (`shuffle_bn`) encodes the keys in a random order spread over
the ranks (DDP) and over the `bn_splits` BN groups of each rank (split-BN, as in MoCo's single-GPU CIFAR demo), so
most keys are normalised with other samples than their query is; their outputs are put back in order after. With
one rank and bn_splits=1 shuffling changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.batchnorm import split_batchnorm

ExtraViews = torch.Tensor | Sequence[torch.Tensor] | None


def mlp_head(in_dim: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, dim))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all ranks (no gradient); itself when not distributed."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def shuffle_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of one random permutation of the batch of all ranks, and the index that undoes it.

    The permutation is drawn on rank 0 and broadcast, so each sample is encoded exactly once. All ranks must hold
    the same batch size.
    """
    rank, world = rank_and_world()
    every = gather(x)
    order = torch.randperm(every.shape[0], device=x.device)
    if world > 1:
        dist.broadcast(order, src=0)
    return every[order.view(world, -1)[rank]], torch.argsort(order)


@torch.no_grad()
def unshuffle_batch(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """The outputs of this rank's own samples, in their original order, from outputs of a `shuffle_batch` share."""
    rank, world = rank_and_world()
    return gather(x)[inverse.view(world, -1)[rank]]


def check_queue(queue_size: int, batch_size: int, world_size: int = 1, symmetric: bool = True) -> None:
    """Raise ValueError unless one step's keys (batch x world x 2 when symmetric) fit in the queue."""
    views = 2 if symmetric else 1
    keys = batch_size * world_size * views
    if keys > queue_size:
        raise ValueError(
            f"queue_size must be at least the keys enqueued per step, batch_size x world_size x {views} "
            f"({'symmetric' if symmetric else 'one view'}) = {batch_size} x {world_size} x {views} = {keys}, "
            f"got {queue_size}"
        )


class MoCo(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        dim: int = 128,
        queue_size: int = 16384,
        momentum: float = 0.999,
        temperature: float = 0.1,
        symmetric: bool = True,
        bn_splits: int = 1,
        shuffle_bn: bool = False,
    ) -> None:
        """bn_splits: BN groups per rank in training (1: the whole batch; the backbone's BN is converted in place).
        shuffle_bn: encode the keys in shuffled order (see the module docstring)."""
        super().__init__()
        self.momentum, self.temperature, self.symmetric = momentum, temperature, symmetric
        self.shuffle_bn = shuffle_bn
        if bn_splits != 1:
            backbone = split_batchnorm(backbone, bn_splits)
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
        """Write this step's keys of all ranks at the pointer, wrapping around, and advance it."""
        size = self.queue.shape[0]
        check_queue(size, keys.shape[0] // (2 if self.symmetric else 1), rank_and_world()[1], self.symmetric)
        keys = gather(keys)
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys
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
        """The key encoder's embedding of `x` as it stands, without shuffle."""
        return self._encode(self.encoder_k, x, None)[0]

    @torch.no_grad()
    def _encode_key(self, x: torch.Tensor, block: int | None = None):
        """`_encode` with the key encoder, through shuffle-BN when on. The block map is unshuffled too: under DDP
        that gathers the maps of all ranks."""
        if not self.shuffle_bn:
            return self._encode(self.encoder_k, x, block)
        x, inverse = shuffle_batch(x)
        z, fmap = self._encode(self.encoder_k, x, block)
        return unshuffle_batch(z, inverse), (unshuffle_batch(fmap, inverse) if fmap is not None else None)

    def contrast(self, q: torch.Tensor, k: torch.Tensor, extras: Sequence[torch.Tensor] = ()):
        """Logits [positive, extra negatives..., queue...] / T and the targets (all 0)."""
        columns = [(q * k).sum(1, keepdim=True)]
        columns += [(q * extra).sum(1, keepdim=True) for extra in extras]
        columns.append(q @ self.queue.clone().detach().T)
        logits = torch.cat(columns, dim=1) / self.temperature
        return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)

    def forward(self, query: torch.Tensor, key: torch.Tensor, extra_neg: ExtraViews = None, block: int | None = None):
        """(logits, labels), plus the block feature maps when `block` is given: see `forward_features`."""
        logits, labels, maps = self.forward_features(query, key, extra_neg, block)
        return (logits, labels) if block is None else (logits, labels, maps)

    def forward_features(
        self, query: torch.Tensor, key: torch.Tensor, extra_neg: ExtraViews = None, block: int | None = None
    ):
        """query: the (FAME) view; key: another clip of the same video; extra_neg: a view (or a sequence of views)
        whose keys are extra negatives of every sample: the partner video's view, the query's background.

        Symmetric: the key view is also a query against the query view's key; both halves are stacked, so
        cross-entropy over them is the mean of the two directions. Returns (logits, labels, maps) where maps holds
        the block-`block` feature maps of the query view (query encoder) and the key view (key encoder), or None.
        """
        q, q_map = self._encode(self.encoder_q, query, block)
        with torch.no_grad():
            self._momentum_update()
            k, k_map = self._encode_key(key, block)
            views = [] if extra_neg is None else [extra_neg] if torch.is_tensor(extra_neg) else list(extra_neg)
            extra = [self._encode_key(view)[0] for view in views]
        logits, labels = self.contrast(q, k, extra)
        keys = [k]
        if self.symmetric:
            q2 = self.embed(key)
            with torch.no_grad():
                k2 = self._encode_key(query)[0]
            logits2, labels2 = self.contrast(q2, k2, extra)
            logits, labels = torch.cat([logits, logits2]), torch.cat([labels, labels2])
            keys.append(k2)
        self._enqueue(torch.cat(keys))
        return logits, labels, (q_map, k_map) if block is not None else None

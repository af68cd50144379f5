"""The micro-bias module: a motion-aware decomposition of a feature map and its loss term.

Static pixels inside the moving region still let a network recognise a clip by its background. From an
intermediate block's feature maps (B, C, T, H, W) we take the change between adjacent frames in feature space,
accumulate it over time into a salient map that lights up where objects move (their boundaries above all),
normalise it to [0, 1], and pool the features under the map (dynamic part) and under its complement (static part).
The dynamic part is trained to agree across views (InfoNCE over the batch); the static part is pushed towards
telling clips apart no better than chance (its batch-softmax over the other view is driven to uniform).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def salient_map(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, H, W) in [0, 1]: accumulated |f[t+1] - f[t]| over time, mean over channels,
    min-max normalised per clip. A single-frame map is all zero (no motion to see).

    With more than 4 time steps the first and last are left out: the zero padding of temporal convolutions makes
    them differ from their neighbours everywhere, static background included."""
    if features.shape[2] < 2:
        return features.new_zeros(features.shape[0], *features.shape[3:])
    if features.shape[2] > 4:
        features = features[:, :, 1:-1]
    change = (features[:, :, 1:] - features[:, :, :-1]).abs().mean(1).sum(1)
    low = change.flatten(1).min(1).values[:, None, None]
    high = change.flatten(1).max(1).values[:, None, None]
    return (change - low) / (high - low + eps)


def decompose(features: torch.Tensor, saliency: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool (B, C, T, H, W) features under the (B, H, W) map and under its complement: (dynamic, static), (B, C)."""
    weight = saliency[:, None, None]  # broadcast over channels and time
    pooled = features * weight
    dynamic = pooled.sum((2, 3, 4)) / (weight.sum((2, 3, 4)) * features.shape[2] + eps)
    static = (features - pooled).sum((2, 3, 4)) / ((1 - weight).sum((2, 3, 4)) * features.shape[2] + eps)
    return dynamic, static


def micro_loss(query_map: torch.Tensor, key_map: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Dynamic parts agree across views; static parts carry no identity (their match is pushed to uniform).

    The key view's map comes from the momentum encoder (no gradient), as MoCo's keys do.
    """
    dyn_q, static_q = decompose(query_map, salient_map(query_map))
    dyn_k, _ = decompose(key_map, salient_map(key_map))
    dyn_q, static_q, dyn_k = (F.normalize(v, dim=1) for v in (dyn_q, static_q, dyn_k))
    targets = torch.arange(dyn_q.shape[0], device=dyn_q.device)
    agree = F.cross_entropy(dyn_q @ dyn_k.T / temperature, targets)
    match = F.log_softmax(static_q @ dyn_k.T / temperature, dim=1)
    entropy = -(match.exp() * match).sum(1).mean()
    return agree + (math.log(dyn_q.shape[0]) - entropy)

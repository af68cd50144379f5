"""Split batch norm: one process normalising its batch in groups, as several GPUs with per-GPU BN would.

MoCo's shuffle-BN needs the key batch spread over several BN batches. With one process the batch is cut into
`splits` contiguous groups, each normalised with its own statistics (as in MoCo's single-GPU CIFAR demo). Eval mode
is ordinary BN with the running statistics, and the parameters and buffers are those of `nn.BatchNorm3d`, so
checkpoints and weights load either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_groups(batch: int, splits: int) -> int:
    """The number of BN groups for a batch: the largest divisor of `batch` that is at most `splits`, so the groups
    are equal (a last, smaller batch of an epoch still runs; a batch of 1 gets plain BN)."""
    return max(d for d in range(1, min(batch, splits) + 1) if batch % d == 0)


class SplitBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose batch statistics, in training, come from each of `splits` contiguous groups of the batch.

    The running statistics move towards the mean over groups of the group statistics: what each group's own BN
    would track, as per-GPU BN does under DDP.
    """

    def __init__(
        self,
        num_features: int,
        splits: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        if splits < 1:
            raise ValueError(f"splits must be a positive int, got {splits}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = split_groups(x.shape[0], self.splits)
        if groups == 1 or not (self.training or self.running_mean is None):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
        # (G*m, C, ...) -> (m, G*C, ...): group g becomes channels g*C .. g*C+C-1 of one G-times-wider BN.
        wide = x.reshape(groups, n // groups, c, *rest).transpose(0, 1).reshape(n // groups, groups * c, *rest)
        mean, var, weight, bias = (
            None if t is None else t.repeat(groups)
            for t in (self.running_mean, self.running_var, self.weight, self.bias)
        )
        out = F.batch_norm(wide, mean, var, weight, bias, True, factor, self.eps)
        if self.training and self.track_running_stats:
            self.running_mean.copy_(mean.view(groups, c).mean(0))
            self.running_var.copy_(var.view(groups, c).mean(0))
        return out.reshape(n // groups, groups, c, *rest).transpose(0, 1).reshape(x.shape)


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Every `nn.BatchNorm3d` of `module` replaced (in place, and returned) by a `SplitBatchNorm3d` that shares its
    parameters and buffers; one already split gets the new `splits`."""
    if splits < 1:
        raise ValueError(f"splits must be a positive int, got {splits}")
    if isinstance(module, SplitBatchNorm3d):
        module.splits = splits
        return module
    if isinstance(module, nn.BatchNorm3d):
        split = SplitBatchNorm3d(
            module.num_features, splits, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        split.weight, split.bias = module.weight, module.bias
        split.running_mean, split.running_var = module.running_mean, module.running_var
        split.num_batches_tracked = module.num_batches_tracked
        split.train(module.training)
        return split
    for name, child in module.named_children():
        module.add_module(name, split_batchnorm(child, splits))
    return module

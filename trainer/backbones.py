"""Video backbones in plain torch: R3D-18, R(2+1)D-18 (the usual video ResNets) and a small 3D CNN for CPUs.

Each returns pooled features from `forward` and the stem and stage outputs from `forward_blocks`, which the
micro-bias module reads.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("r2plus1d18", "r3d18", "small")


def _conv3d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Module:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv2plus1d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Module:
    """A 3x3x3 convolution factorised into spatial 1x3x3 then temporal 3x1x1, with the parameter-matching width."""
    mid = (cin * cout * 27) // (cin * 9 + 3 * cout)
    return nn.Sequential(
        nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, conv) -> None:
        super().__init__()
        s = (stride, stride, stride)
        self.conv1 = nn.Sequential(conv(cin, cout, s), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(cout, cout, (1, 1, 1)), nn.BatchNorm3d(cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm3d(cout))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class VideoResNet(nn.Module):
    """Stem, four stages of two basic blocks, global average pooling."""

    def __init__(self, stem: nn.Module, conv, widths: tuple[int, ...] = (64, 128, 256, 512), depth: int = 2) -> None:
        super().__init__()
        self.stem = stem
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(cin, width, 1 if i == 0 else 2, conv)]
            blocks += [BasicBlock(width, width, 1, conv) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of each stage, (B, C, T', H', W') each."""
        outs = [self.stem(x)]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_blocks(x)[-1]).flatten(1)


def r3d18() -> VideoResNet:
    stem = nn.Sequential(
        nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, _conv3d)


def r2plus1d18() -> VideoResNet:
    stem = nn.Sequential(
        nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(45),
        nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, _conv2plus1d)


def small() -> VideoResNet:
    """A 4-stage, one-block-per-stage 3D CNN of 16..128 channels: trains in minutes on a CPU."""
    stem = nn.Sequential(
        nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False),
        nn.BatchNorm3d(16),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, _conv3d, widths=(16, 32, 64, 128), depth=1)


def build_backbone(name: str) -> VideoResNet:
    factories = {"r2plus1d18": r2plus1d18, "r3d18": r3d18, "small": small}
    if name not in factories:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    return factories[name]()

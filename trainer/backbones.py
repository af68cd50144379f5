"""Video backbones in plain torch: R3D-18, R(2+1)D-18 (the usual video ResNets) and a small 3D CNN for CPUs.

`r3d18` and `r2plus1d18` are torchvision's `r3d_18` and `r2plus1d_18` module for module: the same parameter names
and shapes (torchvision's (2+1)D width rule included), so their state dicts go both ways with `strict=True`
(torchvision's Kinetics weights in, `fame-train export` out). torchvision itself is not a dependency. Their
classifier `fc` exists only when asked for (`num_classes`): a backbone returns pooled features.

Each returns pooled features from `forward` and the stem and stage outputs from `forward_blocks`, which the
micro-bias module reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BACKBONES = ("r2plus1d18", "r3d18", "small")
TORCHVISION_LAYOUT = {"r2plus1d18": "r2plus1d_18", "r3d18": "r3d_18"}  # ours -> torchvision.models.video's name


def midplanes(cin: int, cout: int) -> int:
    """torchvision's (2+1)D width: the spatial-then-temporal pair gets as many parameters as one 3x3x3 conv from cin
    to cout. A block computes it once from its input and output widths and uses it for both its convolutions."""
    return (cin * cout * 3 * 3 * 3) // (cin * 3 * 3 + 3 * cout)


class Conv2Plus1D(nn.Sequential):
    """A 3x3x3 convolution factorised into spatial 1x3x3, BN, ReLU, then temporal 3x1x1 (torchvision's layout)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
        )


def _conv3x3x3(cin: int, cout: int, mid: int, stride: int = 1) -> nn.Module:
    """R3D's full 3x3x3 convolution (torchvision's Conv3DSimple: a bare Conv3d); `mid` is unused."""
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)


ConvMaker = Callable[[int, int, int, int], nn.Module]


class ResBlock(nn.Module):
    """torchvision's video BasicBlock: conv1 (conv, BN, ReLU), conv2 (conv, BN), downsample, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, conv: ConvMaker, stride: int = 1) -> None:
        super().__init__()
        mid = midplanes(cin, cout)
        self.conv1 = nn.Sequential(conv(cin, cout, mid, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(cout, cout, mid, 1), nn.BatchNorm3d(cout))
        self.downsample = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))
            if stride != 1 or cin != cout
            else None
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class VideoResNet(nn.Module):
    """torchvision's VideoResNet-18 layout: stem, layer1..layer4 of two blocks, avgpool, and `fc` only when
    `num_classes` is given (a backbone has none: `forward` then returns the pooled features)."""

    def __init__(self, stem: nn.Module, conv: ConvMaker, num_classes: int | None = None) -> None:
        super().__init__()
        self.stem = stem
        cin = 64
        for i, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            self.add_module(
                f"layer{i}", nn.Sequential(ResBlock(cin, width, conv, stride), ResBlock(width, width, conv))
            )
            cin = width
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = 512
        self.fc = nn.Linear(512, num_classes) if num_classes else None
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    @property
    def pool(self) -> nn.Module:
        """The global pooling, under the name the trainer uses for every backbone."""
        return self.avgpool

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of each stage, (B, C, T', H', W') each."""
        outs = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.avgpool(self.forward_blocks(x)[-1]).flatten(1)
        return features if self.fc is None else self.fc(features)


# ---- the small CPU backbone: its own layout, unchanged, so its checkpoints keep loading --------------------------


def _conv3d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Module:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)


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


class StagedResNet(nn.Module):
    """The small backbone's layout: stem, `stages` of basic blocks, global average pooling.

    Weights and activations are kept channels-last: its narrow 3D convolutions run 1.2-1.5x faster that way on a
    CPU (forward and backward, one thread, 40x40 and 112x112 crops); torchvision's layouts gain nothing or lose."""

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
        self.to(memory_format=torch.channels_last_3d)  # loading weights copies into these strides, keeping them

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of each stage, (B, C, T', H', W') each."""
        outs = [self.stem(x.contiguous(memory_format=torch.channels_last_3d))]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_blocks(x)[-1]).flatten(1)


def r3d18(num_classes: int | None = None) -> VideoResNet:
    """torchvision's r3d_18: full 3x3x3 convolutions, a 3x7x7 stem."""
    stem = nn.Sequential(
        nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, _conv3x3x3, num_classes)


def r2plus1d18(num_classes: int | None = None) -> VideoResNet:
    """torchvision's r2plus1d_18: (2+1)D convolutions and stem (31.3M parameters; 31,505,325 with a 400-class fc)."""
    stem = nn.Sequential(
        nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(45),
        nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, (3, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, Conv2Plus1D, num_classes)


def small() -> StagedResNet:
    """A 4-stage, one-block-per-stage 3D CNN of 16..128 channels: trains in minutes on a CPU."""
    stem = nn.Sequential(
        nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False),
        nn.BatchNorm3d(16),
        nn.ReLU(inplace=True),
    )
    return StagedResNet(stem, _conv3d, widths=(16, 32, 64, 128), depth=1)


def build_backbone(name: str, num_classes: int | None = None) -> VideoResNet | StagedResNet:
    """The backbone `name`; `num_classes` adds torchvision's classifier `fc` (the torchvision layouts only)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    if name == "small":
        if num_classes:
            raise ValueError("the small backbone has no torchvision layout and no classifier")
        return small()
    return {"r2plus1d18": r2plus1d18, "r3d18": r3d18}[name](num_classes)

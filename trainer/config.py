"""TrainConfig: every option of a pretraining run, saved in config.json and in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.loader.params import LoaderParams
from trainer.backbones import BACKBONES


@dataclass(frozen=True)
class TrainConfig:
    cache: str = ""
    out: str = "runs/run"
    videos: str | None = None  # overrides the cache's recorded source root
    backbone: str = "r2plus1d18"
    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.01
    momentum_sgd: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    dim: int = 128
    queue_size: int = 16384
    moco_momentum: float = 0.999
    temperature: float = 0.1
    symmetric: bool = True
    fame: bool = True  # False: the plain MoCo baseline on the same data
    fame_p: float = 1.0  # every query merged, as the original code
    crop: int = 112
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area range of the random resized crop
    augment: bool = True  # MoCo v2 colour augmentations (off only for tests and debugging)
    clip_len: int | None = None  # expected cache clip length; None accepts the cache's
    semi_negatives: bool = False  # the partner (background) video as an extra, hard negative
    micro: bool = False  # the micro-bias term of the dual loss
    micro_weight: float = 0.5
    micro_block: int = 1  # index into backbone.forward_blocks (0 = stem, 1 = first stage: full temporal resolution)
    seed: int = 0
    workers: int = 2
    checkpoint_every: int = 200  # steps
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on GPU
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        for name in ("epochs", "batch_size", "dim", "queue_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not self.temperature > 0:
            raise ValueError("lr and temperature must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def loader_params(self) -> LoaderParams:
        return LoaderParams(
            crop=self.crop,
            augment=self.augment,
            crop_scale=tuple(self.crop_scale),
            fame_p=self.fame_p if self.fame else 0.0,
            return_partner=self.semi_negatives,
            num_workers=self.workers,
            clip_len=self.clip_len,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = ("epochs", "out", "workers")) -> dict:
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}

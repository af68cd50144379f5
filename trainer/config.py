"""TrainConfig: every option of a pretraining run, saved in config.json and in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.loader.params import BEFORE_ADDED, LoaderParams
from trainer.backbones import BACKBONES

# Loader options that older checkpoints stored flat on TrainConfig, by their LoaderParams name.
_FLAT_LOADER_KEYS = {
    "crop": "crop",
    "crop_scale": "crop_scale",
    "fame_p": "fame_p",
    "augment": "augment",
    "clip_len": "clip_len",
    "workers": "num_workers",
}
# Loader options that change how fast, not what, a run trains: a resumed run may change them.
_SPEED_ONLY = ("num_workers", "num_threads", "prefetch")
# Settings a resumed run may change besides those: where the run and its videos are, where it runs, how often it saves
# and logs, and how long it trains (`epochs`, to extend it). `init` chose where the run started; the checkpoint holds
# where it is now, so it is not read again.
RESUME_MAY_CHANGE = ("epochs", "out", "init", "checkpoint_every", "device", "videos", "tensorboard")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "gpu", "cuda")  # gpu and cuda are the same: torch's first GPU, or LOCAL_RANK's


@dataclass(frozen=True)
class TrainConfig:
    cache: str = ""
    out: str = "runs/run"
    videos: str | None = None  # overrides the cache's recorded source root
    backbone: str = "r2plus1d18"
    # A state dict the backbone starts from instead of random weights: torchvision's (r3d_18/r2plus1d_18, e.g. its
    # Kinetics-400 weights; the classifier is left out), a `fame-train export`, or another run's checkpoint.
    init: str | None = None
    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (momentum_sgd) or adamw
    momentum_sgd: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    dim: int = 128
    queue_size: int = 16384
    moco_momentum: float = 0.999
    temperature: float = 0.1
    symmetric: bool = True
    bn_splits: int = 1  # batch-norm statistics per group of the batch (single-process MoCo's split-BN)
    shuffle_bn: bool = False  # keys encoded in a shuffled order: across BN groups, and across ranks under DDP
    fame: bool = True  # False: the plain MoCo baseline on the same data (no query is merged)
    semi_negatives: bool = False  # the partner (background) video as an extra, hard negative
    # The merged query's own background (the same crop, flip and colours, without its foreground) as an extra
    # negative: a query that still looks like its background is pushed away from it.
    background_negatives: bool = False
    # Each view frozen (its middle frame repeated) as an extra negative of both views: the same pixels without the
    # motion, so a representation that ignores motion cannot tell the positive from it.
    still_negatives: bool = False
    micro: bool = False  # the micro-bias term of the dual loss
    micro_weight: float = 0.5
    micro_block: int = 1  # index into backbone.forward_blocks (0 = stem, 1 = first stage: full temporal resolution)
    seed: int = 0
    checkpoint_every: int = 200  # steps
    device: str = "auto"  # auto | cpu | gpu (cuda: the same)
    amp: bool = True  # bf16 autocast on GPU
    deterministic: bool = False
    tensorboard: bool = False  # also log the scalars of log.jsonl as TensorBoard events in RUN/tensorboard/
    loader: LoaderParams = field(default_factory=LoaderParams)  # crops, merge, augmentation, workers

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        for name in ("epochs", "batch_size", "dim", "queue_size", "checkpoint_every", "bn_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not self.temperature > 0:
            raise ValueError("lr and temperature must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")
        if isinstance(self.loader, dict):
            object.__setattr__(self, "loader", LoaderParams.from_dict(self.loader))

    def loader_params(self) -> LoaderParams:
        """The loader's options as this run uses them: no merged query for plain MoCo, the partner view for
        semi-negatives."""
        fame_p = self.loader.fame_p if self.fame else 0.0
        return dataclasses.replace(
            self.loader,
            fame_p=fame_p,
            return_partner=self.semi_negatives,
            return_background=self.background_negatives,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From `to_dict`'s output, or from an older one: a flat config (loader options on the top level), or one
        saved before some loader options existed (those read as the run was trained: `BEFORE_ADDED`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        loader = dict(data.get("loader") or {})
        for old, new in _FLAT_LOADER_KEYS.items():
            if old in data and new not in loader:
                loader[new] = data[old]
        loader = {**BEFORE_ADDED, **loader}
        values["loader"] = LoaderParams.from_dict(loader)
        return cls(**values)

    def differences(self, other: TrainConfig, ignore: tuple[str, ...] = RESUME_MAY_CHANGE) -> dict:
        """Settings that differ, as {name: (mine, theirs)}; loader options as `loader.<name>`."""

        def flat(config: TrainConfig) -> dict[str, Any]:
            out = {k: v for k, v in config.to_dict().items() if k != "loader"}
            out.update({f"loader.{k}": v for k, v in config.loader.to_dict().items() if k not in _SPEED_ONLY})
            return out

        mine, theirs = flat(self), flat(other)
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}

"""Checkpoints that load with `weights_only=True`: tensors, plain dicts, numbers and strings, no pickled objects.

Also the backbone's weights on their own: `export_backbone` writes a plain state dict in torchvision's layout (what
`fame-train export` gives other code), and `load_init` reads one (torchvision's Kinetics weights, an export, or a
checkpoint) into a backbone (what `pretrain --init` starts from).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig

QUERY_BACKBONE = "encoder_q.0."  # the query encoder's backbone inside a checkpoint's model
# Checkpoints made before r3d18/r2plus1d18 took torchvision's layout named the stages `stages.<i>.<j>` and the
# projection shortcut `shortcut`.
_OLD_LAYOUT = re.compile(r"^(encoder_[qk]\.0\.)stages\.(\d+)\.(\d+)\.(conv1|conv2|shortcut)\.(.+)$")


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or not one of ours."""


def save_checkpoint(path: Path, model, optimizer, loader, config: TrainConfig, step: int) -> None:
    """Write atomically (temp file, then rename), so a crash never leaves a half-written checkpoint."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loader": loader.state_dict(),
        "config": config.to_dict(),
        "step": step,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    _save(state, path)


def _save(state: Any, path: Path) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint or state dict ({exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    state = _read(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a fame-train checkpoint (no model/config)")
    state["model"] = _upgrade_layout(state["model"], str(state["config"].get("backbone", "")), path)
    return state


def _upgrade_layout(model: dict[str, torch.Tensor], backbone: str, path: Path) -> dict[str, torch.Tensor]:
    """A model state in today's names. r3d18 checkpoints of the older layout had torchvision's shapes under other
    names and are renamed (the optimizer's state is by parameter order, which is unchanged); r2plus1d18 ones had
    other widths (33.2M parameters, torchvision's is 31.3M) and cannot be, so they are refused."""
    if backbone not in ("r3d18", "r2plus1d18") or not any(_OLD_LAYOUT.match(k) for k in model):
        return model
    if backbone == "r2plus1d18":
        raise CheckpointError(
            f"{path}: an r2plus1d18 checkpoint of the layout before torchvision's (stages.*, 33.2M parameters); "
            "this version's r2plus1d18 is torchvision's r2plus1d_18 (31.3M, other widths), so its weights cannot "
            "be carried over: pretrain again, or read it with fame-pipeline before the change"
        )

    def renamed(key: str) -> str:
        match = _OLD_LAYOUT.match(key)
        if not match:
            return key
        prefix, stage, block, part, rest = match.groups()
        return f"{prefix}layer{int(stage) + 1}.{block}.{'downsample' if part == 'shortcut' else part}.{rest}"

    return {renamed(k): v for k, v in model.items()}


def load_backbone(path: str | Path):
    """The query encoder's backbone of a checkpoint, in eval mode, and its config."""
    from trainer.backbones import build_backbone

    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    backbone = build_backbone(config.backbone)
    backbone.load_state_dict(_backbone_state(state["model"]))
    return backbone.eval(), config


def _backbone_state(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(QUERY_BACKBONE) :]: v for k, v in model.items() if k.startswith(QUERY_BACKBONE)}


def export_backbone(path: str | Path, out: str | Path, num_classes: int | None = None, seed: int = 0) -> str:
    """Write the query backbone of checkpoint `path` to `out` as a plain state dict; returns its backbone's name.

    r3d18 and r2plus1d18 are in torchvision's layout: `torchvision.models.video.r2plus1d_18()` loads the file with
    `strict=True` once its `fc` is `nn.Identity()` (a backbone has no classifier), or as it is when `num_classes`
    adds an `fc` initialised as torchvision initialises one (normal, std 0.01, zero bias; drawn from `seed`).
    """
    from trainer.backbones import TORCHVISION_LAYOUT

    backbone, config = load_backbone(path)
    state = dict(backbone.state_dict())
    if num_classes is not None:
        if config.backbone not in TORCHVISION_LAYOUT:
            raise ValueError(f"--num-classes: the {config.backbone} backbone has no torchvision layout to add fc to")
        if num_classes < 1:
            raise ValueError(f"--num-classes must be >= 1, got {num_classes}")
        generator = torch.Generator().manual_seed(seed)
        state["fc.weight"] = torch.randn(num_classes, backbone.out_dim, generator=generator) * 0.01
        state["fc.bias"] = torch.zeros(num_classes)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the file to write, e.g. {out / 'backbone.pt'}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    _save(state, out)
    return config.backbone


def load_init(backbone: torch.nn.Module, path: str | Path) -> list[str]:
    """Load the weights of `path` into `backbone` (all of them, shapes checked); returns the keys left out: a
    classifier (`fc.*`), which a backbone has no use for.

    `path` holds a plain state dict (torchvision's Kinetics weights, `fame-train export`'s output), one under a
    `state_dict` key, or a fame-train checkpoint (its query backbone). Raises CheckpointError naming what does not
    fit: a missing or extra key, a shape that differs."""
    path = Path(path)
    state = _read(path)
    if isinstance(state, dict) and "model" in state and "config" in state:
        state = _backbone_state(load_checkpoint(path)["model"])
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    left_out = sorted(k for k in state if k.split(".")[0] == "fc")
    state = {k: v for k, v in state.items() if k not in left_out}
    mine = backbone.state_dict()
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(mine[k].shape)})"
        for k in mine
        if k in state and state[k].shape != mine[k].shape
    ]
    for what, keys in (("missing", missing), ("not in this backbone", extra), ("of another shape", shapes)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise CheckpointError(
                f"{path}: does not fit the {type(backbone).__name__} backbone: {len(keys)} key(s) {what}: {shown}"
            )
    backbone.load_state_dict(state, strict=True)
    return left_out

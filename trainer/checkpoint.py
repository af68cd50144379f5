"""Checkpoints that load with `weights_only=True`: tensors, plain dicts, numbers and strings, no pickled objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig


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
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a fame-train checkpoint (no model/config)")
    return state


def load_backbone(path: str | Path):
    """The query encoder's backbone of a checkpoint, in eval mode, and its config."""
    from trainer.backbones import build_backbone

    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    backbone = build_backbone(config.backbone)
    prefix = "encoder_q.0."
    weights = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    backbone.load_state_dict(weights)
    return backbone.eval(), config

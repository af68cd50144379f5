"""Pictures of a run: training curves from its log.jsonl (a PNG beside it) and eval's confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_log(run: str | Path) -> list[dict]:
    path = Path(run) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log in this run folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run: str | Path) -> Path:
    records = read_log(run)
    steps = [r["step"] for r in records]
    panels = [("loss", "loss"), ("lr", "learning rate"), ("clips_per_s", "clips/s"), ("data_wait", "data wait")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], lw=1)
        if key == "loss" and any("micro" in r for r in records):
            ax.plot(steps, [r.get("contrastive", float("nan")) for r in records], lw=1, label="contrastive")
            ax.plot(steps, [r.get("micro", float("nan")) for r in records], lw=1, label="micro")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(table: dict, path: str | Path, title: str = "") -> Path:
    """The linear probe's confusion matrix (`evaluate.confusion`): colour by the share of each true class's videos,
    the count in each cell, each class's top-1 beside its row."""
    classes, matrix = table["classes"], np.array(table["matrix"], dtype=float)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    side = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 30:  # counts stay legible up to about this many classes
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if shares[i, j] > 0.6 else "black"
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=colour)
    per_class = table["per_class_top1"]
    rows = [f"{c} ({100 * per_class[c]:.0f}%)" if per_class[c] is not None else f"{c} (-)" for c in classes]
    ax.set_yticks(range(n), rows, fontsize=7)
    ax.set_xticks(range(n), classes, fontsize=7, rotation=90)
    ax.set_ylabel("true class (its top-1)")
    ax.set_xlabel("predicted class")
    ax.set_title(title or "linear probe", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's videos")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

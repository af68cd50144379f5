"""Training curves from a run's log.jsonl, as a PNG beside it."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

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

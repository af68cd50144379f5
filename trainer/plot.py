"""Pictures of a run: training curves from its log.jsonl (a PNG beside it) and eval's confusion matrix."""

from __future__ import annotations

import json
from itertools import pairwise
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


MAX_EPOCH_MARKS = 40  # more epochs than this: every k-th change is marked, so the lines do not hide the curves


def smooth(values: list[float], weight: float | None = None) -> np.ndarray:
    """An exponential moving average with TensorBoard's bias correction (the first points are not pulled towards 0).

    The default weight follows the run's length (a window of about a 20th of the steps, at least 3, weight at most
    0.98), so a short demo run and a long one are smoothed alike; NaNs (steps without the value) are carried over,
    not averaged in."""
    x = np.asarray(values, dtype=float)
    if weight is None:
        weight = min(0.98, 1 - 1 / max(3.0, len(x) / 20))
    out, mean, norm = np.full(len(x), np.nan), 0.0, 0.0
    for i, v in enumerate(x):
        if np.isfinite(v):
            mean, norm = weight * mean + (1 - weight) * v, weight * norm + (1 - weight)
        out[i] = mean / norm if norm else np.nan
    return out


def epoch_marks(records: list[dict]) -> list[tuple[float, int]]:
    """(x, epoch) for each place the epoch changes between two logged steps: halfway between them; thinned to at
    most `MAX_EPOCH_MARKS`."""
    changes = [
        ((a["step"] + b["step"]) / 2, int(b["epoch"]))
        for a, b in pairwise(records)
        if "epoch" in a and "epoch" in b and a["epoch"] != b["epoch"]
    ]
    every = -(-len(changes) // MAX_EPOCH_MARKS) if changes else 1
    return changes[::every]


def curves_figure(records: list[dict], name: str):
    """The run's curves: loss (raw, smoothed, its parts), learning rate, clips/s and data wait, against the step,
    with a dotted line where each epoch starts and the run's name on top."""
    steps = [r["step"] for r in records]
    panels = [("loss", "loss"), ("lr", "learning rate"), ("clips_per_s", "clips/s"), ("data_wait", "data wait")]
    marks = epoch_marks(records)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [r.get(key, float("nan")) for r in records]
        if key == "loss":
            ax.plot(steps, values, lw=0.8, alpha=0.35, color="C0", label="total loss")
            ax.plot(steps, smooth(values), lw=1.6, color="C0", label="total loss, smoothed")
            if any("micro" in r for r in records):
                for part, colour in (("contrastive", "C1"), ("micro", "C2")):
                    part_values = [r.get(part, float("nan")) for r in records]
                    ax.plot(steps, smooth(part_values), lw=1, color=colour, label=f"{part}, smoothed")
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, lw=1)
        for x, _ in marks:
            ax.axvline(x, color="0.45", lw=0.8, ls=":", gid="epoch")
        ax.set_title(title)
        ax.set_xlabel("step" + (" (dotted: epoch starts)" if marks else ""))
        ax.grid(alpha=0.3)
    epochs = {r["epoch"] for r in records if "epoch" in r}
    fig.suptitle(f"{name}  |  {len(records)} steps, {len(epochs)} epochs", fontsize=11)
    fig.tight_layout()
    return fig


def plot_run(run: str | Path) -> Path:
    """Write `curves.png` beside the run's log.jsonl, titled with the run folder's name (and its parent's, since run
    folders are often named alike: `fame/run`, `plain/run`)."""
    records = read_log(run)
    fig = curves_figure(records, "/".join(Path(run).resolve().parts[-2:]))
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

"""Background-bias benchmark: which pretraining setting learns the motion rather than the scene?

Data (`benchmarks/bias_scenes.py`): five classes told apart only by how a textured object moves (side to side, up
and down, circle, corner to corner, pulsing), over backgrounds of five families (a hue-tinted texture blended with
crops of the real sample videos). In training the family matches the class 95% of the time; in the test it is
always another class's, so a representation that learned the background scores below chance (0.2). Two mover
sizes: `small` (2-5% of the frame) and `actor` (10-20%); half the videos pan.

For each mover size the train and test sets are generated once, cached with `build_cache` (method `motion`, and
`fame` for the paper arm), then every arm pretrains the small backbone with the same budget and seeds, and a linear
probe and kNN are fitted on the training videos and scored on the swapped test. Arms:

- moco: plain MoCo (no merged query).
- fame_paper: FAME as published: `fame`-method masks, top-beta (0.5) area rule per crop, no own-pixel floor or
  margin, the partner's raw frames as background, the key a plain clip from any start.
- fame: FAME with the project's defaults (`motion` masks, default LoaderParams: both views the same clip, each merged
  over another video's plate, keeping the mover and a margin of 0.3 of the crop around it).
- fame_query_only: the defaults before the key was merged (the query alone merged, floor 0.3, the key a plain clip
  from any start; named, not run by default).
- fame+semi: defaults + semi-negatives.
- fame+semi+micro: defaults + semi-negatives + the micro-bias term (weight 0.5).
- fame+bgneg: defaults + the merged query's own background as an extra negative (named, not run by default).
- fame+still: defaults + each view frozen at its middle frame as an extra negative (named, not run by default).
- fame+keymerge: both views merged with a fixed floor of 0.6 of the crop and no margin (named, not run by default).
- untrained: not pretraining: the backbone as initialised (36 steps at lr 1e-9 fit its batch-norm statistics and
  move no weight), the floor a pretraining must beat besides chance (named, not run by default).
- supervised: not pretraining but the budget's ceiling: the same backbone, merged query views and steps, trained with
  the class. If it cannot follow the motion, no self-supervised arm can be expected to at this budget.

Besides the rendered swapped test, each run is scored as a user would score a model on their own data
(`fame-train eval --protocol swapped --test-cache`): on a cache of held-out videos whose backgrounds follow the
class (`val`), each clip's cached foreground over a plate of another class. Its columns: `cache swap: own` (the
clip's class), `background` (the plate's class) and `plate alone`.

Movers share one look (texture and hue) by default; `--looks N` draws each video's look from N shared ones,
independently of the class, and `--looks 0` gives each video a look of its own. With its own look, a clip is told
from the queue's by its mover's look, which both views show, whatever the scene or the motion: instance
discrimination then learns the look (FAME and MoCo alike score below chance), which is not what this benchmark asks
about (scene against motion), so the looks are shared unless asked.

Seeds run in the outer loop, arms in the inner one, so a slow spell of a shared machine hits every arm alike; the
gain of an arm over moco is the paired per-seed difference, with a 95% t-interval.

    python benchmarks/bias.py [--quick] [--sizes small actor] [--arms moco fame] [--seeds 0 1 2] [--epochs N]
        [--looks N] [--arm 'fame_b30={"loader": {"mask_mode": "area", "beta": 0.3}}']
        [--json benchmarks/results/bias.json]

`--arm NAME=JSON` adds an arm (repeatable): TrainConfig overrides, a nested "loader" dict of LoaderParams overrides,
and "method" ("motion" or "fame") choosing the cache. Outputs: the JSON, a Markdown table with the same stem, and
`<stem>_loss.png` (each arm's mean contrastive loss by step, per size, with ln(queue + 1), the loss of a query
that cannot tell its key from the queue, dashed). `--quick` writes `bias_quick.*` unless `--json` is given.

Budget: AdamW (lr 1e-3, weight decay 0.05) for every arm, 30 epochs of 9 steps of batch 16, crop 40, clips of 8.
With SGD (lr 0.05) FAME's loss first rose towards ln(queue + 1) and fell only after ~400 steps; with AdamW it falls
from the start, and at 324 steps the defaults beat MoCo on both mover sizes (`make bench-bias-long`).
Time, on 2 CPU cores: each mover size runs in a process of its own with one torch thread (`--jobs`, default up to
2); a 324-step run of moco or fame costs ~2.4 min with the other size's run beside it (the loader's decoding and the
model share the two cores), arms with extra views more; videos and caches ~30 s per mover size. The default arms
(5 arms x 5 seeds x 2 sizes) take about an hour, `--quick` (3 arms x 2 seeds x 2 sizes, 72 steps a run) under 10 min.
One torch thread per process: two threads on two shared cores, beside the loader's worker, stalled at OpenMP
barriers (0.4 s steps took 2-5 s).
`--merge A.json B.json --json F` joins reports of other mover sizes made with the
same budget. Videos are written at 96x128 (a width PyAV and x264 encode deterministically, see `bias_scenes`) and
cached at 48x64.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.bias_scenes import CLASSES, MOVER_AREAS, load_real_frames, write_bias_set  # noqa: E402
from benchmarks.loader import TWO_CLIPS  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.loader import FameLoader  # noqa: E402
from pipeline.loader.params import LoaderParams  # noqa: E402
from pipeline.params import METHODS, BuildParams  # noqa: E402
from pipeline.signals import descendants, handle_signals, reap  # noqa: E402
from pipeline.sources import list_source  # noqa: E402
from pipeline.swap import SwapSet, draw_swaps  # noqa: E402
from trainer.backbones import build_backbone  # noqa: E402
from trainer.checkpoint import load_backbone  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.evaluate import EvalSettings, evaluate, extract, linear_probe  # noqa: E402
from trainer.train import lr_at, make_optimizer, pretrain  # noqa: E402

CHANCE = 1 / len(CLASSES)
BASELINE = "moco"
QUICK_ARMS = ("moco", "fame", "fame_paper")
# What `make bench-bias` runs: the arms the bias issue asks for, within an hour on 2 cores (the supervised ceiling
# and the untrained floor on request).
DEFAULT_ARMS = ("moco", "fame_paper", "fame", "fame+semi", "fame+semi+micro")
# `fame-train eval --protocol swapped` on the test videos' own cache: own class, background's class, plate alone.
CACHE_SWAP_KEYS = ("swapped_top1", "swapped_bg_top1", "background_only_top1")


# The project's defaults before both views were merged: the query merged by threshold with a floor of 0.3, the key
# a plain clip from any start, the query's crop anywhere.
# (the loader benchmark's two-clip FAME arm).
QUERY_ONLY_LOADER = TWO_CLIPS
# The paper's merge, on the query alone as above: the top-beta (0.5) area rule inside the crop, the partner's raw
# frames, no own-pixel floor (the paper keeps whatever the area rule keeps).
PAPER_LOADER = {**QUERY_ONLY_LOADER, "mask_mode": "area", "beta": 0.5, "background": "frames", "own_floor": 0.0}
ARMS: dict[str, dict[str, Any]] = {
    "moco": {"fame": False},
    "fame_paper": {"method": "fame", "loader": PAPER_LOADER},
    "fame": {},
    "fame_query_only": {"loader": QUERY_ONLY_LOADER},
    "fame+semi": {"semi_negatives": True},
    "fame+semi+micro": {"semi_negatives": True, "micro": True, "micro_weight": 0.5},
    "fame+bgneg": {"background_negatives": True},
    "fame+still": {"still_negatives": True},
    # Both views merged on the query's own frames, over two other videos' plates, keeping at least 60% of each crop
    # from the clip: the pair shares the mover, its path and the scene around it, and no background.
    "fame+keymerge": {
        "loader": {"key_start": "same", "key_merge": True, "own_floor": 0.6, "own_margin": 0.0, "query_crop": "random"}
    },
    # Not pretraining: the ceiling. The same backbone, merged views and budget, told the class.
    "supervised": {"supervised": True},
    # Not pretraining either: the backbone as initialised, its batch-norm statistics fitted to the data over a few
    # steps at a learning rate that moves no weight. What a pretraining must beat besides chance.
    "untrained": {"epochs": 4, "warmup_epochs": 0, "lr": 1e-9},
}


@dataclass(frozen=True)
class Budget:
    """Everything every arm shares: data, cache, training budget and evaluation."""

    epochs: int
    seeds: tuple[int, ...]
    train_per_class: int = 30
    test_per_class: int = 16
    video_size: tuple[int, int] = (96, 128)  # frames (h, w) as written (width a multiple of 64: see bias_scenes)
    size: tuple[int, int] = (48, 64)  # the cache's frame size (frames are resized whole to it)
    n_frames: int = 36
    period: float = 24.0  # frames per motion cycle, before the per-video speed jitter
    clip_len: int = 8
    stride: int = 2
    clips_per_video: int = 2
    batch_size: int = 16
    queue_size: int = 64  # >= 2 x batch: a symmetric step enqueues 2 x batch keys
    crop: int = 40
    crop_scale: tuple[float, float] = (0.5, 1.0)
    # AdamW: FAME's loss starts falling after ~150 steps (SGD at lr 0.05: ~400), so an hour's budget can decide.
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    moco_momentum: float = 0.99
    loader_workers: int = 1
    looks: int | None = 1  # movers share this many looks; None: each video draws its own (see the docstring)
    data_seed: int = 0  # both mover sizes draw the same videos (paths, backgrounds, pans), the mover's size aside

    @property
    def eval_size(self) -> tuple[int, int]:
        """Evaluation resizes whole frames so the centre crop spans the height and the middle 3/4 of the width,
        where the generator keeps every mover's path."""
        h, w = self.size
        return self.crop, round(self.crop * w / h)

    def build_params(self, size: tuple[int, int], method: str = BuildParams.method) -> BuildParams:
        """A cache of this budget's clips, frames resized to `size`."""
        return BuildParams(
            size=size, clip_len=self.clip_len, stride=self.stride, clips_per_video=self.clips_per_video, method=method
        )

    @property
    def eval_settings(self) -> EvalSettings:
        """The clips the probe sees: the cache's clip shape, centre crops at the training crop's scale."""
        return EvalSettings(
            clip_len=self.clip_len,
            stride=self.stride,
            clips_per_video=self.clips_per_video,
            size=self.eval_size,
            crop=self.crop,
        )


FULL = Budget(epochs=30, seeds=(0, 1, 2, 3, 4))
QUICK = Budget(epochs=8, seeds=(0, 1))


# ---- arms -----------------------------------------------------------------------------------------------------------


def check_arm(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown keys before any work starts, naming them and the allowed ones."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"loader", "cache", "out"}
    loader_fields = {f.name for f in dataclasses.fields(LoaderParams)}
    unknown = set(overrides) - train_fields - {"loader", "method", "supervised"}
    if unknown:
        raise ValueError(f"arm {name}: unknown TrainConfig field(s) {sorted(unknown)}; allowed: {sorted(train_fields)}")
    unknown = set(overrides.get("loader", {})) - loader_fields
    if unknown:
        raise ValueError(
            f"arm {name}: unknown LoaderParams field(s) {sorted(unknown)}; allowed: {sorted(loader_fields)}"
        )
    if overrides.get("method", "motion") not in METHODS:
        raise ValueError(f"arm {name}: method must be one of {', '.join(METHODS)}, got {overrides['method']!r}")
    return overrides


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME=JSON' -> (NAME, overrides)."""
    name, sep, body = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--arm must be NAME=JSON, got {text!r}")
    try:
        overrides = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--arm {name}: not valid JSON ({exc}): {body!r}") from exc
    if not isinstance(overrides, dict):
        raise ValueError(f"--arm {name}: JSON must be an object, got {body!r}")
    return name, check_arm(name, overrides)


def base_loader(budget: Budget) -> LoaderParams:
    """The loader every arm starts from: project defaults with the budget's crop, one decoding worker and one DALI
    thread (speed-only options: with the trainer's one torch thread, each process has a core of its own)."""
    return LoaderParams(
        crop=budget.crop, crop_scale=budget.crop_scale, num_workers=budget.loader_workers, num_threads=1
    )


def make_config(overrides: dict[str, Any], budget: Budget, cache: str, out: str, seed: int) -> TrainConfig:
    """The arm's TrainConfig: the shared budget, then the arm's overrides (loader options merged, not replaced)."""
    arm = {k: v for k, v in overrides.items() if k not in ("loader", "method", "supervised")}
    loader = dataclasses.replace(base_loader(budget), **overrides.get("loader", {}))
    shared = {
        "cache": cache,
        "out": out,
        "backbone": "small",
        "epochs": budget.epochs,
        "batch_size": budget.batch_size,
        "queue_size": budget.queue_size,
        "optimizer": budget.optimizer,
        "lr": budget.lr,
        "weight_decay": budget.weight_decay,
        "warmup_epochs": budget.warmup_epochs,
        "moco_momentum": budget.moco_momentum,
        "seed": seed,
        "checkpoint_every": 10_000,
        "device": "cpu",
    }
    return TrainConfig(**{**shared, **arm, "loader": loader})


# ---- one run --------------------------------------------------------------------------------------------------------


def read_losses(run: Path) -> dict[str, list[float]]:
    """Per-step 'loss' (and 'contrastive' when logged) from a run's log.jsonl."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    curves = {"loss": [r["loss"] for r in records]}
    if any("contrastive" in r for r in records):
        curves["contrastive"] = [r.get("contrastive", math.nan) for r in records]
    return curves


def tail_mean(values: list[float], fraction: float = 0.1) -> float:
    """Mean of the last `fraction` of the steps (at least one): the loss a run ended at, less one step's noise."""
    n = max(1, round(len(values) * fraction))
    return statistics.fmean(values[-n:])


def cv_top1(features: torch.Tensor, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Top-1 of the evaluation's linear probe under k-fold cross-validation inside one set of videos."""
    order = np.random.default_rng(seed).permutation(len(labels))
    correct = 0.0
    for held in np.array_split(order, folds):
        fit = np.setdiff1d(order, held)
        y = torch.as_tensor(labels)
        correct += linear_probe(features[fit], y[fit], features[held], y[held]) * len(held)
    return correct / len(labels)


def decodability(backbone: torch.nn.Module, test_dir: Path, budget: Budget) -> dict[str, float]:
    """What the features hold, told apart from what a probe fitted on biased training videos picks: the motion class
    and the background family, each decoded by cross-validation inside the swapped test, where the two are
    independent of each other. A representation that learned motion scores high on `motion_cv_top1` whatever the
    probe trained on the correlated set does; chance is 1 / classes for both."""
    source = list_source(str(test_dir))
    manifest = {row["path"]: row for row in json.loads((test_dir / "manifest.json").read_text())}
    features, _, _ = extract(backbone.eval(), source, budget.eval_settings, torch.device("cpu"), "test features")
    motion = np.array([manifest[e.path]["motion"] for e in source.entries])
    family = np.array([manifest[e.path]["family"] for e in source.entries])
    return {"motion_cv_top1": cv_top1(features, motion), "scene_cv_top1": cv_top1(features, family)}


def train_supervised(config: TrainConfig) -> tuple[torch.nn.Module, list[float]]:
    """The ceiling of a budget: the arms' backbone, merged query views, steps and learning-rate schedule, trained
    with the class (cross-entropy through a linear head). If this cannot follow the motion on the swapped test, no
    self-supervised arm can be expected to at this budget. Returns the backbone and its loss by step."""
    torch.manual_seed(config.seed)
    loader = FameLoader(config.cache, config.batch_size, params=config.loader_params(), device="cpu", seed=config.seed)
    backbone = build_backbone(config.backbone)
    head = torch.nn.Linear(backbone.out_dim, len(loader.catalog.classes))
    optimizer = make_optimizer(config, [*backbone.parameters(), *head.parameters()])
    total, warmup = len(loader) * config.epochs, len(loader) * config.warmup_epochs
    losses: list[float] = []
    try:
        for _ in range(config.epochs):
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(len(losses), total, warmup, config.lr)
                loss = F.cross_entropy(head(backbone(batch["query"])), batch["label"].long().view(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        loader.close()
    return backbone.eval(), losses


def run_one(
    config: TrainConfig, supervised: bool, train_dir: Path, test_dir: Path, swap_set: SwapSet, budget: Budget
) -> tuple[dict, dict]:
    """Pretrain (or, for the ceiling, train with labels), evaluate on the swapped test and on the cache-built swapped
    set; returns (the run's record, its loss curves)."""
    start = time.perf_counter()
    if supervised:
        backbone, losses = train_supervised(config)
        curves = {"loss": losses}
    else:
        backbone, _ = load_backbone(pretrain(config, progress=False))
        curves = read_losses(Path(config.out))
    trained = time.perf_counter()
    protocols = ("linear", "knn", "swapped")
    metrics = evaluate(backbone, str(train_dir), str(test_dir), protocols, budget.eval_settings, swap_set=swap_set)
    metrics.update(decodability(backbone, test_dir, budget))
    record = {
        "seed": config.seed,
        "linear_top1": metrics["linear_top1"],
        "knn_top1": metrics["knn_top1"],
        "motion_cv_top1": metrics["motion_cv_top1"],
        "scene_cv_top1": metrics["scene_cv_top1"],
        **{key: metrics[key] for key in CACHE_SWAP_KEYS},
        "loss_end": tail_mean(curves["loss"]),
        **({"contrastive_end": tail_mean(curves["contrastive"])} if "contrastive" in curves else {}),
        "steps": len(curves["loss"]),
        "seconds": time.perf_counter() - start,
        "train_seconds": trained - start,
    }
    return record, curves


# ---- statistics -----------------------------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t by degrees of freedom (scipy is not a dependency).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
T975.update({11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093})
T975.update({20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980})


def t_quantile(df: int) -> float:
    """t_{0.975, df}; between table rows the next smaller df (a slightly wider interval), 1.96 beyond 120."""
    if df > 120:
        return 1.96
    return T975[max(k for k in T975 if k <= df)]


def ci95(values: list[float], low: float = 0.0, high: float = 1.0) -> list[float] | None:
    """95% t-interval of the mean, [low, high], clipped to the values' range (top-1 in [0, 1], a difference of
    two in [-1, 1]); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return [max(low, mean - half), min(high, mean + half)]


def summarise(runs: list[dict], setting: dict) -> dict:
    """An arm's means and intervals over seeds."""
    out: dict[str, Any] = {}
    for key in ("linear_top1", "knn_top1", "motion_cv_top1", "scene_cv_top1", *CACHE_SWAP_KEYS):
        values = [r[key] for r in runs if key in r]
        if not values:
            continue
        out[f"{key}_mean"] = statistics.fmean(values)
        out[f"{key}_ci95"] = ci95(values)
    out["loss_end_mean"] = statistics.fmean(r["loss_end"] for r in runs)
    if all("contrastive_end" in r for r in runs):
        out["contrastive_end_mean"] = statistics.fmean(r["contrastive_end"] for r in runs)
    out["seconds_mean"] = statistics.fmean(r["seconds"] for r in runs)
    return {**out, "runs": runs, "setting": setting}


def add_gains(arms: dict[str, dict]) -> None:
    """Each arm's paired per-seed difference from the baseline (linear and kNN top-1): mean and 95% interval."""
    if BASELINE not in arms:
        return
    base = {r["seed"]: r for r in arms[BASELINE]["runs"]}
    for name, arm in arms.items():
        if name == BASELINE:
            continue
        for key, prefix in (("linear_top1", "gain_over_moco"), ("knn_top1", "knn_gain_over_moco")):
            diffs = [r[key] - base[r["seed"]][key] for r in arm["runs"] if r["seed"] in base]
            arm[f"{prefix}_mean"] = statistics.fmean(diffs) if diffs else None
            arm[f"{prefix}_ci95"] = ci95(diffs, -1.0, 1.0)


def mean_curve(curves: list[list[float]]) -> list[float]:
    """Step-wise mean over seeds (runs of one arm take the same number of steps; the shortest bounds it)."""
    n = min(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves) for i in range(n)]


# ---- the benchmark --------------------------------------------------------------------------------------------------


def build_test_cache(val_dir: Path, work: Path, budget: Budget) -> SwapSet:
    """The swapped set `fame-train eval --protocol swapped` builds from a cache (default method, frames at the
    evaluation's size) of held-out videos whose backgrounds follow the class, as a real test split's do: each clip's
    foreground over a plate of another class. Its `swapped_top1` is what a user without a rendered swapped test
    would measure; beside the rendered test's `linear_top1` it shows how far the cache's masks get there."""
    params = budget.build_params(budget.eval_size)
    url = str(work / "cache-test.zarr")
    build_cache(str(val_dir), url, params, workers=1, progress=False)
    return draw_swaps(url, seed=budget.data_seed)


def build_caches(train_dir: Path, work: Path, budget: Budget, methods: set[str]) -> tuple[dict[str, str], dict]:
    """One cache per mask method the arms need; returns {method: path} and the build seconds."""
    caches, seconds = {}, {}
    for method in sorted(methods):
        params = budget.build_params(budget.size, method)
        start = time.perf_counter()
        caches[method] = str(work / f"cache-{method}.zarr")
        build_cache(str(train_dir), caches[method], params, workers=1, progress=False)
        seconds[method] = time.perf_counter() - start
    return caches, seconds


def run_size(mover: str, arms: dict[str, dict], budget: Budget, work: Path, pool: list) -> tuple[dict, dict]:
    """Generate, cache, train and evaluate every arm and seed for one mover size; returns (report, mean curves)."""
    start = time.perf_counter()
    train_dir, test_dir = write_bias_set(
        work / "data",
        mover,
        budget.train_per_class,
        budget.test_per_class,
        size=budget.video_size,
        n_frames=budget.n_frames,
        period=budget.period,
        seed=budget.data_seed,
        pool=pool,
        looks=budget.looks,
        val_per_class=budget.test_per_class,
    )
    generate_seconds = time.perf_counter() - start
    caches, build_seconds = build_caches(train_dir, work, budget, {a.get("method", "motion") for a in arms.values()})
    swap_set = build_test_cache(train_dir.parent / "val", work, budget)
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    curves: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in budget.seeds:
        for name, overrides in arms.items():
            out = work / "runs" / f"{name}-{seed}"
            config = make_config(overrides, budget, caches[overrides.get("method", "motion")], str(out), seed)
            record, curve = run_one(config, overrides.get("supervised", False), train_dir, test_dir, swap_set, budget)
            runs[name].append(record)
            curves[name].append(curve)
            print(
                f"{mover:6s} {name:18s} seed {seed}: linear {record['linear_top1']:.3f} knn {record['knn_top1']:.3f} "
                f"loss_end {record['loss_end']:.3f} ({record['seconds']:.0f} s)",
                flush=True,
            )
    report_arms = {name: summarise(runs[name], arms[name]) for name in arms}
    add_gains(report_arms)
    mean_curves = {name: {key: mean_curve([c[key] for c in curves[name]]) for key in curves[name][0]} for name in arms}
    seconds = {"generate": generate_seconds, "build": build_seconds, "total": time.perf_counter() - start}
    report = {"mover_area": list(MOVER_AREAS[mover]), "seconds": seconds, "arms": report_arms, "curves": mean_curves}
    return report, mean_curves


def setting_of(budget: Budget, arms: dict[str, dict], sizes: list[str]) -> dict:
    """Everything the numbers depend on, for the report."""
    return {
        **dataclasses.asdict(budget),
        "eval_size": list(budget.eval_size),
        "steps_per_epoch": (budget.train_per_class * len(CLASSES)) // budget.batch_size,
        "classes": list(CLASSES),
        "sizes": {s: list(MOVER_AREAS[s]) for s in sizes},
        "backbone": "small",
        "arms": arms,
        "base_loader": base_loader(budget).to_dict(),
    }


# ---- outputs --------------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _with_ci(mean: float | None, ci: list[float] | None, signed: bool = False) -> str:
    """'12.3 [4.5, 20.1]' in percent; signed for differences."""
    if mean is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * mean)
    return text if ci is None else f"{text} [{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def footer(report: dict) -> str:
    """The budget in one line, under the tables."""
    s = report["setting"]
    (vh, vw), (ch, cw) = s["video_size"], s["size"]
    return (
        f"seeds {list(s['seeds'])}, {s['epochs']} epochs x {s['steps_per_epoch']} steps, batch {s['batch_size']}, "
        f"queue {s['queue_size']}, crop {s['crop']}, clips {s['clip_len']}x{s['stride']}, videos {vh}x{vw} cached "
        f"at {ch}x{cw}, {s['train_per_class']}/{s['test_per_class']} train/test videos per class; "
        f"{report['seconds'] / 60:.1f} min"
    )


def table(report: dict) -> str:
    """Per mover size: each arm's top-1 on the swapped test with 95% intervals, its paired gain over moco (an
    interval above zero is a gain the seeds support), the final loss and every seed's linear score."""
    lines = []
    for mover, res in report["sizes"].items():
        lo, hi = res["mover_area"]
        lines += [
            f"\n**{mover}** mover ({100 * lo:.0f}-{100 * hi:.0f}% of the frame); top-1 % on the swapped test, "
            f"mean [95% CI] over seeds; chance {100 * report['chance']:.0f}",
            "",
            "| arm | linear | kNN | linear gain over moco | motion CV | scene CV | cache swap: own | background "
            "| plate alone | loss end | contrastive end | linear per seed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, arm in res["arms"].items():
            gain = _with_ci(arm.get("gain_over_moco_mean"), arm.get("gain_over_moco_ci95"), signed=True)
            per_seed = " ".join(_pct(r["linear_top1"]) for r in arm["runs"])
            end = f"{arm.get('contrastive_end_mean', arm['loss_end_mean']):.3f}"
            if arm["setting"].get("supervised"):
                end = "(cross-entropy)"
            lines.append(
                f"| {name} | {_with_ci(arm['linear_top1_mean'], arm['linear_top1_ci95'])} "
                f"| {_with_ci(arm['knn_top1_mean'], arm['knn_top1_ci95'])} | {gain if name != BASELINE else ''} "
                f"| {_with_ci(arm.get('motion_cv_top1_mean'), arm.get('motion_cv_top1_ci95'))} "
                f"| {_with_ci(arm.get('scene_cv_top1_mean'), arm.get('scene_cv_top1_ci95'))} "
                + "".join(f"| {_with_ci(arm.get(f'{k}_mean'), arm.get(f'{k}_ci95'))} " for k in CACHE_SWAP_KEYS)
                + f"| {arm['loss_end_mean']:.3f} | {end} "
                f"| {per_seed} |"
            )
    lines.append("\n" + footer(report))
    return "\n".join(lines).lstrip("\n")


def plot_losses(curves: dict[str, dict[str, dict[str, list[float]]]], queue_size: int, path: Path) -> None:
    """Per size, each arm's mean contrastive loss by step (the micro term, where on, is left out: the table has the
    whole loss), and ln(queue + 1) dashed: the loss of a query that cannot tell its key from the queue's keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    chance = math.log(queue_size + 1)
    for ax, (mover, arms) in zip(axes[0], curves.items(), strict=True):
        for name, arm in arms.items():
            contrastive = arm.get("contrastive", arm["loss"])
            ax.plot(range(1, len(contrastive) + 1), contrastive, lw=1.2, label=name)
        ax.axhline(chance, ls="--", color="grey", lw=1, label=f"ln(queue+1) = {chance:.2f}")
        # The queue starts as random vectors, so the first steps' loss is near 0: leave them out of the scale.
        settled = [v for arm in arms.values() for v in arm.get("contrastive", arm["loss"])[3:]]
        if settled:
            ax.set_ylim(min(settled) - 0.2, max(max(settled), chance) + 0.2)
        ax.set_title(f"{mover} mover: contrastive loss, mean over seeds", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report: dict, json_path: Path) -> None:
    """The JSON, the Markdown table beside it (same stem) and the loss figure (`<stem>_loss.png`) from each size's
    mean curves."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(table(report) + "\n")
    contrastive = {n for n, arm in report["setting"]["arms"].items() if not arm.get("supervised")}  # not the ceiling
    curves = {
        mover: {name: curve for name, curve in res["curves"].items() if name in contrastive}
        for mover, res in report["sizes"].items()
        if "curves" in res
    }
    if curves:
        plot_losses(curves, report["setting"]["queue_size"], json_path.with_name(f"{json_path.stem}_loss.png"))


def merge_reports(reports: list[dict], seconds: float) -> dict:
    """One report from reports of the same budget and arms over other mover sizes (sizes run side by side)."""
    merged = {**reports[0], "sizes": {}, "seconds": seconds}
    merged["setting"] = {**reports[0]["setting"], "sizes": {}}
    for report in reports:
        merged["sizes"].update(report["sizes"])
        merged["setting"]["sizes"].update(report["setting"]["sizes"])
    return merged


def child_flags(args: argparse.Namespace) -> list[str]:
    """The command-line options a per-size child process shares with this one."""
    flags = ["--quick"] if args.quick else []
    flags += ["--arms", *args.arms] if args.arms else []
    for arm in args.arm:
        flags += ["--arm", arm]
    flags += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    flags += ["--epochs", str(args.epochs)] if args.epochs else []
    flags += ["--looks", str(args.looks)] if args.looks is not None else []
    return flags + (["--keep"] if args.keep else [])


def run_sizes_side_by_side(args: argparse.Namespace, work: Path) -> dict:
    """Each mover size in a process of its own (one torch thread each): on 2 cores the sizes run in half the time
    of one after the other."""
    start = time.perf_counter()
    children = {}
    with handle_signals():  # Ctrl-C or SIGTERM here ends the children (and their loader workers) too
        try:
            for mover in args.sizes:
                out = work / f"{mover}.json"
                flags = [*child_flags(args), "--sizes", mover, "--jobs", "1", "--json", str(out)]
                children[mover] = (subprocess.Popen([sys.executable, __file__, *flags]), out)
            failed = [mover for mover, (child, _) in children.items() if child.wait() != 0]
        except BaseException:
            reap([pid for child, _ in children.values() for pid in (child.pid, *descendants(child.pid))], grace=0)
            raise
    if failed:
        raise SystemExit(f"error: the run of mover size(s) {', '.join(failed)} failed (see its output above)")
    reports = [json.loads(out.read_text()) for _, out in children.values()]
    return merge_reports(reports, time.perf_counter() - start)


# ---- command line ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json", default=None, help="default benchmarks/results/bias.json (bias_quick.json with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help=f"fewer epochs and seeds, arms {', '.join(QUICK_ARMS)}")
    parser.add_argument("--sizes", nargs="+", choices=list(MOVER_AREAS), default=list(MOVER_AREAS))
    parser.add_argument(
        "--arms", nargs="+", default=None, help=f"named arms (default: {', '.join(DEFAULT_ARMS)}; --quick: its own)"
    )
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=JSON", help="an ad-hoc arm (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--looks", type=int, default=None, help="movers share this many looks (default 1; 0: a look per video)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (videos, caches, runs)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="mover sizes run side by side in this many processes (default: up to 2, one per core)",
    )
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only merge reports of other sizes into --json")
    return parser.parse_args(argv)


def select_arms(args: argparse.Namespace) -> dict[str, dict]:
    """Named arms (all, the quick set, or --arms), then the ad-hoc --arm ones."""
    adhoc = dict(parse_arm(text) for text in args.arm)
    known = {**ARMS, **adhoc}
    names = args.arms or list(QUICK_ARMS if args.quick else DEFAULT_ARMS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--arms: unknown arm(s) {unknown}; named arms: {', '.join(known)}")
    chosen = {n: known[n] for n in names}
    chosen.update(adhoc)
    return chosen


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        arms = select_arms(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    budget = QUICK if args.quick else FULL
    budget = dataclasses.replace(
        budget,
        epochs=args.epochs or budget.epochs,
        seeds=tuple(args.seeds) if args.seeds else budget.seeds,
        looks=budget.looks if args.looks is None else (args.looks or None),
    )
    torch.set_num_threads(1)  # 2 threads on 2 shared cores stall at OpenMP barriers (steps of 0.4 s took 2-5 s)
    json_path = Path(args.json or f"benchmarks/results/bias{'_quick' if args.quick else ''}.json")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fame-bias-"))
    try:
        if args.merge:
            reports = [json.loads(Path(path).read_text()) for path in args.merge]
            report = merge_reports(reports, max(r["seconds"] for r in reports))  # run side by side
        elif args.jobs > 1 and len(args.sizes) > 1:
            report = run_sizes_side_by_side(args, work)
        else:
            pool = load_real_frames(seed=budget.data_seed)
            report = {"chance": CHANCE, "setting": setting_of(budget, arms, args.sizes), "sizes": {}}
            for mover in args.sizes:
                report["sizes"][mover], _ = run_size(mover, arms, budget, work / mover, pool)
            report["seconds"] = time.perf_counter() - start
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_outputs(report, json_path)
    print(table(report))
    if args.keep:
        print(f"working folder kept: {work}")


if __name__ == "__main__":
    main()

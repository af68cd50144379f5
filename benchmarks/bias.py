"""Background-bias test: does pretraining learn the action or the scene?

Each action class (an actor of its own colour family moving its own way) is filmed over its own kind of background
(a hue family) in the training set, and over another class's kind in the test set. A representation that leans on
the background scores below chance on the swapped test; one that follows the foreground does not care. Every arm
pretrains the small backbone for the same budget and seeds, then a linear probe and kNN are fitted on the training
set and scored on the swapped test.

    python benchmarks/bias.py --json benchmarks/results/bias.json [--epochs 80] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.build import build_cache
from pipeline.params import BuildParams
from pipeline.synthetic import Scene, write_scene
from trainer.checkpoint import load_backbone
from trainer.config import TrainConfig
from trainer.evaluate import EvalSettings, evaluate
from trainer.train import pretrain

DIRECTIONS = [(0.0, 2.5), (2.0, 0.0), (-1.8, -1.8)]  # the action classes
BACKGROUND_HUES = [10, 70, 130]  # the scene families (OpenCV hue, 0..179)
ACTOR_HUES = [40, 100, 160]  # the actors' families, one per class
ARMS = {
    "moco": {"fame": False},
    "fame": {"fame": True, "fame_p": 1.0},
    "fame+semi": {"fame": True, "fame_p": 1.0, "semi_negatives": True},
    "fame+semi+micro": {"fame": True, "fame_p": 1.0, "semi_negatives": True, "micro": True, "micro_weight": 0.5},
}


def write_split(root: Path, per_class: int, swap: int, seed: int) -> None:
    """Class c is its foreground (an actor of hue family c moving in direction c, with its own texture in every
    video, as the objects of an action are) filmed over background family (c + swap) % 3: in training the scene
    predicts the class as well as the action does; in the test it points to the wrong class."""
    rng = np.random.default_rng(seed)
    for c, velocity in enumerate(DIRECTIONS):
        for v in range(per_class):
            speed = rng.uniform(0.8, 1.2)
            scene = Scene(
                size=(64, 80),
                n_frames=24,
                object_velocity=(velocity[0] * speed, velocity[1] * speed),
                object_radius=(16.0, 13.0),
                shape_change=0.15,
                background_hue=BACKGROUND_HUES[(c + swap) % 3],
                object_hue=ACTOR_HUES[c],
                background_seed=int(rng.integers(1 << 30)),
                object_seed=int(rng.integers(1 << 30)),
            )
            write_scene(root / f"class_{c}" / f"v{v:02d}.mp4", scene)


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fame-bias-"))
    write_split(work / "train", args.per_class, swap=0, seed=1)
    write_split(work / "test", max(2, args.per_class // 2), swap=1, seed=2)
    cache = str(work / "cache.zarr")
    build_cache(
        str(work / "train"), cache, BuildParams(size=(64, 80), clip_len=8, stride=1, clips_per_video=2), progress=False
    )
    settings = EvalSettings(clip_len=8, stride=1, clips_per_video=2, size=(64, 80), crop=56)
    results: dict[str, dict] = {}
    for arm, overrides in ARMS.items():
        if args.arms and arm not in args.arms:
            continue
        runs = []
        for seed in args.seeds:
            config = TrainConfig(
                cache=cache,
                out=str(work / f"{arm}-{seed}"),
                backbone="small",
                epochs=args.epochs,
                batch_size=8,
                crop=56,
                crop_scale=(0.5, 1.0),
                queue_size=32,
                lr=0.05,
                warmup_epochs=2,
                workers=1,
                seed=seed,
                moco_momentum=0.99,
                checkpoint_every=10_000,
                **overrides,
            )
            start = time.perf_counter()
            final = pretrain(config, progress=False)
            backbone, _ = load_backbone(final)
            metrics = evaluate(backbone, str(work / "train"), str(work / "test"), ("linear", "knn"), settings)
            metrics["seconds"] = time.perf_counter() - start
            runs.append({"seed": seed, **metrics})
            print(f"{arm:16s} seed {seed}: linear {metrics['linear_top1']:.3f} knn {metrics['knn_top1']:.3f}")
        results[arm] = {
            "runs": runs,
            "linear_top1_mean": statistics.mean(r["linear_top1"] for r in runs),
            "knn_top1_mean": statistics.mean(r["knn_top1"] for r in runs),
        }
    return {
        "setting": {
            "epochs": args.epochs,
            "seeds": args.seeds,
            "per_class": args.per_class,
            "classes": len(DIRECTIONS),
            "chance": 1 / len(DIRECTIONS),
        },
        "arms": results,
    }


def table(report: dict) -> str:
    """Means and every seed's score: single runs on a set this small range from 0 to 1, so the spread is the news."""
    lines = [
        "| arm | linear top-1 (swapped bg) | kNN top-1 (swapped bg) | linear, per seed |",
        "| --- | --- | --- | --- |",
    ]
    for arm, res in report["arms"].items():
        per_seed = " ".join(f"{r['linear_top1']:.2f}" for r in res["runs"])
        lines.append(f"| {arm} | {res['linear_top1_mean']:.3f} | {res['knn_top1_mean']:.3f} | {per_seed} |")
    s = report["setting"]
    lines.append(
        f"\nseeds {s['seeds']}, {s['epochs']} epochs, {s['per_class']} videos per class, chance {s['chance']:.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/bias.json")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="*", default=None, help=f"subset of {', '.join(ARMS)}")
    args = parser.parse_args()
    report = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    Path(args.json).with_suffix(".md").write_text(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()

"""How long does the trainer wait for data? A short pretraining run, read back from its JSONL log.

`data_wait_fraction` is the median, over steps after warm-up, of the time a step spent waiting for its batch divided
by the whole step. On a GPU, `--backbone r2plus1d18 --crop 112 --clip-len 16` is the setting of interest (target < 5%).

    python benchmarks/train_wait.py --json benchmarks/results/train_wait.json [--backbone small] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from pipeline.build import build_cache
from pipeline.loader import LoaderParams
from pipeline.params import BuildParams
from synthetic import write_dataset
from trainer.config import TrainConfig
from trainer.train import pretrain

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/train_wait.json")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fame-wait-"))
    write_dataset(work / "videos", n_classes=4, videos_per_class=6, n_frames=48, seed=0)
    cache = str(work / "cache.zarr")
    build_cache(
        str(work / "videos"), cache, BuildParams(clip_len=args.clip_len, clips_per_video=2), progress=False, workers=1
    )
    config = TrainConfig(
        cache=cache,
        out=str(work / "run"),
        backbone=args.backbone,
        epochs=1000,
        batch_size=args.batch_size,
        queue_size=256,
        loader=LoaderParams(crop=args.crop, num_workers=args.workers),
    )
    pretrain(config, progress=False, max_steps=args.steps)
    records = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    steady = records[min(5, len(records) - 1) :]
    result = {
        "data_wait_fraction": statistics.median(r["data_wait"] for r in steady),
        "clips_per_s": statistics.median(r["clips_per_s"] for r in steady),
        "steps": len(records),
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "clip_len": args.clip_len,
        "loader_workers": args.workers,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

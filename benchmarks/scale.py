"""Scale benchmark (issue 19): what planning costs the driver per video, how fast the workers plan, and when the first
writer group is computed relative to the end of planning, so the build's serial fraction can be read off.

    python benchmarks/scale.py --json benchmarks/results/scale.json

- probe_ms: the median time of one real probe (`pipeline.probe.probe_row`: size, content fingerprint, container
  metadata) of a generated tiny video; probe_ms_real the same over the real sample videos, when present (UCF-size
  and larger web video: what a probe costs on real data).
- A real build (`build_cache`, local Ray, --workers) of --videos tiny videos: hard links, under distinct names, to
  --distinct generated ones (a probe reads the file as for any video). From its report:
  driver_ms_per_video (the driver's own planning time, listing and making the cache included, per video: the serial
  part), worker_videos_per_s (videos probed per second of a probe task, one CPU each: the parallel part),
  plan_seconds (start to the last row planned), first_group_seconds (start to the first group committed) and
  first_group_before_plan_end.
Medians over --repeats builds. The README extrapolates to Kinetics-700 and N nodes from these figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import REAL  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.cache import DONE, Cache  # noqa: E402
from pipeline.params import BuildParams  # noqa: E402
from pipeline.probe import probe_row  # noqa: E402
from synthetic import write_dataset  # noqa: E402

TARGETS = {"driver_ms_per_video": ("<=", 1.0), "first_group_before_plan_end": (">=", 1)}
PARAMS = BuildParams(size=(16, 20), clip_len=2, stride=1, clips_per_video=1)
KINETICS = 650_000


def probe_ms(root: str, rels: list[str], rounds: int) -> float:
    """Median milliseconds of one probe over `rounds` passes of `rels`."""
    times = []
    for _ in range(rounds):
        for rel in rels:
            t0 = time.perf_counter()
            row = probe_row(root, rel, PARAMS)
            times.append(time.perf_counter() - t0)
            assert row["status"] == "pending", row["error"]
    return 1000 * statistics.median(times)


def make_videos(root: Path, n: int, distinct: int) -> list[str]:
    """`n` videos in 10 class folders: hard links to `distinct` generated ones of 8 frames at 16x20."""
    seeds = root / "seeds"
    originals = [
        seeds / p for p in write_dataset(seeds, n_classes=1, videos_per_class=distinct, n_frames=8, size=(16, 20))
    ]
    for i in range(n):
        folder = root / "videos" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(originals[i % distinct], folder / f"video_{i:06d}.mp4")
    return [str(p.relative_to(seeds)) for p in originals]


def build_once(src: Path, out: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    report = build_cache(str(src), str(out), PARAMS, workers=workers, progress=False)
    status = Cache.open(str(out)).videos("status")
    assert report.mode == "ray" and (status == DONE).all(), (report.mode, report.n_failed)
    n = report.n_videos
    return {
        "driver_ms_per_video": 1000 * report.plan_driver_seconds / n,
        "worker_videos_per_s": n / report.probe_seconds,
        "plan_seconds": report.plan_seconds,
        "first_group_seconds": report.first_group_seconds,
        "build_seconds": report.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=20, help="generated videos the others link to")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seeds = make_videos(root, args.videos, args.distinct)
        results: dict = {"videos": args.videos, "workers": args.workers, "cpus": os.cpu_count()}
        results["probe_ms"] = round(probe_ms(str(root / "seeds"), seeds, rounds=5), 3)
        real = sorted(str(p.name) for p in REAL.glob("*.mp4")) if REAL.is_dir() else []
        results["probe_ms_real"] = round(probe_ms(str(REAL), real, rounds=5), 3) if real else None
        runs = [build_once(root / "videos", root / "cache.zarr", args.workers) for _ in range(args.repeats)]
    for key in runs[0]:
        results[key] = round(statistics.median(run[key] for run in runs), 4)
    results["runs"] = runs
    results["first_group_before_plan_end"] = int(results["first_group_seconds"] < results["plan_seconds"])
    results["kinetics_driver_minutes"] = round(KINETICS * results["driver_ms_per_video"] / 60_000, 2)
    results["targets"] = as_json(TARGETS)
    rows = target_rows(results, TARGETS)
    rows += [(k, f"{results[k]}", "") for k in ("probe_ms", "probe_ms_real", "worker_videos_per_s", "plan_seconds")]
    rows += [(k, f"{results[k]}", "") for k in ("first_group_seconds", "build_seconds", "kinetics_driver_minutes")]
    print_table(f"scale: {args.videos} videos, {args.workers} Ray workers, {os.cpu_count()} cores", rows)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

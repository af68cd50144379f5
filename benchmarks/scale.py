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

- Small jobs do not pay for Ray: `fame-pipeline build` of --small-videos UCF101-size videos (320x240, 10 s,
  540 kbit/s) as a user runs it, a fresh process each time (interpreter, imports and, when used, Ray's start-up
  included), with `--workers 1`, `--workers 2` (a job this small runs in-process: `RAY_MIN_VIDEOS_PER_WORKER`) and
  `--workers 2 --ray` (what a local Ray would cost it), interleaved, --repeats rounds: the medians and
  small_job_workers2_over_workers1, small_job_ray_over_workers1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.preprocess import floor_source  # noqa: E402
from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import REAL  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.cache import DONE, Cache  # noqa: E402
from pipeline.params import BuildParams  # noqa: E402
from pipeline.probe import probe_row  # noqa: E402
from synthetic import write_dataset  # noqa: E402

TARGETS = {
    "driver_ms_per_video": ("<=", 1.0),
    "first_group_before_plan_end": (">=", 1),
    "small_job_workers2_over_workers1": ("<=", 1.1),
}
SMALL_JOB_RUNS = {"workers1": ["--workers", "1"], "workers2": ["--workers", "2"], "ray2": ["--workers", "2", "--ray"]}
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


def small_job(root: Path, n_videos: int, repeats: int) -> dict:
    """Wall seconds of `fame-pipeline build` in a fresh process per SMALL_JOB_RUNS setting, interleaved by round."""
    src = floor_source(root, n_videos)
    seconds: dict[str, list[float]] = {name: [] for name in SMALL_JOB_RUNS}
    for _ in range(repeats):
        for name, flags in SMALL_JOB_RUNS.items():
            out = root / f"small-{name}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "pipeline", "build", str(src), "--out", str(out), "--quiet", *flags],
                check=True,
                cwd=REPO,
            )
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "small_job_videos": n_videos,
        **{f"small_job_seconds_{name}": round(m, 2) for name, m in medians.items()},
        "small_job_workers2_over_workers1": round(medians["workers2"] / medians["workers1"], 3),
        "small_job_ray_over_workers1": round(medians["ray2"] / medians["workers1"], 3),
        "small_job_runs": seconds,
    }


def planning(root: Path, args: argparse.Namespace) -> dict:
    """The planning figures: probes alone, then --repeats local Ray builds of --videos tiny videos."""
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
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=20, help="generated videos the others link to")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-videos", type=int, default=96, help="UCF101-size videos of the small-job comparison")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=("plan", "small"),
        default=["plan", "small"],
        help="what to measure: the 10,000-video planning, the small-job comparison (a part left out keeps the "
        "figures the --json file has)",
    )
    args = ap.parse_args(argv)
    old = Path(args.json) if args.json else None
    results: dict = json.loads(old.read_text()) if old and old.exists() else {}
    results.pop("targets", None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "plan" in args.parts:
            results.update(planning(root, args))
        if "small" in args.parts:
            results.update(small_job(root, args.small_videos, args.repeats))
    results["targets"] = as_json(TARGETS)
    rows = target_rows(results, {key: bound for key, bound in TARGETS.items() if key in results})
    shown = ["probe_ms", "probe_ms_real", "worker_videos_per_s", "plan_seconds", "first_group_seconds"]
    shown += ["build_seconds", "kinetics_driver_minutes", *(f"small_job_seconds_{name}" for name in SMALL_JOB_RUNS)]
    rows += [(key, f"{results.get(key, '-')}", "") for key in [*shown, "small_job_ray_over_workers1"]]
    print_table(f"scale: {args.videos} videos, {args.workers} Ray workers, {os.cpu_count()} cores", rows)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preprocessing benchmark: what a build costs over decoding alone, how it scales to 2 workers, how big the cache is.

    python benchmarks/preprocess.py --json benchmarks/results/preprocess.json

Videos: the real sample videos (../shared/data/real_videos from the repository root) plus generated ones at UCF101's
320x240 (--generated-size), all built with the default BuildParams: sources larger than the cache's frames, as in
real datasets, so the resize is part of decoding. Every timing is a median over --repeats runs of the same clips.
The result is checked before anything is timed (every video done, checksums right, masks neither empty nor full).

- build_over_decode: full in-process build (plan + compute + write) / decoding and resizing the same frames only.
- speedup_2_workers: compute phase of the Ray job (one single-threaded task per writer group) on 1 CPU / on 2 CPUs.
  Ray is started and warmed up beforehand, so its start-up is not in the ratio (reported as ray_start).
  in_process_over_2_workers compares the multi-threaded in-process build (--workers 1) with 2 Ray workers.
- cache_over_source: bytes of the cache on disk / bytes of the source videos.
- build_over_decode_floor (per method, `motion` and `video`; the key alone is the default method's): the full
  in-process build / the pure decoding floor, on UCF101-size videos (--floor-videos generated ones at 320x240, 10 s,
  re-encoded at FLOOR_BIT_RATE, about UCF101's 540 kbit/s). The floor decodes every frame of every source with PyAV
  and nothing else (no colour conversion, no resize), the videos split over the cores as the build splits its
  groups. Floor and builds run in interleaved rounds (floor, one build per method, again), medians quoted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import make_source  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.cache import DONE, Cache  # noqa: E402
from pipeline.params import BuildParams, parse_size  # noqa: E402
from pipeline.video import decode, decode_all, write_video  # noqa: E402

TARGETS = {
    "build_over_decode": ("<=", 1.3),
    "build_over_decode_floor": ("<=", 1.3),
    "speedup_2_workers": (">=", 1.7),
    "cache_over_source": ("<=", 0.25),
}
FLOOR_SIZE = (240, 320)  # UCF101's frames
FLOOR_FRAMES = 250  # 10 s at 25 fps
FLOOR_BIT_RATE = 540_000  # bits/s: UCF101's average at 320x240
FLOOR_METHODS = ("motion", "video")


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def source_bytes(src: Path) -> int:
    return sum(os.path.getsize(f) for f in src.rglob("*.mp4"))


def check(cache_url: str) -> dict:
    """The build is right before it is timed: all done, checksums match, masks neither empty nor full."""
    cache = Cache.open(cache_url)
    status = cache.videos("status")
    if not (status == DONE).all():
        bad = dict(zip(cache.videos("path")[status != DONE], cache.videos("error")[status != DONE], strict=True))
        raise SystemExit(f"benchmark build failed for {bad}")
    clips = cache.readable_clips()
    fg = []
    for c in clips:
        if not cache.check_clip(int(c)):
            raise SystemExit(f"clip {c}: checksum mismatch")
        fg.append(float((cache.mask(int(c)) >= 128).mean()))
    fg = np.array(fg)
    if (fg <= 0.0).any() or (fg >= 1.0).any():
        raise SystemExit(f"empty or full masks in {int(((fg <= 0) | (fg >= 1)).sum())} clips")
    return {"n_clips": len(clips), "foreground_mean": round(float(fg.mean()), 3)}


def decode_only(cache_url: str, src: Path, params: BuildParams) -> float:
    """Seconds to decode and resize exactly the frames the build keeps, video by video, in this process."""
    cache = Cache.open(cache_url)
    clip_video, clip_frames = cache.clip_table()
    start = time.perf_counter()
    for v, rel in enumerate(cache.videos("path")):
        keep = np.unique(clip_frames[clip_video == v])
        decode(str(src / str(rel)), params.size, keep=keep, max_pixels=params.max_pixels)
    return time.perf_counter() - start


def floor_source(root: Path, n_videos: int) -> Path:
    """`n_videos` generated videos as UCF101 holds them: FLOOR_SIZE, FLOOR_FRAMES, re-encoded at FLOOR_BIT_RATE."""
    src = make_source(root / "floor", n_videos, FLOOR_FRAMES, FLOOR_SIZE, real=False)
    for path in sorted(src.rglob("*.mp4")):
        write_video(path, decode_all(str(path)), bit_rate=FLOOR_BIT_RATE)
    return src


def decode_floor(src: Path, threads: int = 2) -> float:
    """Seconds to decode every frame of every video under `src` with PyAV and nothing else: the videos split over
    `threads` threads, one FFmpeg thread each (as the in-process build runs its groups), frames left in YUV."""
    import av

    paths = sorted(src.rglob("*.mp4"))

    def work(part: list[Path]) -> None:
        for path in part:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = 1
                for _ in container.decode(stream):
                    pass

    parts = [paths[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=work, args=(part,)) for part in parts]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def build_over_decode_floor(tmp: Path, n_videos: int, repeats: int) -> dict:
    """The in-process build of each FLOOR_METHODS method over the decoding floor, in interleaved rounds."""
    src = floor_source(tmp, n_videos)
    by_method = {m: BuildParams(method=m) for m in FLOOR_METHODS}
    for method, params in by_method.items():  # checked before timed; also warms imports and the page cache
        timed_build(src, tmp / f"floor-{method}.zarr", params, workers=1)
        check(str(tmp / f"floor-{method}.zarr"))
    decode_floor(src)
    floor_s: list[float] = []
    build_s: dict[str, list[float]] = {m: [] for m in by_method}
    for _ in range(repeats):
        floor_s.append(decode_floor(src))
        for method, params in by_method.items():
            build_s[method].append(timed_build(src, tmp / f"floor-{method}.zarr", params, workers=1)[0])
    med = statistics.median
    out: dict = {f"build_over_decode_floor_{m}": round(med(s) / med(floor_s), 3) for m, s in build_s.items()}
    out["build_over_decode_floor"] = out[f"build_over_decode_floor_{BuildParams().method}"]
    out["floor_timings_s"] = {
        "decode_floor": [round(x, 3) for x in floor_s],
        **{f"build_{m}": [round(x, 3) for x in s] for m, s in build_s.items()},
    }
    out["floor_videos"] = {
        "n": n_videos,
        "size": list(FLOOR_SIZE),
        "frames": FLOOR_FRAMES,
        "bit_rate": FLOOR_BIT_RATE,
        "source_bytes": source_bytes(src),
    }
    return out


def timed_build(src: Path, out: Path, params: BuildParams, workers: int):
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    report = build_cache(str(src), str(out), params, workers=workers, progress=False, ray=workers > 1)
    return time.perf_counter() - start, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generated", type=int, default=12, help="generated videos added to the real ones")
    parser.add_argument(
        "--frames", type=int, default=250, help="frames per generated video (10 s at 25 fps, as Kinetics)"
    )
    parser.add_argument("--generated-size", default="240x320", help="HxW of generated videos (UCF101's by default)")
    parser.add_argument("--floor-videos", type=int, default=8, help="UCF101-size videos of the decoding-floor ratio")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    params = BuildParams()

    with tempfile.TemporaryDirectory(prefix="fame-bench-") as tmp:
        tmp = Path(tmp)
        src = make_source(tmp, args.generated, args.frames, parse_size(args.generated_size))
        out = tmp / "cache.zarr"

        _, first = timed_build(src, out, params, workers=1)  # also warms the page cache and imports
        info = check(str(out))
        cache_bytes, src_bytes = du(out), source_bytes(src)

        decode_s = [decode_only(str(out), src, params) for _ in range(args.repeats)]
        build_s, compute_1 = [], []
        for _ in range(args.repeats):
            seconds, report = timed_build(src, out, params, workers=1)
            build_s.append(seconds)
            compute_1.append(report.compute_seconds)

        import ray

        # Scaling: the same Ray job (one single-threaded task per group) on 1 CPU, then on 2. The in-process
        # 1-worker build above is not the baseline for this: it already spreads decoding and OpenCV over both cores.
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            timed_build(src, tmp / "warm1.zarr", params, workers=2)  # workers import their modules once
            compute_ray_1 = [
                timed_build(src, tmp / "one.zarr", params, workers=2)[1].compute_seconds for _ in range(args.repeats)
            ]
        finally:
            ray.shutdown()

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - t0
        try:
            timed_build(src, tmp / "warm.zarr", params, workers=2)  # workers import their modules once
            compute_2, ray_total = [], []
            for _ in range(args.repeats):
                seconds, report = timed_build(src, tmp / "two.zarr", params, workers=2)
                if report.mode != "ray" or report.n_done != first.n_videos:
                    raise SystemExit(f"2-worker build did not run on Ray or failed: {report.summary()}")
                compute_2.append(report.compute_seconds)
                ray_total.append(seconds)
        finally:
            ray.shutdown()
        same = all(
            np.array_equal(Cache.open(str(out)).root[k][...], Cache.open(str(tmp / "two.zarr")).root[k][...])
            for k in ("masks", "plates", "clips/checksum")
        )
        if not same:
            raise SystemExit("the 2-worker cache differs from the 1-worker cache")
        floor = build_over_decode_floor(tmp, args.floor_videos, args.repeats)

    med = statistics.median
    results = {
        "build_over_decode": round(med(build_s) / med(decode_s), 3),
        "speedup_2_workers": round(med(compute_ray_1) / med(compute_2), 3),
        "in_process_over_2_workers": round(med(compute_1) / med(compute_2), 3),
        "cache_over_source": round(cache_bytes / src_bytes, 4),
        **floor,
        "timings_s": {
            "decode_only": [round(x, 3) for x in decode_s],
            "build_1_worker": [round(x, 3) for x in build_s],
            "compute_1_worker": [round(x, 3) for x in compute_1],
            "compute_1_ray_worker": [round(x, 3) for x in compute_ray_1],
            "compute_2_ray_workers": [round(x, 3) for x in compute_2],
            "build_2_ray_workers_ray_running": [round(x, 3) for x in ray_total],
            "ray_start": round(ray_start, 3),
        },
        "clips_per_s_1_worker": round(info["n_clips"] / med(compute_1), 2),
        "clips_per_s_2_workers": round(info["n_clips"] / med(compute_2), 2),
        "n_videos": first.n_videos,
        "n_clips": info["n_clips"],
        "foreground_mean": info["foreground_mean"],
        "cache_bytes": cache_bytes,
        "source_bytes": src_bytes,
        "repeats": args.repeats,
        "generated_size": list(parse_size(args.generated_size)),
        "params": params.to_dict(),
        "cpu_count": os.cpu_count(),
        "targets": as_json(TARGETS),
        "note": "speedup_2_workers: compute phase of the Ray job on 1 CPU vs 2 CPUs, Ray started and warmed up; "
        "in_process_over_2_workers: the multi-threaded in-process build (--workers 1) vs 2 Ray workers",
    }
    rows = [
        ("videos / clips", f"{first.n_videos} / {info['n_clips']}", ""),
        ("decode only (median s)", f"{med(decode_s):.2f}", ""),
        ("build, 1 worker (median s)", f"{med(build_s):.2f}", ""),
        ("compute, in-process 1 worker (s)", f"{med(compute_1):.2f}", "multi-threaded"),
        ("compute, Ray on 1 / 2 CPUs (s)", f"{med(compute_ray_1):.2f} / {med(compute_2):.2f}", ""),
        ("Ray start-up (s, not in the ratio)", f"{ray_start:.2f}", ""),
        ("decoding floor, UCF101-size (median s)", f"{med(floor['floor_timings_s']['decode_floor']):.2f}", ""),
        *((f"build over floor, {m}", f"{floor[f'build_over_decode_floor_{m}']}", "") for m in FLOOR_METHODS),
    ]
    rows += target_rows(results, TARGETS)
    print_table(f"preprocess benchmark ({os.cpu_count()} CPUs, {args.repeats} repeats, medians)", rows)
    write_results(args.json, results)


if __name__ == "__main__":
    main()

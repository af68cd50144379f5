"""Loader benchmark: what FAME from a cache costs over plain clips, and what it saves over masks computed per batch.

    python benchmarks/loader.py --json benchmarks/results/loader.json

Videos: the real sample videos (../shared/data/real_videos from the repository root) plus generated ones encoded as
web video datasets are (10 s at 320x240, ~500 kbit/s, a keyframe every 2 s: `benchmarks/videos.py`), so every arm
seeks, built once into a temporary cache with `build_cache`. Every loader below reads the same videos with the same
seed, batch size, crop, workers and MoCo v2 augmentations; only the FAME step differs:

- decode_floor: the same worker processes decoding (and resizing to the cache's size) the two clips of each of the
  plain arm's samples, and nothing else: what no loader can go below. `plain_over_floor` and `cached_over_floor`
  say how close the loaders come to it.
- plain: no FAME (fame_p=0): decode clip a and clip b, crop, augment. Nothing is read from the cache.
- cached_fame: FAME on every query, mask of clip a and plate of the partner read from the cache; the key a plain
  clip from any start, as plain's (`TWO_CLIPS`): the same decoding as plain and the floor, so `cached_over_plain`
  and `cached_over_floor` are what the merge costs.
- cached_default: the default loader (both views on clip a, each merged over another video's plate): one clip
  decoded per sample, not two, so it can outrun plain; `default_over_plain` says by how much.
- cached_fame_frames: cached_fame with the partner's raw frames as background (the paper's mode): the cached mask,
  the partner's cropped clip a taken from the batch.
- original_fame: no cache, as the original code does per batch: the `fame` mask computed from each decoded clip a,
  the top-beta area binarisation, and another clip of the batch as the background. It differs from
  cached_fame_frames by the mask alone (computed vs read), so `per_clip` (decode, fame mask, cache read) explains
  the ratio.

clips/s counts training samples (one query/key pair each) per second: a fresh loader per arm and round, a warm-up
batch (worker start-up is not timed), then --batches timed batches; the median over --repeats rounds, the arms taking
turns within a round. Each ratio (`plain_over_floor`, `cached_over_floor`, `cached_over_plain`, ...) is the median
over rounds of that round's ratio: arms side by side in a round see the same load from elsewhere, which on a shared
machine moves a whole round's throughput several-fold. The outputs are checked before anything is timed: same
draws and key view with and without FAME, a query that FAME changed, partners from other videos.

`two_clips_of_a_10s_video` times decoding two clips of a 10 s video with a keyframe every 2 s, from the first frame
and by seeking. `--device gpu` runs the cached arms on the GPU (NVDEC); original_fame, a CPU mode, is left out there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import make_source  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.cache import Cache  # noqa: E402
from pipeline.loader import FameLoader, LoaderParams  # noqa: E402
from pipeline.masks import get_method  # noqa: E402
from pipeline.params import BuildParams  # noqa: E402
from pipeline.video import decode_clip, decode_clips, write_video  # noqa: E402
from synthetic import Scene, render  # noqa: E402

TARGETS = {
    "plain_over_floor": (">=", 0.7),
    "cached_over_floor": (">=", 0.65),
    "cached_over_plain": (">=", 0.9),
    "cached_over_original": (">=", 2.0),
}
# The FAME arms measured against plain decode what plain decodes: the query's clip merged, the key a plain clip from
# any start (the defaults put both views on one clip: `cached_default`).
TWO_CLIPS = {"key_start": "any", "key_merge": False, "query_crop": "random", "own_margin": 0.0}
BENCH_SIZE = (240, 320)  # generated videos at UCF101's frame size
BENCH_FRAMES = 250  # 10 s at 25 fps


def build_bench_cache(
    root: Path, n_generated: int, frames: int = BENCH_FRAMES, real: bool = True, build: BuildParams | None = None
):
    """The benchmark's videos (web-encoded generated ones and the real ones) and their cache under `root`:
    (source folder, cache URL, build report, build seconds)."""
    src = make_source(root, n_generated, frames, BENCH_SIZE, real=real, web=True)
    out = root / "cache.zarr"
    t0 = time.perf_counter()
    report = build_cache(str(src), str(out), build or BuildParams(clips_per_video=2), progress=False)
    if report.n_failed:
        raise SystemExit(f"benchmark cache build failed for {report.failures}")
    return src, str(out), report, time.perf_counter() - t0


def _batches(loader: FameLoader):
    """Batches without end: epochs roll over."""
    while True:
        yield from loader


def _floor_batches(loader: FameLoader):
    """The decoding floor's batches, as the loader's workers would decode them; epochs roll over."""
    pipe = loader.decode_floor()
    while True:
        try:
            yield pipe.run()
        except StopIteration:
            pipe.reset()


def clips_per_s(loader: FameLoader, batches: int, floor: bool = False) -> float:
    """Samples per second over `batches` batches, after one warm-up batch (worker start-up); epochs roll over.
    On a GPU the clock stops when the last batch's tensors are ready, not when their work is queued."""
    it = _floor_batches(loader) if floor else _batches(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    if loader.gpu:
        torch.cuda.synchronize()
    return batches * loader.batch_size / (time.perf_counter() - start)


def per_clip_ms(cache_url: str, size: tuple[int, int], n: int = 8) -> dict[str, float]:
    """Median milliseconds per clip of the steps the arms differ by, in this process: decoding a clip, computing its
    `fame` mask, reading its mask and plate from the cache. They explain the ratios."""
    cache = Cache.open(cache_url)
    clips = cache.readable_clips()
    clips = clips[np.linspace(0, len(clips) - 1, num=min(n, len(clips))).astype(int)]
    clip_video, frames = cache.clip_table()
    paths, root = cache.videos("path"), cache.source_root
    fame = get_method("fame")
    steps: dict[str, list[float]] = {"decode": [], "fame_mask": [], "cache_read": []}
    for c in clips:
        t0 = time.perf_counter()
        clip = decode_clip(os.path.join(root, str(paths[clip_video[c]])), frames[c], size)
        t1 = time.perf_counter()
        fame(clip)
        t2 = time.perf_counter()
        cache.mask(int(c)), cache.plate(int(c))
        t3 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            steps[name].append(dt * 1e3)
    return {f"{name}_ms": round(statistics.median(v), 2) for name, v in steps.items()}


def seeking_ms(root: Path, size: tuple[int, int], clip_len: int, repeats: int = 5) -> dict[str, float]:
    """Two clips of a 10 s video at 320x240 with a keyframe every 2 s (as datasets of web video have), one early
    and one late, decoded from the first frame and by seeking: the median ms of each, checked equal first."""
    frames, _ = render(Scene(size=(240, 320), n_frames=250))
    path = str(root / "long.mp4")
    write_video(path, frames, keyint=50)
    clips = [list(range(20, 20 + 2 * clip_len, 2)), list(range(200, 200 + 2 * clip_len, 2))]
    seeking, from_start = decode_clips(path, clips, size), decode_clips(path, clips, size, seek=False)
    if not all(np.array_equal(a, b) for a, b in zip(seeking, from_start, strict=True)):
        raise SystemExit("seeking decoded other frames than a pass from the start")
    times: dict[str, list[float]] = {"from_start_ms": [], "seeking_ms": []}
    for _ in range(repeats):
        for name, seek in (("from_start_ms", False), ("seeking_ms", True)):
            start = time.perf_counter()
            decode_clips(path, clips, size, seek=seek)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(statistics.median(v), 1) for name, v in times.items()}


def check(plain: dict, cached: dict, default: dict, original: dict | None) -> None:
    """Same seed, same draws: FAME changed the query and nothing else; every partner is another video (the default
    loader's and the original's too)."""
    plain, cached = _on_cpu(plain), _on_cpu(cached)
    for name in ("video", "clip_a", "clip_b", "partner_clip"):
        if not np.array_equal(plain[name], cached[name]):
            raise SystemExit(f"plain and cached FAME loaders drew different {name} for the same seed")
    if not np.array_equal(plain["key"], cached["key"]):
        raise SystemExit("the key view changed with FAME on; it must not")
    if np.array_equal(plain["query"], cached["query"]):
        raise SystemExit("FAME did not change the query view")
    others = [_on_cpu(b) for b in (default, original) if b is not None]
    for batch in (cached, *others):
        if (batch["video"] == batch["partner_video"]).any() or not np.isfinite(batch["query"]).all():
            raise SystemExit("a partner from the same video, or non-finite values")


def _on_cpu(batch: dict) -> dict[str, np.ndarray]:
    return {name: tensor.cpu().numpy() for name, tensor in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the arms (median reported)")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per arm and round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="parallel decoding workers per loader")
    parser.add_argument("--generated", type=int, default=16, help="generated videos added to the real ones")
    parser.add_argument("--frames", type=int, default=BENCH_FRAMES, help="frames per generated video")
    parser.add_argument("--no-real", action="store_true", help="generated videos only")
    parser.add_argument("--clip-len", type=int, default=BuildParams.clip_len)
    parser.add_argument("--crop", type=int, default=LoaderParams.crop)
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where the loader runs; on gpu the per-batch original (a CPU mode) is not measured",
    )
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: no CUDA device is visible")
    build = BuildParams(clip_len=args.clip_len, clips_per_video=2)
    base = {"crop": args.crop, "num_workers": args.workers}
    fame = {**base, **TWO_CLIPS, "fame_p": 1.0}
    arms = {
        "decode_floor": LoaderParams(**base, fame_p=0.0),
        "plain": LoaderParams(**base, fame_p=0.0),
        "cached_fame": LoaderParams(**fame),
        "cached_default": LoaderParams(**base),
        "cached_fame_frames": LoaderParams(**fame, background="frames", mask_mode="area"),
        "original_fame": LoaderParams(**fame, background="frames", mask_mode="area", use_cache=False),
    }
    if args.device == "gpu":  # CPU modes: the per-batch original, and the floor of PyAV decoding
        del arms["original_fame"], arms["decode_floor"]

    with tempfile.TemporaryDirectory(prefix="fame-loader-bench-") as tmp:
        tmp = Path(tmp)
        src, out, report, build_s = build_bench_cache(tmp, args.generated, args.frames, not args.no_real, build)

        def make(name: str) -> FameLoader:
            params = arms[name]
            if not params.use_cache:
                return FameLoader.from_videos(str(src), args.batch_size, params=params, seed=0, build_params=build)
            return FameLoader(out, args.batch_size, params=params, seed=0, device=args.device)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checked = ("plain", "cached_fame", "cached_default", "original_fame")
            check(*(next(iter(make(name))) if name in arms else None for name in checked))
            rates = {name: [] for name in arms}
            for _ in range(args.repeats):  # rounds over the arms, so load from elsewhere hits them alike
                for name in arms:
                    loader = make(name)
                    rates[name].append(clips_per_s(loader, args.batches, floor=name == "decode_floor"))
                    del loader
        steps = per_clip_ms(out, build.size)
        seeking = seeking_ms(tmp, build.size, build.clip_len)
        n_videos, n_clips = report.n_videos, report.n_clips

    med = {name: statistics.median(r) for name, r in rates.items()}
    original = med.get("original_fame")  # None on a GPU: the per-batch original is a CPU mode
    floor = med.get("decode_floor")

    def ratio(a: str, b: str) -> float | None:
        """The median over rounds of arm a's rate over arm b's in the same round; None when b was not run."""
        if b not in rates:
            return None
        return round(statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 3)

    results = {
        "decode_floor_clips_per_s": None if floor is None else round(floor, 2),
        "plain_clips_per_s": round(med["plain"], 2),
        "cached_fame_clips_per_s": round(med["cached_fame"], 2),
        "cached_default_clips_per_s": round(med["cached_default"], 2),
        "cached_fame_frames_clips_per_s": round(med["cached_fame_frames"], 2),
        "original_fame_clips_per_s": None if original is None else round(original, 2),
        "plain_over_floor": ratio("plain", "decode_floor"),
        "cached_over_floor": ratio("cached_fame", "decode_floor"),
        "cached_over_plain": ratio("cached_fame", "plain"),
        "default_over_plain": ratio("cached_default", "plain"),
        "default_over_floor": ratio("cached_default", "decode_floor"),
        "cached_over_original": ratio("cached_fame", "original_fame"),
        "cached_frames_over_original": ratio("cached_fame_frames", "original_fame"),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "gpu" else "cpu",
        "cpu_count": os.cpu_count(),
        "per_clip": steps,
        "two_clips_of_a_10s_video": seeking,
        "runs_clips_per_s": {name: [round(x, 2) for x in r] for name, r in rates.items()},
        "n_videos": n_videos,
        "n_clips": n_clips,
        "build_s": round(build_s, 2),
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "repeats": args.repeats,
        "build_params": build.to_dict(),
        "loader_params": {name: p.to_dict() for name, p in arms.items()},
        "targets": as_json(TARGETS),
    }
    rows = [("videos / clips in the cache", f"{n_videos} / {n_clips}", "")]
    rows += [(f"{name} (clips/s, median)", f"{med[name]:.2f}", "") for name in arms]
    rows += [(f"per clip: {name.removesuffix('_ms')} (ms)", f"{value:.1f}", "") for name, value in steps.items()]
    rows += [(f"2 clips of a 10 s video: {name[:-3]} (ms)", f"{value:.1f}", "") for name, value in seeking.items()]
    rows += target_rows(results, {k: v for k, v in TARGETS.items() if results[k] is not None})
    print_table(
        f"loader benchmark (CPU, {os.cpu_count()} cores, {args.workers} workers, {args.repeats} repeats, medians)", rows
    )
    write_results(args.json, results)


if __name__ == "__main__":
    main()

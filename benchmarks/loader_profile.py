"""Where a loader sample's time goes, beside the decoding it cannot avoid: per external-source step and per DALI
operator, on the loader benchmark's videos.

    python benchmarks/loader_profile.py [--json PATH]

External-source steps (decode, cache reads, the query's alpha, ...) are timed in this process, one sample at a time
on the cached FAME arm's draws, with one decoding, BLAS and OpenCV thread as in a loader worker. DALI operators are
timed in isolation on the same batch: the graph runs once with every intermediate as an output, then each operator
runs alone in a pipeline fed its real inputs, and the time of a pipeline that only feeds them is taken off.
Milliseconds per sample (a batch's time over its samples): medians for the steps, the fastest of --runs for each
operator (the run least disturbed by other load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # as a worker runs
import cv2
import numpy as np

cv2.setNumThreads(1)  # the source steps run here as in a loader worker: one thread of each kind
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import nvidia.dali.fn as fn  # noqa: E402
from nvidia.dali import pipeline_def  # noqa: E402

from benchmarks.loader import BENCH_SIZE, TWO_CLIPS, build_bench_cache  # noqa: E402
from benchmarks.targets import print_table, write_results  # noqa: E402
from pipeline.loader import FameLoader, LoaderParams  # noqa: E402
from pipeline.loader.external_source import CPU_OUTPUTS, PARAM_OUTPUTS  # noqa: E402
from pipeline.loader.graph import VIDEO_LAYOUTS, compose, crop_flip, normalise, partner_meta  # noqa: E402
from pipeline.loader.sampling import NO_BLUR  # noqa: E402


class _Info:
    """What DALI's external source hands the callable: the sample's place in the epoch."""

    def __init__(self, idx: int) -> None:
        self.idx_in_epoch, self.epoch_idx, self.iteration = idx, 0, 0


def source_steps(loader: FameLoader, samples: int) -> dict[str, float]:
    """Median ms per sample of each external-source step, in this process."""
    source = loader._source(0, 0)
    steps: dict[str, list[float]] = {}

    def timed(name: str, step: Callable):
        start = time.perf_counter()
        out = step()
        steps.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return out

    order = source._order(0)
    for pos in range(min(samples, source.samples_per_epoch)):
        draw = timed("draw", lambda pos=pos: source._draw(0, int(order[pos])))
        timed("decode 2 clips", lambda draw=draw: source._decode(draw))
        mask = timed("read own clip (mask and plate)", lambda draw=draw: source._read_clip(draw)[0])
        timed("query alpha (crop, binarise, floor, flip)", lambda draw=draw, mask=mask: source._alpha(draw, mask))
        timed("whole sample", lambda pos=pos: source(_Info(pos)))
    return {name: round(statistics.median(v), 2) for name, v in steps.items()}


def _run_ms(pipe, runs: int) -> float:
    pipe.run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        pipe.run()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3  # the run least disturbed by other load: an operator's own cost


def _feeding(arrays: list[list[np.ndarray]], layouts: list[str], batch: int, threads: int, op=None):
    """A pipeline that feeds the same batch every iteration and applies `op` to it (or outputs it as is)."""

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, exec_dynamic=True, enable_conditionals=True)
    def pipe():
        outs = fn.external_source(source=lambda: arrays, num_outputs=len(arrays), batch=True, layout=layouts)
        return op(*outs) if op is not None else tuple(outs)

    built = pipe()
    built.build()
    return built


def operator_ms(
    stages: dict[str, tuple[list[str], Callable]],
    inputs: dict[str, list[np.ndarray]],
    layouts: dict[str, str],
    threads: int,
    runs: int,
) -> dict[str, float]:
    """Median ms per sample of each stage run alone on its inputs, less the time of feeding them."""
    batch = len(next(iter(inputs.values())))
    out = {}
    for name, (needs, op) in stages.items():
        arrays = [inputs[n] for n in needs]
        lay = [layouts.get(n, "") for n in needs]
        feed = _run_ms(_feeding(arrays, lay, batch, threads, lambda *x: x[0]), runs)
        full = _run_ms(_feeding(arrays, lay, batch, threads, op), runs)
        out[name] = round(max(0.0, full - feed) / batch, 2)
    return out


def batch_inputs(loader: FameLoader) -> dict[str, list[np.ndarray]]:
    """The first batch's external-source outputs and the graph's intermediates (cropped, merged, augmented), per
    sample: what each operator is fed."""
    source = loader._source(0, 0)
    samples = [source(_Info(i)) for i in range(loader.batch_size)]
    inputs = {name: [s[i] for s in samples] for i, name in enumerate(CPU_OUTPUTS + PARAM_OUTPUTS)}
    debug = loader.debug_batch()
    inputs.update({name: list(debug[name]) for name in ("clip", "mask", "merged", "key")})
    inputs["cropped_plate"] = [b[:1] for b in debug["background"]]
    return inputs


def _hsv(frames, colour):
    if (colour[2] != 1.0) | (colour[3] != 0.0):
        frames = fn.hsv(frames, saturation=colour[2], hue=colour[3])
    return frames


def _blur(frames, colour):
    if colour[4] > NO_BLUR:
        frames = fn.gaussian_blur(frames, sigma=colour[4])
    return frames


def stages(crop: int) -> dict[str, tuple[list[str], Callable]]:
    """The graph's operators, each with the inputs it is fed (the query's; the key's where the two differ)."""

    def bc(frames, colour):
        return fn.brightness_contrast(frames, brightness=colour[0], contrast=colour[1], contrast_center=128.0)

    return {
        "crop+flip clip a": (["clip_a", "rois", "flips"], lambda c, r, f: crop_flip(c, r[0], f[0], crop)),
        "partner's plate, crop+flip": (
            ["plate", "rois", "flips", "partner_slot"],
            lambda p, r, f, s: crop_flip(fn.permute_batch(p, indices=s), r[0], f[0], crop),
        ),
        "compose": (["clip", "mask", "cropped_plate", "fame"], compose),
        "crop+flip key": (["clip_b", "rois", "flips"], lambda c, r, f: crop_flip(c, r[1], f[1], crop)),
        "brightness/contrast query": (["merged", "colour"], lambda x, c: bc(x, c[0])),
        "brightness/contrast key": (["key", "colour"], lambda x, c: bc(x, c[1])),
        "hsv query": (["merged", "colour"], lambda x, c: _hsv(x, c[0])),
        "hsv key": (["key", "colour"], lambda x, c: _hsv(x, c[1])),
        "blur query": (["merged", "colour"], lambda x, c: _blur(x, c[0])),
        "blur key": (["key", "colour"], lambda x, c: _blur(x, c[1])),
        "normalise query": (["merged"], normalise),
        "normalise key": (["key"], normalise),
        "partner meta": (["meta", "partner_slot"], partner_meta),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=12, help="samples timed step by step")
    parser.add_argument("--runs", type=int, default=25, help="runs of each operator pipeline")
    parser.add_argument("--threads", type=int, default=1, help="DALI operator threads")
    parser.add_argument("--generated", type=int, default=16, help="generated videos added to the real ones")
    parser.add_argument("--workdir", help="build the videos and cache here, or reuse the ones a run left there")
    args = parser.parse_args()
    params = LoaderParams(num_workers=0, num_threads=args.threads, fame_p=1.0, **TWO_CLIPS)
    with tempfile.TemporaryDirectory(prefix="fame-loader-profile-") as tmp:
        root = Path(args.workdir or tmp)
        cache = str(root / "cache.zarr")
        if not (root / "cache.zarr").is_dir():
            _, cache, _, _ = build_bench_cache(root, args.generated)
        loader = FameLoader(cache, args.batch_size, params=params, seed=0)
        steps = source_steps(loader, args.samples)
        inputs = batch_inputs(loader)
        layouts = {**VIDEO_LAYOUTS, **dict.fromkeys(("clip", "mask", "merged", "key", "cropped_plate"), "FHWC")}
        ops = operator_ms(stages(params.crop), inputs, layouts, args.threads, args.runs)
    decode = steps["decode 2 clips"]
    rows = [(f"source: {k}", f"{v:.2f}", f"ms/sample  {v / decode:.2f}x decode") for k, v in steps.items()]
    rows += [(f"DALI: {k}", f"{v:.2f}", f"ms/sample  {v / decode:.2f}x decode") for k, v in ops.items()]
    total = sum(ops.values())
    rows.append(("DALI: sum of operators", f"{total:.2f}", f"ms/sample  {total / decode:.2f}x decode"))
    print_table(f"loader profile (CPU, batch {args.batch_size}, {args.threads} DALI threads, {BENCH_SIZE})", rows)
    write_results(args.json, {"source_ms": steps, "operator_ms": ops, "threads": args.threads})


if __name__ == "__main__":
    main()

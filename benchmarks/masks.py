"""Mask benchmark: how well `motion` and `fame` find the true foreground, what a mask and a plate cost per clip, and
how small the masks compress.

    python benchmarks/masks.py --json benchmarks/results/masks.json

Quality: mean per-frame IoU of mask >= 128 against the truth of generated clips (panning and still cameras, movers
that change shape, one clip written as H.264 and decoded). `fame` is also scored at the threshold that suits it
best, so the comparison is not lost to the choice of 128. Cost: median milliseconds per 16 x 128 x 171 clip on one
core (OpenCV single-threaded), mask then plate as the build runs them (the plate reuses the camera motion that the
mask step tracked; `fame` tracks none, so its plate tracks the camera itself). Size: masks of real clips compressed
as the cache stores them (`pipeline.cache.MASK_COMPRESSOR`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from numcodecs import Blosc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import REAL  # noqa: E402
from pipeline.cache import MASK_COMPRESSOR  # noqa: E402
from pipeline.masks import get_method, get_step  # noqa: E402
from pipeline.plates import background_plate  # noqa: E402
from pipeline.video import decode, write_video  # noqa: E402
from synthetic import MASK_SCENES, Scene, render  # noqa: E402

TARGETS = {"motion_mean_iou": (">=", 0.7), "ms_per_clip_motion": ("<=", 30.0), "ms_per_clip_fame": ("<=", 30.0)}


def mean_iou(masks: np.ndarray, truth: np.ndarray, level: int = 128) -> float:
    pred = masks >= level
    return float(np.mean((pred & truth).sum(axis=(1, 2)) / np.maximum((pred | truth).sum(axis=(1, 2)), 1)))


def quality() -> dict[str, dict[str, float]]:
    clips = {name: render(scene) for name, scene in MASK_SCENES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        frames, truth = clips["pan"]
        write_video(f"{tmp}/pan.mp4", frames)
        clips["pan_h264"] = (decode(f"{tmp}/pan.mp4")[0], truth)
    out = {}
    for name, (frames, truth) in clips.items():
        motion, fame = get_method("motion")(frames), get_method("fame")(frames)
        out[name] = {
            "motion": round(mean_iou(motion, truth), 3),
            "fame": round(mean_iou(fame, truth), 3),
            "fame_best_threshold": round(max(mean_iou(fame, truth, level) for level in range(1, 256)), 3),
        }
    return out


def timings(repeats: int) -> dict[str, dict[str, float]]:
    cv2.setNumThreads(1)
    clips = {
        "pan": render(Scene(size=(128, 171), n_frames=16, pan=(0.5, 2.0), shape_change=0.25))[0],
        "static": render(Scene(size=(128, 171), n_frames=16, shape_change=0.25))[0],
    }
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for camera, frames in clips.items():
            for method in ("motion", "fame"):
                start = time.perf_counter()
                result = get_step(method)(frames)
                middle = time.perf_counter()
                masks, plate = result.masks, background_plate(frames, result.masks, result.camera)
                end = time.perf_counter()
                if masks.shape != frames.shape[:3] or plate.shape != frames.shape[1:] or plate.dtype != np.uint8:
                    raise RuntimeError(f"{method}: wrong output shapes {masks.shape}, {plate.shape}")
                samples.setdefault((camera, method), []).append((middle - start, end - middle))
    out = {}
    for (camera, method), values in samples.items():
        mask_ms = statistics.median(v[0] for v in values) * 1e3
        plate_ms = statistics.median(v[1] for v in values) * 1e3
        out[f"{camera}_{method}"] = {"mask": round(mask_ms, 1), "plate": round(plate_ms, 1)}
        out[f"{camera}_{method}"]["total"] = round(mask_ms + plate_ms, 1)
    return out


def mask_bytes() -> dict[str, dict[str, int]]:
    stored = MASK_COMPRESSOR
    codec = Blosc(cname=stored.cname.value, clevel=stored.clevel, shuffle=Blosc.NOSHUFFLE, blocksize=stored.blocksize)
    out = {}
    for path in sorted(REAL.glob("*.mp4")):
        clip, _ = decode(str(path), size=(128, 171), keep=range(0, 32, 2))
        out[path.name] = {m: len(codec.encode(np.ascontiguousarray(get_method(m)(clip)))) for m in ("motion", "fame")}
        out[path.name]["raw"] = int(clip[..., 0].size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    results = {"iou": quality(), "ms_per_clip": timings(args.repeats), "mask_bytes_per_clip": mask_bytes()}
    ious = [v["motion"] for v in results["iou"].values()]
    results["motion_mean_iou"] = round(float(np.mean(ious)), 3)
    results["ms_per_clip_motion"] = max(results["ms_per_clip"][f"{c}_motion"]["total"] for c in ("pan", "static"))
    results["ms_per_clip_fame"] = max(results["ms_per_clip"][f"{c}_fame"]["total"] for c in ("pan", "static"))
    results["targets"] = as_json(TARGETS)

    print("mask quality: mean IoU of mask >= 128 vs truth")
    print(f"  {'clip':22s} {'motion':>7s} {'fame':>7s} {'fame (best threshold)':>22s}")
    for name, row in results["iou"].items():
        print(f"  {name:22s} {row['motion']:7.3f} {row['fame']:7.3f} {row['fame_best_threshold']:22.3f}")
    print("cost per 16x128x171 clip, one core (median ms): mask + plate")
    for name, row in results["ms_per_clip"].items():
        print(f"  {name:22s} {row['mask']:6.1f} + {row['plate']:5.1f} = {row['total']:6.1f}")
    print("compressed mask bytes per real clip (zstd), raw 350208")
    for name, row in results["mask_bytes_per_clip"].items():
        print(f"  {name:22s} motion {row['motion']:7d}  fame {row['fame']:7d}")
    print_table("targets", target_rows(results, TARGETS))
    write_results(args.json, results)


if __name__ == "__main__":
    main()

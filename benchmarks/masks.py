"""Mask benchmark: how well each mask method finds the true foreground, what masks and plates cost per clip, and
how small the masks compress.

    python benchmarks/masks.py --json benchmarks/results/masks.json

Held-out scenes (the headline): small textured movers (1-5% of a 96x128 frame) over backgrounds that blend real
video crops with a tinted texture (`benchmarks/bias_scenes.py`), one video per kind of motion and draw: side to
side, up and down, in a circle, corner to corner (movers that travel) and pulsing in place; half of the videos with a
slow camera pan (0.3-0.7 px per frame). Each video is encoded as H.264 at a web bitrate (~0.28 bits per pixel, as
UCF101's 540 kbit/s at 320x240) and decoded, then cut into 8-frame clips at stride 2 (every clip of the video), and
every method runs on them as the build runs it (per-clip methods on each clip, `video` on the whole video). Score:
mean per-frame IoU of mask >= 128 against the truth, overall (`<method>_mean_iou`) and per kind of motion
(`<method>_iou_by_kind`); cost: milliseconds of mask and plate per clip on one core (`ms_per_clip_<method>`, the
median over repeats of a pass over every video). `calibration` says, per stored mask level, which fraction of the
pixels at that level are truly foreground.

Project scenes (`synthetic.MASK_SCENES`, larger movers, `iou`): `fame` is also scored at the threshold that suits it
best, so the comparison is not lost to the choice of 128. `ms_per_clip` breaks mask and plate down per 16x128x171
clip of a per-clip method. Size: masks of real clips compressed as the cache stores them
(`pipeline.cache.MASK_COMPRESSOR`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from numcodecs import Blosc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.bias_scenes import CLASSES, draw_spec, load_real_frames  # noqa: E402
from benchmarks.bias_scenes import render as render_spec  # noqa: E402
from benchmarks.targets import as_json, print_table, target_rows, write_results  # noqa: E402
from benchmarks.videos import REAL  # noqa: E402
from pipeline.cache import MASK_COMPRESSOR  # noqa: E402
from pipeline.job import video_outputs  # noqa: E402
from pipeline.masks import METHODS, get_method, get_step  # noqa: E402
from pipeline.params import BuildParams  # noqa: E402
from pipeline.plan import clip_frames  # noqa: E402
from pipeline.plates import background_plate  # noqa: E402
from pipeline.video import decode, write_video  # noqa: E402
from synthetic import MASK_SCENES, Scene, render  # noqa: E402

TARGETS = {"motion_mean_iou": (">=", 0.7), "ms_per_clip_motion": ("<=", 30.0), "ms_per_clip_fame": ("<=", 30.0)}
HELD_OUT_SIZE = (96, 128)
HELD_OUT_FRAMES = 96  # about 4 s at 25 fps
HELD_OUT_PERIOD = 40.0  # frames per cycle of a mover's path
HELD_OUT_AREA = (0.01, 0.05)  # mover area, fraction of the frame
HELD_OUT_BITS_PER_PIXEL = 0.28  # per frame: UCF101's ~540 kbit/s at 320x240 and 25 fps
HELD_OUT_CLIPS = BuildParams(size=HELD_OUT_SIZE, clip_len=8, stride=2, clips_per_video=None)
PAN_SPEED = (0.3, 0.7)  # px per frame


def held_out_videos(per_kind: int, seed: int = 11) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, decoded frames (F, h, w, 3), truth (F, h, w) bool) of `per_kind` videos per kind of motion; every
    other video of a kind pans."""
    pool = load_real_frames(seed=seed)
    rng = np.random.default_rng(seed)
    h, w = HELD_OUT_SIZE
    videos = []
    with tempfile.TemporaryDirectory() as tmp:
        for motion, kind in enumerate(CLASSES):
            for k in range(per_kind):
                spec = draw_spec(rng, motion, motion, "small", HELD_OUT_SIZE, HELD_OUT_FRAMES, HELD_OUT_PERIOD)
                ry, rx = spec.radius
                grow = float(np.sqrt(rng.uniform(*HELD_OUT_AREA) * h * w / (np.pi * ry * rx)))
                pan = (0.0, 0.0)
                if k % 2:
                    heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*PAN_SPEED)
                    pan = (speed * np.sin(heading), speed * np.cos(heading))
                spec = replace(spec, radius=(ry * grow, rx * grow), pan=pan)
                frames, truth = render_spec(spec, pool)
                path = f"{tmp}/{kind}_{k}.mp4"
                write_video(path, frames, bit_rate=round(HELD_OUT_BITS_PER_PIXEL * h * w * 25))
                videos.append((kind, decode(path)[0], truth))
    return videos


def held_out(methods: tuple[str, ...], per_kind: int, repeats: int) -> dict:
    """Per method: mean IoU overall and per kind, the per-level calibration and ms per clip (one core)."""
    cv2.setNumThreads(1)
    videos = held_out_videos(per_kind)
    out: dict = {}
    for method in methods:
        by_kind: dict[str, list[float]] = {kind: [] for kind in CLASSES}
        hits, counts = np.zeros(256), np.zeros(256)
        seconds = []
        for repeat in range(repeats):
            total, n_clips = 0.0, 0
            for kind, frames, truth in videos:
                table = clip_frames(len(frames), HELD_OUT_CLIPS)
                numbers = np.arange(len(frames))
                start = time.perf_counter()
                masks, plates = video_outputs(frames, numbers, table, method)
                total += time.perf_counter() - start
                n_clips += len(table)
                if repeat:
                    continue
                if masks.shape != (*table.shape, *HELD_OUT_SIZE) or plates.shape != (len(table), *HELD_OUT_SIZE, 3):
                    raise RuntimeError(f"{method}: wrong output shapes {masks.shape}, {plates.shape}")
                for clip, rows in zip(masks, table, strict=True):
                    by_kind[kind].append(mean_iou(clip, truth[rows]))
                    hits += np.bincount(clip[truth[rows]].ravel(), minlength=256)
                    counts += np.bincount(clip.ravel(), minlength=256)
            seconds.append(total / n_clips)
        levels = np.flatnonzero(counts)
        out[method] = {
            "mean_iou": round(float(np.mean([v for vs in by_kind.values() for v in vs])), 3),
            "iou_by_kind": {kind: round(float(np.mean(v)), 3) for kind, v in by_kind.items()},
            "ms_per_clip": round(statistics.median(seconds) * 1e3, 2),
            "calibration": {int(v): round(float(hits[v] / counts[v]), 3) for v in levels},
        }
    return out


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
    parser.add_argument("--per-kind", type=int, default=4, help="held-out videos per kind of motion (half pan)")
    parser.add_argument("--held-out-repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated mask methods to score")
    args = parser.parse_args()
    methods = tuple(args.methods.split(","))
    scored = held_out(methods, args.per_kind, args.held_out_repeats)
    results: dict = {}
    for method, row in scored.items():
        results[f"{method}_mean_iou"] = row["mean_iou"]
        results[f"{method}_iou_by_kind"] = row["iou_by_kind"]
        results[f"ms_per_clip_{method}"] = row["ms_per_clip"]
    results["calibration"] = {method: row["calibration"] for method, row in scored.items()}
    results["held_out"] = {
        "videos": args.per_kind * len(CLASSES),
        "size": list(HELD_OUT_SIZE),
        "frames": HELD_OUT_FRAMES,
        "clip_len": HELD_OUT_CLIPS.clip_len,
        "stride": HELD_OUT_CLIPS.stride,
        "bits_per_pixel": HELD_OUT_BITS_PER_PIXEL,
    }
    results["iou"] = quality()
    results["motion_mean_iou_project_scenes"] = round(float(np.mean([v["motion"] for v in results["iou"].values()])), 3)
    results["ms_per_clip"] = timings(args.repeats)
    results["mask_bytes_per_clip"] = mask_bytes()
    results["targets"] = as_json(TARGETS)

    print("held-out scenes: mean IoU of mask >= 128 vs truth, per kind of motion; ms per clip (one core)")
    print(f"  {'method':8s} {'all':>6s} " + " ".join(f"{k:>16s}" for k in CLASSES) + f" {'ms/clip':>8s}")
    for method in methods:
        kinds = " ".join(f"{results[f'{method}_iou_by_kind'][k]:16.3f}" for k in CLASSES)
        print(f"  {method:8s} {results[f'{method}_mean_iou']:6.3f} {kinds} {results[f'ms_per_clip_{method}']:8.2f}")

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

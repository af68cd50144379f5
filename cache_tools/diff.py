"""`fame-cache diff`: how two caches of the same videos differ, in parameters and in their masks.

Clips are matched by (video path, source frame numbers), so caches built with other sizes or methods still compare
where they cover the same frames. Agreement is the IoU of the binary masks (>= 128); masks of another size are
resized (nearest) to the first cache's size. Caches of different sources (other source roots, or a video of the same
path whose file had another size) would be compared as if of the same videos, so they are refused unless asked for.
Both are read as committed (`Cache.committed`): an append growing a cache, or stopped before its status, is no part
of it, neither of its clips nor of its sources.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.cache import Cache, Committed
from pipeline.params import FOREGROUND_THRESHOLD


def mask_iou(a: np.ndarray, b: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> float:
    """IoU of two soft masks (any shape, same size) binarised at threshold; two empty masks agree fully."""
    fa, fb = a >= threshold, b >= threshold
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if masks.shape[-2:] == size:
        return masks
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for m in masks])


def _clip_keys(view: Committed) -> dict[tuple[str, tuple[int, ...]], int]:
    """(video path, frame numbers) -> clip index, over the readable clips of a committed cache."""
    paths = view.table["path"]
    return {(str(paths[view.clip_video[c]]), tuple(view.frames[c].tolist())): int(c) for c in view.readable}


def source_differences(a: Cache, b: Cache, seen: tuple[Committed, Committed] | None = None) -> list[str]:
    """Why two caches look built from different videos: other source roots, or videos of the same path whose files
    had other sizes at build time. [] when nothing says so. Only the committed rows count (`Cache.committed`; `seen`:
    a's and b's, if already read): an append that has not written its status is no part of either cache, so the
    paths and sizes of its rows make no difference."""
    rows_a, rows_b = seen or (a.committed(), b.committed())
    notes = []
    if a.source_root != b.source_root:
        notes.append(f"source roots differ: {a.source_root} vs {b.source_root}")
    sizes = {str(p): int(n) for p, n in zip(rows_b.table["path"], rows_b.table["bytes"], strict=True)}
    other = [
        str(p)
        for p, n in zip(rows_a.table["path"], rows_a.table["bytes"], strict=True)
        if int(n) and sizes.get(str(p)) and sizes[str(p)] != int(n)
    ]
    if other:
        notes.append(f"{len(other)} video(s) of the same path were files of another size, e.g. {other[:3]}")
    return notes


def diff_caches(a: Cache, b: Cache, worst: int = 5, progress: bool = False, any_source: bool = False) -> dict[str, Any]:
    """Parameter differences and mask agreement (mean IoU over matched clips, per-video means, worst videos).
    Raises ValueError for caches of different sources (`source_differences`) unless any_source."""
    seen = a.committed(), b.committed()  # what a reader may read: an append not committed is no part of it
    sources = source_differences(a, b, seen)
    if sources and not any_source:
        raise ValueError(
            f"{a.url} and {b.url} were built from different sources ({'; '.join(sources)}): their masks would be "
            "compared as if of the same videos; pass --any-source to compare them anyway"
        )
    params = {k: list(v) for k, v in a.params.differences(b.params).items()}
    keys_a, keys_b = _clip_keys(seen[0]), _clip_keys(seen[1])
    common = sorted(set(keys_a) & set(keys_b))
    per_video: dict[str, list[float]] = {}
    for key in tqdm(common, desc="diff", unit="clip", disable=not progress, leave=False):
        ma = a.mask(keys_a[key])
        mb = _resize_masks(b.mask(keys_b[key]), a.size)
        per_video.setdefault(key[0], []).append(mask_iou(ma, mb))
    video_means = {v: float(np.mean(ious)) for v, ious in per_video.items()}
    all_ious = [x for ious in per_video.values() for x in ious]
    ranked = sorted(video_means.items(), key=lambda kv: kv[1])
    return {
        "a": a.url,
        "b": b.url,
        "params_hash": [a.params_hash, b.params_hash],
        "params": params,
        "sources": sources,
        "clips": {"a": len(keys_a), "b": len(keys_b), "matched": len(common)},
        "videos_matched": len(per_video),
        "threshold": FOREGROUND_THRESHOLD,
        "mean_iou": float(np.mean(all_ious)) if all_ious else None,
        "min_iou": float(np.min(all_ious)) if all_ious else None,
        "per_video": video_means,
        "worst": [{"path": v, "mean_iou": iou, "clips": len(per_video[v])} for v, iou in ranked[:worst]],
    }


def format_diff(d: dict[str, Any]) -> str:
    lines = [f"A  {d['a']}  ({d['params_hash'][0]})", f"B  {d['b']}  ({d['params_hash'][1]})"]
    if d["params"]:
        lines.append("parameters that differ:")
        lines += [f"  {k}: {a!r} vs {b!r}" for k, (a, b) in d["params"].items()]
    else:
        lines.append("parameters: the same")
    if d.get("sources"):
        lines.append("note: built from different sources (--any-source):")
        lines += [f"  {note}" for note in d["sources"]]
    c = d["clips"]
    lines.append(f"clips       {c['matched']} matched by video and frames ({c['a']} in A, {c['b']} in B)")
    if d["mean_iou"] is None:
        lines.append("masks       no clips in common: nothing to compare")
        return "\n".join(lines)
    lines.append(
        f"mask IoU    mean {d['mean_iou']:.3f}, min {d['min_iou']:.3f} (masks >= {d['threshold']}, "
        f"{d['videos_matched']} videos)"
    )
    lines.append("worst videos:")
    lines += [f"  {w['mean_iou']:.3f}  {w['path']} ({w['clips']} clips)" for w in d["worst"]]
    return "\n".join(lines)

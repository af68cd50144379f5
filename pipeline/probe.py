"""Probing videos for the build's plan: each file's size, content fingerprint and stream metadata, or why it is refused.

One function for one row (`probe_row`) and one for a run of rows (`probe_rows`), which is what runs near the data as
a Ray task when the build plans on a cluster (`pipeline.planner`): it takes the source root and relative paths, so a
worker opens the files itself and only the table's columns travel back to the driver.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.cache import FAILED, PENDING
from pipeline.params import BuildParams
from pipeline.plan import MIN_FRAMES
from pipeline.sources import join, stamp_source
from pipeline.video import VideoError, decode, probe

PROBED = ("n_frames", "fps", "height", "width", "bytes", "mtime", "fingerprint", "status", "error")
TEXT = ("fingerprint", "status", "error")
PROBE_THREADS = 4  # per batch: a probe mostly waits on the file (more so on an object store)


def probe_row(root: str, rel: str, params: BuildParams) -> dict[str, Any]:
    """One video-table row from the file's metadata; failures become status 'failed' with the reason."""
    path = join(root, rel)
    row: dict[str, Any] = {"n_frames": 0, "fps": 0.0, "height": 0, "width": 0, "bytes": 0, "mtime": 0.0}
    row["fingerprint"] = ""
    try:
        try:
            stamp = stamp_source(path)
            row.update(bytes=stamp.bytes, mtime=stamp.mtime, fingerprint=stamp.fingerprint)
        except FileNotFoundError as exc:
            raise VideoError(path, "file not found") from exc
        info = probe(path)
        row.update(fps=info.fps, height=info.height, width=info.width, n_frames=info.n_frames)
        if info.height * info.width > params.max_pixels:
            raise VideoError(path, f"resolution {info.width}x{info.height} is over --max-pixels {params.max_pixels}")
        if info.n_frames > params.max_frames:
            raise VideoError(path, f"has {info.n_frames} frames, over --max-frames {params.max_frames}")
        if info.n_frames <= 0:  # the container does not say: count by decoding
            _, counted = decode(path, keep=[0], max_pixels=params.max_pixels, max_frames=params.max_frames)
            row["n_frames"] = counted.n_frames
        if row["n_frames"] < MIN_FRAMES:
            raise VideoError(path, f"has {row['n_frames']} frame(s); a clip needs at least {MIN_FRAMES}")
        row.update(status=PENDING, error="")
    except VideoError as exc:
        row.update(status=FAILED, error=exc.reason)
    return row


def columns(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Probed rows as the video table's columns (`PROBED`), in order."""
    return {key: np.array([r[key] for r in rows], dtype=object if key in TEXT else None) for key in PROBED}


def probe_rows(root: str, rels: Sequence[str], params: BuildParams, threads: int = PROBE_THREADS) -> dict[str, Any]:
    """The probed columns of `rels` (in their order), probed in threads (I/O and FFmpeg release the GIL), and the
    seconds it took (`seconds`): a planning task's whole work."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        rows = list(pool.map(lambda rel: probe_row(root, rel, params), rels))
    return {**columns(rows), "seconds": time.perf_counter() - start}

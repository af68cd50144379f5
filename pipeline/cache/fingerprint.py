"""Whether the source videos are still the files a cache was built from: one check for the build's resume, the
loader and `fame-cache verify`.

A cache records each video's size and modification time at build time. A video whose path leads outside the source
root (an edited path, a link out) is never read; one that vanished or whose size or time changed no longer matches
its masks.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import numpy as np

from pipeline.sources import SourceError, is_url, join, stat_source

MTIME_TOLERANCE = 1e-3  # seconds: what a copy that keeps times may round away


@dataclass(frozen=True)
class SourceChange:
    video: int
    path: str  # relative to the source root
    kind: str  # source-escape | source-missing | source-changed
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def _when(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.UTC).isoformat(timespec="milliseconds")


def source_changes(
    root: str,
    paths: np.ndarray,
    sizes: np.ndarray,
    mtimes: np.ndarray,
    videos: Iterable[int],
    stat_remote: bool = True,
) -> list[SourceChange]:
    """How each of `videos` differs from the file it was built from ([] when all match). stat_remote=False checks
    only paths on object stores, where a stat per video is a round trip each."""
    remote = is_url(root)
    if remote and stat_remote:  # listings cached by this process may predate the check: ask the store again
        fsspec.core.url_to_fs(root)[0].invalidate_cache()
    changes = []
    for v in videos:
        rel = str(paths[v])
        try:
            full = join(root, rel)
        except SourceError as exc:
            changes.append(SourceChange(int(v), rel, "source-escape", str(exc)))
            continue
        if remote and not stat_remote:
            continue
        try:
            size, mtime = stat_source(full)
        except FileNotFoundError:
            changes.append(SourceChange(int(v), rel, "source-missing", f"vanished (not found under {root})"))
            continue
        built_size, built_time = int(sizes[v]), float(mtimes[v])
        if built_size and size != built_size:
            detail = f"size {size} bytes, built from {built_size}"
            changes.append(SourceChange(int(v), rel, "source-changed", detail))
        elif built_time and mtime and abs(mtime - built_time) > MTIME_TOLERANCE:
            detail = f"modified {_when(mtime)}, built from the file of {_when(built_time)}"
            changes.append(SourceChange(int(v), rel, "source-changed", detail))
    return changes

"""Whether the source videos are still the files a cache was built from: one check for the build's resume and append,
the loader, the swapped test and `fame-cache verify`.

A cache records each video's size and a cheap content fingerprint (`pipeline.sources.fingerprint_source`: a hash of
the size and of the file's first and last 4 KiB) at build time. Identity is by content, not by place or time: a
`touch`, a `cp -r` to another disk or a moved source root (`--videos-root`) still match. A video whose path leads
outside the source root (an edited path, a link out) is never read; one that vanished, or whose size or fingerprint
changed, no longer matches its masks. Caches built before the fingerprint (no `videos/fingerprint`, or '' in a row)
are checked by size alone; their recorded modification time is never compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np

from pipeline.sources import SourceError, fingerprint_source, is_url, join, stat_source

READ_THREADS = 16  # fingerprints are two small reads each: many at once hide the disk's (or the store's) latency


@dataclass(frozen=True)
class SourceChange:
    video: int
    path: str  # relative to the source root
    kind: str  # source-escape | source-missing | source-changed
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def _compare(v: int, rel: str, full: str, built_size: int, built_print: str, root: str) -> SourceChange | None:
    """How the file at `full` differs from what video v was built from, or None."""
    try:
        size, _ = stat_source(full)
        if built_size and size != built_size:
            return SourceChange(v, rel, "source-changed", f"size {size} bytes, built from {built_size}")
        if built_print and fingerprint_source(full, size) != built_print:
            detail = f"content changed (same size, {size} bytes, but another fingerprint: the first or last 4 KiB)"
            return SourceChange(v, rel, "source-changed", detail)
    except FileNotFoundError:
        return SourceChange(v, rel, "source-missing", f"vanished (not found under {root})")
    return None


def source_changes(
    root: str, table: Mapping[str, np.ndarray], videos: Iterable[int], stat_remote: bool = True
) -> list[SourceChange]:
    """How each of `videos` differs from the file it was built from ([] when all match). `table`: the cache's video
    columns `path` and `bytes`, and `fingerprint` where the cache has it. stat_remote=False checks only paths on
    object stores, where reading each video is a round trip."""
    remote = is_url(root)
    if remote and stat_remote:  # listings cached by this process may predate the check: ask the store again
        fsspec.core.url_to_fs(root)[0].invalidate_cache()
    paths, sizes = table["path"], table["bytes"]
    prints = table.get("fingerprint")
    changes, todo = [], []
    for v in videos:
        rel = str(paths[v])
        try:
            full = join(root, rel)
        except SourceError as exc:
            changes.append(SourceChange(int(v), rel, "source-escape", str(exc)))
            continue
        if remote and not stat_remote:
            continue
        built_print = str(prints[v]) if prints is not None else ""
        todo.append((int(v), rel, full, int(sizes[v]), built_print, root))
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        found = list(pool.map(lambda args: _compare(*args), todo))
    return sorted(changes + [c for c in found if c is not None], key=lambda c: c.video)

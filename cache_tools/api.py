"""The read-only view of a cache that the commands, the loader and users' own code share."""

from __future__ import annotations

import os

import fsspec
import numpy as np

from pipeline.cache import Cache, CacheError, Committed
from pipeline.cache.layout import metadata_summary
from pipeline.sources import SourceError, is_url, join


def normalise_url(path: str) -> str:
    """Local paths become absolute (caches are compared and listed by path); URLs stay as given."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def open_cache(path: str, check: bool = True) -> Cache:
    """Open a cache (local path or fsspec URL such as s3://bucket/c.zarr) read-only; CacheError says why not.

    With check (the default), a cache whose metadata files are damaged or edited is refused, naming them: every
    read would go through them. `verify` opens without the check: it reports and repairs them."""
    cache = Cache.open(normalise_url(path), mode="r")
    problem = metadata_summary(cache.url, cache.attrs) if check else None
    if problem:
        raise CacheError(f"{cache.url}: damaged metadata: {problem}; run `fame-cache verify --fix`")
    return cache


def video_index(cache: Cache, path: str, committed: Committed | None = None) -> int:
    """Row of a video in the table's committed rows (`Cache.committed`, if not given), by its path relative to the
    source root (or its full path)."""
    paths = [str(p) for p in (committed or cache.committed()).table["path"]]
    rel = path
    root = cache.source_root.rstrip("/")
    if path.startswith(root + "/") or path.startswith(root + os.sep):
        rel = path[len(root) + 1 :].replace(os.sep, "/")
    if rel in paths:
        return paths.index(rel)
    raise CacheError(f"{cache.url}: no video {path!r} in the cache (it has {len(paths)}, e.g. {paths[:3]})")


def video_clips(cache: Cache, video: int) -> np.ndarray:
    """Clip indices of one video (its planned slots; readable only if the video is done)."""
    first = int(cache.root["videos/first_clip"][video])
    count = int(cache.root["videos/n_clips"][video])
    return np.arange(first, first + count)


def is_readable(cache: Cache, clip: int, committed: Committed | None = None) -> bool:
    """Whether a clip may be read: it lies in the committed slots (`Cache.committed`, if not given), its video is
    done and it lies in that video's own slots (slots an append grew but has not filled read as video 0)."""
    return (committed or cache.committed()).is_readable(clip)


def source_path(cache: Cache, video: int) -> str:
    """Where the video's source file is now: the cache's source root joined with its relative path. A path that
    leads outside the root (an edited `videos/path`, a link out) is refused with CacheError."""
    try:
        return join(cache.source_root, str(cache.root["videos/path"][video]))
    except SourceError as exc:
        raise CacheError(f"{cache.url}: video {video}: {exc}") from exc


def disk_bytes(url: str) -> int:
    """Bytes the cache takes in its store (every file or object under it)."""
    fs, inner = fsspec.core.url_to_fs(url)
    try:
        return int(fs.du(inner, total=True))
    except FileNotFoundError:
        return 0

"""Finding a cache again by its parameters and its videos, so experiments with the same parameters share one cache
and one root holds several video sets (a train and a test split, or a set that grows).

Under a root, the first cache of a parameter hash is ROOT/<params_hash>.zarr; another video set with the same
parameters goes to ROOT/<params_hash>-<video set hash>.zarr. Names only place caches: a cache is found by what it
holds (its parameter hash and its videos' paths), so one that was appended to keeps its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import fsspec

from pipeline.cache.store import Cache
from pipeline.params import BuildParams


def default_cache_path(root: str, params: BuildParams) -> str:
    """Where the first cache for `params` goes under `root`: ROOT/<params_hash>.zarr."""
    return f"{root.rstrip('/')}/{params.params_hash()}.zarr"


def video_set_hash(videos: Iterable[str]) -> str:
    """8 hex digits naming a set of video paths (relative to their root), whatever their order."""
    return hashlib.sha256("\n".join(sorted(set(videos))).encode()).hexdigest()[:8]


def new_cache_path(root: str, params: BuildParams, videos: Iterable[str]) -> str:
    """Where a new cache of `videos` goes under root: ROOT/<params_hash>.zarr while no cache holds that name, else
    ROOT/<params_hash>-<video set hash>.zarr."""
    preferred = default_cache_path(root, params)
    if cache_videos(preferred) is None:
        return preferred
    return f"{root.rstrip('/')}/{params.params_hash()}-{video_set_hash(videos)}.zarr"


def cache_urls(root: str) -> list[str]:
    """URLs of the *.zarr entries directly under root (a folder or a bucket prefix); [] when root is missing."""
    fs, inner = fsspec.core.url_to_fs(root)
    try:
        if not fs.isdir(inner):
            return []
        fs.invalidate_cache(inner)
        entries = fs.ls(inner, detail=False)
    except FileNotFoundError:
        return []
    base = root.rstrip("/")
    names = sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries})
    return [f"{base}/{n}" for n in names if n.endswith(".zarr")]


def cache_videos(url: str, params: BuildParams | None = None) -> frozenset[str] | None:
    """The paths of the videos the cache at url holds (its committed rows), or None when there is no readable cache
    there (or, given `params`, not one built with them)."""
    try:
        cache = Cache.open(url)
        if params is not None and cache.params_hash != params.params_hash():
            return None
        return frozenset(str(p) for p in cache.videos("path")[: cache.committed_videos()])
    except Exception:  # a half-made or damaged entry is no cache to find (`fame-cache ls` names why)
        return None


def _holdings(root: str, params: BuildParams) -> list[tuple[str, frozenset[str]]]:
    """(url, videos) of every readable cache under root built with `params`, ROOT/<params_hash>.zarr first."""
    preferred = default_cache_path(root, params)
    found = []
    for url in sorted(cache_urls(root), key=lambda u: (u != preferred, u)):
        videos = cache_videos(url, params)
        if videos is not None:
            found.append((url, videos))
    return found


def find_cache(root: str, params: BuildParams, videos: Iterable[str] | None = None) -> str | None:
    """The cache under `root` built with the same output parameters (ROOT/<hash>.zarr first) and, given `videos`,
    holding exactly that set of paths; or None."""
    wanted = None if videos is None else frozenset(videos)
    for url, held in _holdings(root, params):
        if wanted is None or held == wanted:
            return url
    return None


def find_cache_to_grow(root: str, params: BuildParams, videos: Iterable[str]) -> str | None:
    """The cache under `root` with the same parameters whose videos are all among `videos` (an append adds the
    rest): the one holding the most of them, or None."""
    wanted = frozenset(videos)
    subsets = [(len(held), url) for url, held in _holdings(root, params) if held <= wanted]
    return max(subsets, key=lambda item: item[0])[1] if subsets else None

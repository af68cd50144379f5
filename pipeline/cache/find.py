"""Finding a cache again by its parameters, so experiments with the same parameters share one cache."""

from __future__ import annotations

import fsspec

from pipeline.cache.store import Cache, CacheError
from pipeline.params import BuildParams


def default_cache_path(root: str, params: BuildParams) -> str:
    """Where a new cache for `params` goes under `root`: ROOT/<params_hash>.zarr."""
    return f"{root.rstrip('/')}/{params.params_hash()}.zarr"


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


def find_cache(root: str, params: BuildParams) -> str | None:
    """The cache under `root` built with the same output parameters (ROOT/<hash>.zarr first), or None."""
    wanted = params.params_hash()
    preferred = default_cache_path(root, params)
    for url in sorted(cache_urls(root), key=lambda u: u != preferred):
        try:
            if Cache.open(url).params_hash == wanted:
                return url
        except CacheError:
            continue
    return None

"""Finding a cache again by its parameters, so experiments with the same parameters share one cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec

from pipeline.params import BuildParams
from pipeline.store import DONE, Cache, CacheError


def default_cache_path(root: str, params: BuildParams) -> str:
    """Where a new cache for `params` goes under `root`: ROOT/<params_hash>.zarr."""
    return f"{root.rstrip('/')}/{params.params_hash()}.zarr"


def _children(root: str) -> list[str]:
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
    children = _children(root)
    for url in sorted(children, key=lambda u: u != preferred):
        try:
            if Cache.open(url).params_hash == wanted:
                return url
        except CacheError:
            continue
    return None


@dataclass(frozen=True)
class CacheEntry:
    """One cache found under a root, as `fame-cache ls` shows it."""

    url: str
    params_hash: str
    method: str
    params: dict[str, Any]
    n_videos: int
    n_done: int
    n_clips: int
    created: str
    problem: str = ""  # why the entry cannot be read (a half-made or damaged cache); "" when it can

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _entry(url: str) -> CacheEntry:
    cache = Cache.open(url)
    status = cache.videos("status")
    return CacheEntry(
        url=url,
        params_hash=cache.params_hash,
        method=str(cache.attrs.get("method", "")),
        params=cache.params.output_params(),
        n_videos=len(status),
        n_done=int((status == DONE).sum()),
        n_clips=len(cache.readable_clips()),
        created=str(cache.attrs.get("created", "")),
    )


def list_caches(root: str) -> list[CacheEntry]:
    """Every `*.zarr` entry directly under root. One that cannot be read (half made, damaged, not a FAME cache) is
    listed with the reason in `problem`, so it neither hides nor ends the listing."""
    out = []
    for url in _children(root):
        try:
            out.append(_entry(url))
        except Exception as exc:  # any failure of one entry is that entry's, named in the listing
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CacheError) else str(exc)
            reason = reason.removeprefix(f"{url}: ")
            out.append(CacheEntry(url, "", "", {}, 0, 0, 0, "", problem=reason))
    return out

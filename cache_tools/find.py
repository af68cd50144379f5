"""`fame-cache ls`: every cache under a root (finding one by its parameters lives with the format, `pipeline.cache`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.cache import DONE, Cache, CacheError, cache_urls


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
    # What the cache covers: one record per build or append (source, split, videos_root, videos, first_video, added)
    sources: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cache_sources(cache: Cache) -> list[dict[str, Any]]:
    """The cache's `sources` records, each with its video count; a cache built before them (or copied by gc) gets one
    record: its source root and all its videos."""
    records = [dict(r) for r in cache.attrs.get("sources") or []]
    if not records:
        return [{"source": cache.source_root, "videos": cache.n_videos, "first_video": 0}]
    return records


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
        sources=cache_sources(cache),
    )


def list_caches(root: str) -> list[CacheEntry]:
    """Every `*.zarr` entry directly under root. One that cannot be read (half made, damaged, not a FAME cache) is
    listed with the reason in `problem`, so it neither hides nor ends the listing."""
    out = []
    for url in cache_urls(root):
        try:
            out.append(_entry(url))
        except Exception as exc:  # any failure of one entry is that entry's, named in the listing
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CacheError) else str(exc)
            reason = reason.removeprefix(f"{url}: ")
            out.append(CacheEntry(url, "", "", {}, 0, 0, 0, "", problem=reason))
    return out

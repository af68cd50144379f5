"""`fame-cache ls`: every cache under a root (finding one by its parameters lives with the format, `pipeline.cache`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.cache import DONE, Cache, CacheError, Committed, cache_urls
from pipeline.cache.planning import is_planning
from pipeline.cache.store import source_records


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
    # A cache a Ray build is planning, or was stopped while planning: {planned, videos}; the counts above are the
    # planned rows'. None once every video is planned.
    planning: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cache_sources(cache: Cache, committed: Committed | None = None) -> list[dict[str, Any]]:
    """The cache's `sources` records, each with its video count (with `committed`, those of its committed rows); a
    cache built before them (or copied by gc) gets one record: its source root and all its videos (`source_records`)."""
    if committed is None:
        return source_records(cache.attrs, cache.n_videos)
    return source_records(committed.attrs, committed.n_videos)


def planning_record(cache: Cache, committed: Committed) -> dict[str, int] | None:
    """{planned, videos} of a cache a Ray build is planning, or was stopped while planning (its committed rows are the
    planned ones); None once every video is planned."""
    return {"planned": committed.n_videos, "videos": cache.n_videos} if is_planning(cache) else None


def _entry(url: str) -> CacheEntry:
    cache = Cache.open(url)
    view = cache.committed()  # an append growing the cache, or stopped before its status, is not part of it
    status = view.table["status"]
    return CacheEntry(
        url=url,
        params_hash=cache.params_hash,
        method=str(cache.attrs.get("method", "")),
        params=cache.params.output_params(),
        n_videos=len(status),
        n_done=int((status == DONE).sum()),
        n_clips=len(view.readable),
        created=str(cache.attrs.get("created", "")),
        sources=cache_sources(cache, view),
        planning=planning_record(cache, view),
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

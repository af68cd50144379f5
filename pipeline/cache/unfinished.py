"""An append that was stopped before it committed: found, and undone, so the cache is again the one it grew from.

`Cache.append` records its segment first (the row where it begins), then grows the video table and the clip arrays
and fills the new rows and slots, and writes their status last. Stopped before that (a kill, a crash), it leaves
rows without a status past the committed ones, arrays longer than the cache, perhaps of lengths that disagree. No
reader counts those rows, but they are not damage to mark for recomputation either: marked `pending`, half-written
rows would become part of the cache (an empty path the source does not list, clips in slots the arrays lack).
`fame-cache verify --fix` removes them instead, and the next `--append` adds the videos again, as if it were the
first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import zarr

from pipeline.cache.layout import CLIP_ARRAYS, CacheShape, array_specs
from pipeline.cache.store import DONE, Cache, attrs_of_rows, committed_rows
from pipeline.cache.zarr_async import with_async_group

__all__ = ["UnfinishedAppend", "drop_unfinished_append", "find_unfinished_append"]


@dataclass(frozen=True)
class UnfinishedAppend:
    """Where an append that did not commit began: the committed rows before it and the clip slots they hold, and
    the source it was adding (its `sources` record, if it wrote one)."""

    rows: int
    slots: int
    source: dict[str, Any] | None

    def __str__(self) -> str:
        what = f" of {self.source.get('source')}" if self.source and self.source.get("source") else ""
        return (
            f"an append{what} began at video {self.rows} (clip slot {self.slots}) and stopped before it committed: "
            "the rows and slots from there are not part of the cache; `--fix` removes them, then run that append "
            "again"
        )


def find_unfinished_append(cache: Cache) -> UnfinishedAppend | None:
    """The append stopped before it committed, if the cache holds one: its rows begin where the committed rows end,
    at the last segment the layout records, and none of them is done (a done row past them is damage to the status
    column, for `verify` to report). A cache still planned by a Ray build has rows without a status by design."""
    layout = cache.attrs.get("layout") or {}
    if layout.get("planning") or "segments" not in layout:  # never appended to, or rows not planned yet
        return None
    try:
        status = cache.videos("status")
        rows = committed_rows(status)
        if rows == 0 or rows != max(layout["segments"]) or (status[rows:] == DONE).any():
            return None
        slots = cache.committed_slots(cache.videos("first_clip")[:rows], cache.videos("n_clips")[:rows])
    except Exception:  # a column that cannot be read: the metadata check names it, and --fix rewrites it first
        return None
    records = [s for s in cache.attrs.get("sources") or [] if int(s.get("first_video", 0)) >= rows]
    return UnfinishedAppend(rows, slots, records[0] if records else None)


def drop_unfinished_append(cache: Cache, found: UnfinishedAppend) -> None:
    """Cut every array back to the committed rows and slots (chunks past them deleted), then the append's segment
    and source record: the cache before the append, array for array. The caller holds the writer lock. Stopped
    part way, the append is still found (its segment goes last), and dropping it again finishes the job."""
    layout = dict(cache.attrs["layout"])
    per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
    specs = array_specs(CacheShape(found.rows, found.slots, cache.clip_len, cache.size, per_group, per_shard))
    shapes = {name: specs[name]["shape"] for name in (*(f"videos/{f}" for f in cache.video_fields), *CLIP_ARRAYS)}
    with_async_group(cache.root, lambda root: _shrink(root, shapes))
    before = attrs_of_rows(cache.attrs, found.rows)
    cache.root.attrs.update({"layout": before["layout"], "sources": before.get("sources") or []})


async def _shrink(root: zarr.AsyncGroup, shapes: dict[str, tuple[int, ...]]) -> None:
    """Resize each array to its shape, side by side. An array whose metadata cannot be read is left alone: verify
    finds it, and --fix rewrites it from the lengths the others now agree on."""

    async def one(name: str, shape: tuple[int, ...]) -> None:
        try:
            array = await root.getitem(name)
        except (KeyError, ValueError, TypeError):  # missing or not valid metadata
            return
        if array.shape != shape:
            await array.resize(shape)

    await asyncio.gather(*(one(name, shape) for name, shape in shapes.items()))

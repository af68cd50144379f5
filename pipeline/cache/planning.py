"""A cache planned while it is computed: its videos are planned in order, a run of whole writer groups at a time, and
each group can be computed as soon as its videos are planned. The driver writes nothing per video.

- `create_unplanned` makes the cache's nodes for V videos and one shard of clip slots; `layout.planning` says the
  plan is not finished. No row is written.
- `write_probed`: whoever probed a run of rows (a probe task, on a cluster) writes their whole rows but the first
  clip slot: path, label, probed columns, clip count, status last. Runs are whole chunks of the video table.
- `extend_plan`: the driver gives the next rows (a prefix continued) their clip slots, exactly where one
  `Cache.create` of the whole table puts them (`assign_clip_slots` continued from the last planned clip: each group
  starts on a shard boundary either way), and grows the clip arrays in place: a metadata write (atomic on every store
  Zarr writes to).
- `write_group_plan`: a group's share of the plan (its rows' first clip slots, the clip table of its slots), written
  by the group's own task before it computes, or by the driver for a group with nothing to compute.
- `end_planning`: once every row is planned and every group's share written, `layout.planning` goes.

Slots are a pure function of the probed rows before them, so the rows planned are the prefix of rows with a status,
and a build stopped half-way plans on from there (`plan_state`). The finished cache holds the arrays a one-shot
create and the same compute give, byte for byte; every writer still owns its chunks and shards alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fsspec
import numpy as np
import zarr

from pipeline.cache.layout import CLIP_ARRAYS, CacheShape, array_specs, assign_clip_slots
from pipeline.cache.lock import remove_all_but_lock
from pipeline.cache.store import (
    Cache,
    CacheError,
    Group,
    _create_arrays,
    _default_clips_per_shard,
    _root_attrs,
    _video_columns,
    committed_rows,
)
from pipeline.cache.zarr_async import with_async_group, write_arrays
from pipeline.params import BuildParams

__all__ = [
    "PlanState",
    "create_unplanned",
    "end_planning",
    "extend_plan",
    "grow_slots",
    "is_planning",
    "plan_state",
    "write_group_plan",
    "write_probed",
]

PLANNING = "planning"  # layout attribute, true while some rows are not planned


def is_planning(cache: Cache) -> bool:
    """Whether the cache was made to be planned row by row and some rows still are not."""
    return bool(cache.attrs["layout"].get(PLANNING))


def create_unplanned(
    url: str,
    params: BuildParams,
    source_root: str,
    n_videos: int,
    videos_per_group: int,
    source_info: dict | None = None,
) -> Cache:
    """A cache for n_videos videos, none planned: rows are written by `write_probed`, planned by `extend_plan`."""
    if n_videos == 0:
        raise CacheError(f"{url}: no videos to put in the cache")
    per_shard = _default_clips_per_shard(params, videos_per_group)
    shape = CacheShape(n_videos, per_shard, params.clip_len, tuple(params.size), videos_per_group, per_shard)
    attrs = _root_attrs(params, source_root, shape, source_info)
    attrs["layout"] = {**attrs["layout"], PLANNING: True}
    remove_all_but_lock(url)
    group = zarr.open_group(url, mode="a")
    group.attrs.update(attrs)
    for name in ("videos", "clips"):
        group.create_group(name)
    specs = array_specs(shape)
    with_async_group(group, lambda root: _create_arrays(root, specs, {}))
    return Cache(group, url)


def write_probed(cache: Cache, rows: range, table: dict[str, np.ndarray], clip_counts: Sequence[int]) -> None:
    """Write whole rows of the video table but their first clip slot: `table` holds their path, label and probed
    columns. Whole chunks that nobody else writes before the rows are planned; the status goes last."""
    values = _video_columns(table, np.zeros(len(rows), np.int64), clip_counts)
    status = values.pop("videos/status")
    fields = cache.video_fields
    at = slice(rows.start, rows.stop)
    writes = [(k, at, v) for k, v in values.items() if k != "videos/first_clip" and k.removeprefix("videos/") in fields]
    write_arrays(cache.root, writes)
    cache.root["videos/status"][at] = status


class PlanState:
    """Where the plan of a cache stands: rows planned so far, the clip slot after their last clip, the slots the
    clip arrays have, and the layout's numbers."""

    def __init__(self, n_videos: int, planned: int, cursor: int, n_slots: int, per_group: int, per_shard: int) -> None:
        self.n_videos, self.planned, self.cursor, self.n_slots = n_videos, planned, cursor, n_slots
        self.per_group, self.per_shard = per_group, per_shard

    def slots_after(self, cursor: int) -> int:
        """Clip slots of a cache whose clips end at `cursor` (whole shards, at least one)."""
        return max(-(-cursor // self.per_shard) * self.per_shard, self.per_shard)

    def groups(self, rows: range, first: np.ndarray, cursor: int) -> list[Group]:
        """The writer groups of planned `rows` (whole groups; `first`: their first clip slots, `cursor`: the slot
        after their last clip), as `Cache.groups` gives them once the whole cache is planned."""
        out = []
        for start in range(rows.start, rows.stop, self.per_group):
            stop = min(start + self.per_group, self.n_videos)
            lo = int(first[start - rows.start])
            if stop < rows.stop:
                hi = int(first[stop - rows.start])
            elif stop < self.n_videos:  # the next group starts on the next shard boundary
                hi = -(-cursor // self.per_shard) * self.per_shard
            else:
                hi = self.slots_after(cursor)
            out.append(Group(start // self.per_group, range(start, stop), range(lo, hi)))
        return out


def plan_state(cache: Cache) -> tuple[PlanState, np.ndarray]:
    """The plan of a cache made by `create_unplanned` as the plan left it: the rows planned are the prefix of rows
    with a status (their slots follow from their clip counts), and their first clip slots."""
    layout = cache.attrs["layout"]
    per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
    fs, root = fsspec.core.url_to_fs(cache.url)
    if not fs.exists(f"{root.rstrip('/')}/videos/status/c"):  # no row written: skip reading a table of fill values
        return PlanState(cache.n_videos, 0, 0, cache.n_slots, per_group, per_shard), np.zeros(0, np.int64)
    status = cache.videos("status")
    planned = committed_rows(status)
    counts = cache.videos("n_clips")[:planned]
    first, _ = assign_clip_slots(counts, per_group, per_shard)
    cursor = int(first[-1]) + int(counts[-1]) if planned else 0
    return PlanState(len(status), planned, cursor, cache.n_slots, per_group, per_shard), first


def extend_plan(cache: Cache, state: PlanState, clip_counts: Sequence[int]) -> tuple[range, np.ndarray, list[Group]]:
    """Plan the next rows (whole writer groups, or the table's end) from their clip counts: their first clip slots
    and writer groups, the clip arrays grown to hold them. `state` moves on."""
    start, n = state.planned, len(clip_counts)
    if start % state.per_group or (start + n != state.n_videos and n % state.per_group):
        raise ValueError(f"rows {start}..{start + n - 1} are not whole writer groups of {state.per_group}")
    first, _ = assign_clip_slots(clip_counts, state.per_group, state.per_shard, start, state.cursor)
    cursor = int(first[-1]) + int(clip_counts[-1]) if n else state.cursor
    grow_slots(cache, state, state.slots_after(cursor))
    groups = state.groups(range(start, start + n), first, cursor)
    state.planned, state.cursor = start + n, cursor
    return range(start, start + n), first, groups


def grow_slots(cache: Cache, state: PlanState, n_slots: int) -> None:
    """Grow the clip arrays to n_slots slots, unless they have them (their metadata only); `state` follows."""
    if n_slots <= state.n_slots:
        return
    shape = CacheShape(state.n_videos, n_slots, cache.clip_len, cache.size, state.per_group, state.per_shard)
    specs = array_specs(shape)
    with_async_group(cache.root, lambda root: _grow({name: specs[name]["shape"] for name in CLIP_ARRAYS}, root))
    state.n_slots = n_slots


async def _grow(shapes: dict[str, tuple], root: zarr.AsyncGroup) -> None:
    """Arrays grown to new shapes, side by side: their metadata only (nothing lies outside a grown shape, so no
    chunk is looked for: that would cost a moment per chunk)."""

    async def one(name: str, shape: tuple) -> None:
        await (await root.getitem(name)).resize(shape, delete_outside_chunks=False)

    await asyncio.gather(*(one(name, shape) for name, shape in shapes.items()))


def write_group_plan(
    cache: Cache, group: Group, first: np.ndarray, clip_counts: Sequence[int], frames: Sequence[np.ndarray | None]
) -> None:
    """A group's share of the plan: its rows' first clip slots (`first`), and for its slots the video of each clip
    (-1 for padding) and the planned frames (`frames`: each video's (n, T) table, None for none)."""
    clip_video = np.full(len(group.clips), -1, np.int32)
    table = np.zeros((len(group.clips), cache.clip_len), np.int32)
    for i, (lo, count) in enumerate(zip(first, clip_counts, strict=True)):
        at = int(lo) - group.clips.start
        clip_video[at : at + int(count)] = group.videos.start + i
        if count:
            table[at : at + int(count)] = frames[i]
    rows, slots = slice(group.videos.start, group.videos.stop), slice(group.clips.start, group.clips.stop)
    first = np.asarray(first, np.int64)
    write_arrays(
        cache.root,
        [("videos/first_clip", rows, first), ("clips/video", slots, clip_video), ("clips/frames", slots, table)],
    )


def end_planning(cache: Cache) -> None:
    """Every row is planned and every group's share of the plan written: the cache's attributes become those of a
    cache created whole."""
    layout = {k: v for k, v in cache.attrs["layout"].items() if k != PLANNING}
    cache.root.attrs.update({"layout": layout})

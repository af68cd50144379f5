"""The Zarr v3 cache: layout, creation, and the commit protocol. It knows nothing of what masks mean.

Layout (a public contract, documented in the README):

    attrs            format_version, method, params, params_hash, size, clip_len, source_root, tool_version, created,
                     layout (videos_per_group, clips_per_shard; segments once appended to), sources
    videos/path      (V,)  str     path relative to the source root
    videos/label     (V,)  str     class name
    videos/n_frames  (V,)  int32   frames decoded (probed estimate until done)
    videos/fps       (V,)  float32
    videos/height    (V,)  int32   source resolution
    videos/width     (V,)  int32
    videos/bytes     (V,)  int64   source file size at build time
    videos/mtime     (V,)  float64 source modification time at build time (0 when the store has none); shown, never
                                   compared (a copy or a `touch` changes it)
    videos/fingerprint (V,) str   the source file's content fingerprint (see pipeline.sources.fingerprint_source;
                                   absent in caches built before it: checked by size alone)
    videos/first_clip(V,)  int64   index of the video's first clip
    videos/n_clips   (V,)  int32
    videos/frame_index (V,) str   packet timestamps and keyframes, for seeking ('' when not recorded; absent in
                                   caches built before it: see layout.OPTIONAL_NODES)
    videos/status    (V,)  str     pending | done | failed
    videos/error     (V,)  str     why it failed, empty otherwise
    clips/video      (N,)  int32   index into videos; -1 for padding slots that hold no clip
    clips/frames     (N,T) int32   source frame numbers
    clips/checksum   (N,)  uint32  CRC32 of the clip's mask bytes, its plate bytes, then its frame numbers (int32
                                   little-endian; format 1 caches: mask and plate only)
    masks            (N,T,h,w) uint8  soft foreground probability x 255
    plates           (N,h,w,3) uint8  RGB background plate (JPEG quality 90 per chunk, codec "fame.jpeg")

Videos are cut into groups of `videos_per_group`; each group's clips start on a shard boundary and fill whole shards
(padding slots at the end), so one writer owns every shard it touches, in every array. A group is committed by
writing its clips first and its videos' status last: a clip is readable only once its video says `done`. A group is
always written whole, over whatever its shards held: a damaged shard is replaced, never read back and patched.
Every node's metadata is defined once, in `pipeline.cache.layout`.

An append (`Cache.append`) adds videos after the cache's own as a new segment: its clips start on a new shard and its
groups end where the video table's chunks do, so no shard or table chunk of a committed video is written again. A
reader never takes a clip for readable unless its video is done and the clip lies in that video's own slots, so rows
and slots an append has grown but not yet filled (fill values) are never read as clips; readers read
`Cache.committed()`, the rows with a status and their slots, so an append not yet committed is no part of what they
count either.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.cache.codecs import jpeg_roundtrip
from pipeline.cache.layout import (
    CLIP_ARRAYS,
    GROUPS,
    MASK_COMPRESSOR,
    OPTIONAL_NODES,
    PLATE_QUALITY,
    VIDEO_FIELDS,
    CacheShape,
    array_specs,
    assign_clip_slots,
    group_bounds,
    whole_shards,
)
from pipeline.cache.lock import remove_all_but_lock
from pipeline.cache.zarr_async import read_arrays, together, with_async_group, write_arrays
from pipeline.params import FORMAT_VERSION, BuildParams

__all__ = [
    "MASK_COMPRESSOR",
    "PLATE_QUALITY",
    "VIDEO_FIELDS",
    "Cache",
    "CacheError",
    "ClipDamaged",
    "Committed",
    "Group",
    "attrs_of_rows",
    "clip_checksum",
    "committed_rows",
    "readable_slots",
    "source_records",
]

TOOL_VERSION = "0.1.0"
PENDING, DONE, FAILED = "pending", "done", "failed"
STATUSES = (PENDING, DONE, FAILED)
FRAMES_CHECKED_FROM = 2  # the first format whose checksum covers the clip's frame numbers


class CacheError(Exception):
    """A cache that cannot be used as asked, with the path and the reason."""


class ClipDamaged(CacheError):
    """A committed clip whose bytes cannot be read or do not match their checksum."""


def clip_checksum(mask: np.ndarray, plate: np.ndarray, frames: np.ndarray | None = None) -> int:
    """CRC32 of the mask bytes, the plate bytes and (format 2 on) the frame numbers the mask was computed from."""
    crc = zlib.crc32(np.ascontiguousarray(plate).tobytes(), zlib.crc32(np.ascontiguousarray(mask).tobytes()))
    if frames is not None:
        crc = zlib.crc32(np.ascontiguousarray(frames, dtype="<i4").tobytes(), crc)
    return crc


@dataclass(frozen=True)
class Group:
    """One writer's share: a run of videos and the whole shards that hold their clips."""

    index: int
    videos: range
    clips: range


def committed_rows(status: np.ndarray) -> int:
    """Rows of the video table that are part of the cache: those with a status, counted from the first. Rows past
    them were added by an append (or planned by a Ray build) that has not written their status yet: no reader counts
    them, and the next append writes them again. A status is written once it is not the column's fill value (''): a
    value other than pending, done or failed is damage to a row of the cache (`verify` reports it), not its end."""
    written = np.asarray(status) != ""
    return len(status) if written.all() else int(np.argmin(written))


def attrs_of_rows(attrs: dict[str, Any], rows: int) -> dict[str, Any]:
    """The root's attributes as they were when the cache held its first `rows` rows: an append records its segment
    and source record before it writes its rows, so those that begin at or past `rows` are left out (the first
    build's, which begin at 0, always stay)."""
    kept_from = max(rows, 1)  # a segment or record beginning before this row is the cache's
    out = dict(attrs)
    layout = dict(attrs.get("layout") or {})
    if "segments" in layout:
        segments = [int(s) for s in layout["segments"] if int(s) < kept_from]
        if len(segments) > 1:
            layout["segments"] = segments
        else:
            layout.pop("segments")  # no append left: the layout of a cache never appended to
        out["layout"] = layout
    if attrs.get("sources"):
        out["sources"] = [r for r in attrs["sources"] if int(r.get("first_video", 0)) < kept_from]
    return out


def source_records(attrs: dict[str, Any], n_videos: int) -> list[dict[str, Any]]:
    """The cache's `sources` records (one per build and append); a cache made before them (or copied by gc) gets
    one: its source root and its `n_videos` videos, added when it was created (the record an append writes for it)."""
    records = [dict(r) for r in attrs.get("sources") or []]
    if records:
        return records
    return [{"source": attrs["source_root"], "videos": n_videos, "first_video": 0, "added": attrs.get("created")}]


def readable_slots(
    clip_video: np.ndarray, status: np.ndarray, first_clip: np.ndarray, n_clips: np.ndarray
) -> np.ndarray:
    """The clip slots a reader may use: the slot's video is one of the table's (`status`, `first_clip`, `n_clips`:
    its columns), it is done, and the slot lies in that video's own slots. Slots an append grew but has not filled
    read as video 0 (the fill value): inside no slot of video 0, they are no clip."""
    done = np.asarray(status) == DONE
    ok = (clip_video >= 0) & (clip_video < len(done))
    ok[ok] = done[clip_video[ok]]
    slots = np.arange(len(clip_video))
    video = clip_video[ok]
    ok[ok] &= (slots[ok] >= first_clip[video]) & (slots[ok] < first_clip[video] + n_clips[video])
    return np.flatnonzero(ok)


@dataclass(frozen=True)
class Committed:
    """The cache a reader sees (`Cache.committed`): the video table's committed rows (`committed_rows`), the clip
    table of the slots they hold (a clip that points past those rows is no clip: -1), the clip table's unreadable
    chunks among those slots, the readable clips, and the root's attributes as of those rows (`attrs_of_rows`).
    While an append grows the cache, or after one was stopped before its status, this is exactly the cache before
    it; in a cache a Ray build is still planning, it is the rows planned so far."""

    table: dict[str, np.ndarray]
    clip_video: np.ndarray  # (n_slots,) int32
    frames: np.ndarray  # (n_slots, T) int32
    bad_chunks: list[tuple[range, str]]
    readable: np.ndarray  # slot indices, ascending
    attrs: dict[str, Any]

    @property
    def n_videos(self) -> int:
        return len(self.table["status"])

    @property
    def n_slots(self) -> int:
        return len(self.clip_video)

    def is_readable(self, clip: int) -> bool:
        """Whether `clip` is one of the readable clips."""
        at = int(np.searchsorted(self.readable, clip))
        return at < len(self.readable) and int(self.readable[at]) == clip


def _optional(field: str) -> bool:
    """Whether a video column may be absent (added within the format: see layout.OPTIONAL_NODES)."""
    return f"videos/{field}" in OPTIONAL_NODES


def _column(values: Any, dtype: Any) -> np.ndarray:
    """Values as a video column's array: strings as objects, as Zarr's string arrays take them."""
    return np.asarray(values, dtype=object if dtype is str else dtype)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ---- the parts of a new cache (Cache.create) ------------------------------------------------------------------------


def _default_clips_per_shard(params: BuildParams, videos_per_group: int) -> int:
    """One shard per writer group when every video gives its clips_per_video (8 assumed with 'all')."""
    per_video = params.clips_per_video or 8
    return max(1, videos_per_group * per_video)


def _root_attrs(
    params: BuildParams, source_root: str, shape: CacheShape, source_info: dict[str, Any] | None
) -> dict[str, Any]:
    """The root's attributes: what the build was (params and their hash), what it covers (`sources`, one record per
    build or append) and how the cache is laid out."""
    h, w = shape.size
    sources = [] if source_info is None else [{**source_info, "first_video": 0, "added": _now()}]
    return {
        "format_version": FORMAT_VERSION,
        "method": params.method,
        "params": params.to_dict(),
        "params_hash": params.params_hash(),
        "size": [h, w],
        "clip_len": shape.clip_len,
        "source_root": source_root,
        "tool_version": TOOL_VERSION,
        "created": _now(),
        "layout": {"videos_per_group": shape.videos_per_group, "clips_per_shard": shape.clips_per_shard},
        "sources": sources,
    }


def _video_columns(
    video_table: dict[str, np.ndarray], first: np.ndarray, clip_counts: Sequence[int]
) -> dict[str, np.ndarray]:
    """Every `videos/` column as created: the table given with its clips' places, 'pending' and no error where it
    says no status, and zeros (or empty strings) for a column it lacks."""
    n_videos = len(clip_counts)
    table = dict(video_table)
    table["first_clip"] = first
    table["n_clips"] = np.asarray(clip_counts, dtype=np.int32)
    table.setdefault("status", np.full(n_videos, PENDING, dtype=object))
    table.setdefault("error", np.full(n_videos, "", dtype=object))
    columns = {}
    for name, dtype in VIDEO_FIELDS.items():
        data = table.get(name)
        data = np.zeros(n_videos, dtype=dtype) if data is None else data
        columns[f"videos/{name}"] = _column(data, dtype)
    return columns


def _clip_columns(
    first: np.ndarray,
    clip_counts: Sequence[int],
    clip_frames: Sequence[np.ndarray],
    shape: CacheShape,
    first_video: int = 0,
    first_slot: int = 0,
) -> dict[str, np.ndarray]:
    """`clips/video` and `clips/frames` of the slots from `first_slot` on (an append's: its videos are numbered from
    `first_video`); padding slots hold video -1."""
    clip_video = np.full(shape.n_slots - first_slot, -1, dtype=np.int32)
    frames = np.zeros((shape.n_slots - first_slot, shape.clip_len), dtype=np.int32)
    for v in range(len(clip_counts)):
        start, count = int(first[v]) - first_slot, int(clip_counts[v])
        clip_video[start : start + count] = first_video + v
        if count:
            frames[start : start + count] = clip_frames[v]
    return {"clips/video": clip_video, "clips/frames": frames}


async def _create_array(root: zarr.AsyncGroup, name: str, spec: dict[str, Any], data: np.ndarray | None) -> None:
    arr = await root.create_array(name, **spec)
    if data is not None:
        await arr.setitem(slice(None), data)


async def _create_arrays(
    root: zarr.AsyncGroup, specs: dict[str, dict[str, Any]], values: dict[str, np.ndarray]
) -> None:
    """Every array of `specs`, side by side, filled from `values` where given; plates last: a cache whose plates
    array exists was created in full."""
    first = {name: spec for name, spec in specs.items() if name != "plates"}
    await asyncio.gather(*(_create_array(root, name, spec, values.get(name)) for name, spec in first.items()))
    await _create_array(root, "plates", specs["plates"], values.get("plates"))


async def _grow_array(root: zarr.AsyncGroup, name: str, shape: tuple, fill: tuple[slice, np.ndarray] | None) -> None:
    arr = await root.getitem(name)
    await arr.resize(shape)
    if fill is not None:
        await arr.setitem(fill[0], fill[1])


async def _grow_arrays(root: zarr.AsyncGroup, grow: dict[str, tuple[tuple, tuple[slice, np.ndarray] | None]]) -> None:
    """Resize each named array and write its new part, all side by side (an append: see `Cache.append`)."""
    await asyncio.gather(*(_grow_array(root, name, shape, fill) for name, (shape, fill) in grow.items()))


class Cache:
    """An open cache. Reads are cheap views; writes follow the group protocol above."""

    def __init__(self, group: zarr.Group, url: str) -> None:
        self.root = group
        self.url = url
        self._clip_arrays: dict[str, zarr.Array] = {}

    # ---- opening and creating -------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, mode: str = "r") -> Cache:
        try:
            group = zarr.open_group(url, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise CacheError(f"{url}: no cache here (not a Zarr group)") from exc
        except ValueError as exc:  # the root's zarr.json is not valid JSON, or not Zarr metadata
            raise CacheError(
                f"{url}/zarr.json: the cache's root metadata cannot be read ({exc}); its parameters are lost with it: "
                "rebuild the cache"
            ) from exc
        attrs = dict(group.attrs)
        if "format_version" not in attrs or "params_hash" not in attrs:
            raise CacheError(f"{url}: a Zarr group, but not a FAME cache (attrs lack format_version/params_hash)")
        if attrs["format_version"] > FORMAT_VERSION:
            raise CacheError(
                f"{url}: cache format {attrs['format_version']} is newer than this tool reads ({FORMAT_VERSION})"
            )
        return cls(group, url)

    @classmethod
    def exists(cls, url: str) -> bool:
        try:
            cls.open(url)
        except CacheError:
            return False
        return True

    @classmethod
    def create(
        cls,
        url: str,
        params: BuildParams,
        source_root: str,
        video_table: dict[str, np.ndarray],
        clip_counts: Sequence[int],
        clip_frames: Sequence[np.ndarray],
        videos_per_group: int = 8,
        clips_per_shard: int | None = None,
        source_info: dict[str, Any] | None = None,
    ) -> Cache:
        """Make an empty cache: attrs, the video table, the clip table, and empty mask/plate arrays. Its values are
        made before anything at `url` is removed, so a table that does not fit fails with the old output intact.
        `source_info`: what the videos are (e.g. {"source": list file or folder, "split": ..., "videos": V}), kept
        in the `sources` attribute for `fame-cache ls`."""
        n_videos = len(clip_counts)
        if n_videos == 0:
            raise CacheError(f"{url}: no videos to put in the cache")
        if clips_per_shard is None:
            clips_per_shard = _default_clips_per_shard(params, videos_per_group)
        first, n_slots = assign_clip_slots(clip_counts, videos_per_group, clips_per_shard)
        shape = CacheShape(n_videos, n_slots, params.clip_len, tuple(params.size), videos_per_group, clips_per_shard)
        values = _video_columns(video_table, first, clip_counts) | _clip_columns(first, clip_counts, clip_frames, shape)
        remove_all_but_lock(url)  # what Zarr's mode "w" does, except that the writer lock held on the folder stays
        group = zarr.open_group(url, mode="a")
        group.attrs.update(_root_attrs(params, source_root, shape, source_info))
        for name in GROUPS:
            group.create_group(name)
        specs = array_specs(shape)
        with_async_group(group, lambda root: _create_arrays(root, specs, values))
        return cls(group, url)

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def format_version(self) -> int:
        return int(self.attrs["format_version"])

    @property
    def params(self) -> BuildParams:
        return BuildParams.from_dict(self.attrs["params"])

    @property
    def params_hash(self) -> str:
        return self.attrs["params_hash"]

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.attrs["size"]
        return int(h), int(w)

    @property
    def clip_len(self) -> int:
        return int(self.attrs["clip_len"])

    @property
    def source_root(self) -> str:
        return self.attrs["source_root"]

    @property
    def n_videos(self) -> int:
        return int(self.root["videos/path"].shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.root["clips/video"].shape[0])

    @functools.cached_property
    def video_fields(self) -> dict[str, Any]:
        """The video columns this cache has: all of VIDEO_FIELDS, less an optional one it was built without."""
        optional = [name for name in VIDEO_FIELDS if _optional(name)]
        # By their metadata documents, not a listing: listing opens every column (milliseconds per writer group).
        store, base = self.root.store, f"{self.root.path}/" if self.root.path else ""
        found = together(*(store.exists(f"{base}videos/{name}/zarr.json") for name in optional))
        present = {name for name, exists in zip(optional, found, strict=True) if exists}
        return {name: dtype for name, dtype in VIDEO_FIELDS.items() if name in present or not _optional(name)}

    def videos(self, field: str) -> np.ndarray:
        """One column of the video table."""
        return self.root[f"videos/{field}"][:]

    def video_table(self) -> dict[str, np.ndarray]:
        """Every column of the video table the cache has (`video_fields`), read side by side. Columns read while an
        append grows the table may differ in length; all are cut to the shortest (the rows every column has)."""
        names = list(self.video_fields)
        columns = read_arrays(self.root["videos"], names)
        rows = min(len(c) for c in columns)
        return {name: column[:rows] for name, column in zip(names, columns, strict=True)}

    def groups(self) -> list[Group]:
        """The writer groups, recomputed from the layout attrs (`segments`: where each append began) and the video
        table: each a run of videos within one chunk of the table and one segment, with the whole shards that hold
        their clips."""
        layout = self.attrs["layout"]
        per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
        first = self.videos("first_clip")
        n_videos, n_slots = len(first), self.n_slots
        out = []
        for g, videos in enumerate(group_bounds(n_videos, per_group, layout.get("segments", [0]))):
            start, stop = videos.start, videos.stop
            clip_start = int(first[start])
            clip_stop = int(first[stop]) if stop < n_videos else n_slots
            clip_stop = -(-clip_stop // per_shard) * per_shard if stop == n_videos else clip_stop
            out.append(Group(g, videos, range(clip_start, clip_stop)))
        return out

    def committed_videos(self) -> int:
        """Rows of the video table that an append finished writing: all of them, unless an append was stopped
        between growing the table and writing its status (those rows have none, and the next append rewrites them)."""
        return committed_rows(self.videos("status"))

    def committed_slots(self, first_clip: np.ndarray, n_clips: np.ndarray) -> int:
        """Clip slots of the committed rows (`first_clip`, `n_clips`: theirs): whole shards up to their last clip.
        Slots past them belong to an append that has not committed its rows."""
        ends = np.asarray(first_clip, np.int64) + np.asarray(n_clips, np.int64)
        return whole_shards(int(ends.max(initial=0)), int(self.attrs["layout"]["clips_per_shard"]))

    def committed(self) -> Committed:
        """What a reader may read (see `Committed`): the video table first, then the clip table, so a clip table
        read after an append grew it may point past the rows read, and such clips are no clips."""
        table = self.video_table()
        rows = committed_rows(table["status"])
        table = {name: column[:rows] for name, column in table.items()}
        slots = self.committed_slots(table["first_clip"], table["n_clips"])
        clip_video, frames, bad_chunks = self.read_clip_table()
        clip_video = np.where(clip_video[:slots] < rows, clip_video[:slots], -1).astype(np.int32)
        readable = readable_slots(clip_video, table["status"], table["first_clip"], table["n_clips"])
        bad = [(chunk, why) for chunk, why in bad_chunks if chunk.start < slots]
        return Committed(table, clip_video, frames[:slots], bad, readable, attrs_of_rows(self.attrs, rows))

    def append(
        self,
        video_table: dict[str, np.ndarray],
        clip_counts: Sequence[int],
        clip_frames: Sequence[np.ndarray],
        source_info: dict[str, Any] | None = None,
    ) -> range:
        """Add videos after the cache's committed ones (`committed_videos`) as a new segment, nothing computed (their
        status is pending or failed), and return their rows. Caller holds the writer lock.

        Order, so that a reader at any moment sees the cache as it was or with the new videos pending: the segment
        is recorded first (writers' groups), then the video table grows and is filled, then the clip arrays (new
        rows and slots read as fill values meanwhile, which no reader takes for a clip: see `readable_clips`), the
        status column last. No chunk or shard that holds a committed video is written."""
        if not clip_counts:
            return range(self.n_videos, self.n_videos)
        attrs = self.attrs
        layout = dict(attrs["layout"])
        per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
        n_old = self.committed_videos()
        old_slots = self.committed_slots(self.videos("first_clip")[:n_old], self.videos("n_clips")[:n_old])
        first, n_slots = assign_clip_slots(clip_counts, per_group, per_shard, first_video=n_old, first_slot=old_slots)
        shape = CacheShape(n_old + len(clip_counts), n_slots, self.clip_len, self.size, per_group, per_shard)
        rows = _video_columns(video_table, first, clip_counts)
        slots = _clip_columns(first, clip_counts, clip_frames, shape, first_video=n_old, first_slot=old_slots)
        layout["segments"] = sorted({*layout.get("segments", [0]), n_old})
        record = [{**(source_info or {}), "first_video": n_old, "added": _now()}]
        built = source_records(attrs, n_old)
        kept = [s for s in built if int(s.get("first_video", 0)) < n_old]
        self.root.attrs.update({"layout": layout, "sources": kept + record})
        specs = array_specs(shape)
        status = rows.pop("videos/status")
        new_rows = slice(n_old, shape.n_videos)
        videos = {f"videos/{name}": (specs[f"videos/{name}"]["shape"], None) for name in self.video_fields}
        videos |= {name: (specs[name]["shape"], (new_rows, v)) for name, v in rows.items() if name in videos}
        clips = {name: (specs[name]["shape"], None) for name in CLIP_ARRAYS}
        clips |= {name: (specs[name]["shape"], (slice(old_slots, n_slots), v)) for name, v in slots.items()}
        # The table first, then the clips that point into it, then the status that makes the rows count.
        with_async_group(self.root, lambda root: _grow_arrays(root, videos))
        with_async_group(self.root, lambda root: _grow_arrays(root, clips))
        self.root["videos/status"][n_old:] = status
        return range(n_old, shape.n_videos)

    def clip_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(clips/video, clips/frames) of all slots; an unreadable chunk's slots hold no clip (see read_clip_table)."""
        clip_video, frames, _ = self.read_clip_table()
        return clip_video, frames

    def read_clip_table(self) -> tuple[np.ndarray, np.ndarray, list[tuple[range, str]]]:
        """(clips/video, clips/frames, [(slots of an unreadable chunk, why)]). When the table does not read whole, it
        is read chunk by chunk: a damaged chunk costs its own slots (video -1: no clip), not the whole table."""
        try:
            return self.root["clips/video"][:], self.root["clips/frames"][:], []
        except Exception:  # a damaged chunk somewhere: find it
            pass
        n, t = self.n_slots, self.clip_len
        per_chunk = int(self.root["clips/frames"].chunks[0])
        clip_video, frames = np.full(n, -1, np.int32), np.zeros((n, t), np.int32)
        bad = []
        for lo in range(0, n, per_chunk):
            hi = min(lo + per_chunk, n)
            try:
                clip_video[lo:hi], frames[lo:hi] = self.root["clips/video"][lo:hi], self.root["clips/frames"][lo:hi]
            except Exception as exc:  # a codec or a store error: the chunk's bytes are not what was written
                clip_video[lo:hi] = -1
                bad.append((range(lo, hi), f"{type(exc).__name__}: {exc}"[:200]))
        return clip_video, frames, bad

    def readable_clips(self, clip_video: np.ndarray | None = None) -> np.ndarray:
        """Indices of clips whose video is done: the only ones a reader may use. `clip_video`: the clip table's
        video column as already read (`read_clip_table`), if it was."""
        if clip_video is None:
            clip_video, _, _ = self.read_clip_table()
        columns = read_arrays(self.root["videos"], ["status", "first_clip", "n_clips"])
        rows = min(len(c) for c in columns)
        return readable_slots(clip_video, *(c[:rows] for c in columns))

    # ---- clip data --------------------------------------------------------------------------------------------
    def _clip_array(self, name: str, clip: int) -> zarr.Array:
        """A per-clip array, opened once per Cache: each opening reads the array's metadata (a file, or a request on
        an object store), which cost a loader worker about a third of each clip's read. Opened again when `clip`
        lies past the shape it had (the cache grew by an append since)."""
        array = self._clip_arrays.get(name)
        if array is None or clip >= array.shape[0]:
            array = self._clip_arrays[name] = self.root[name]
        return array

    def mask(self, clip: int) -> np.ndarray:
        return self._clip_array("masks", clip)[clip]

    def plate(self, clip: int) -> np.ndarray:
        return self._clip_array("plates", clip)[clip]

    def checksum(self, mask: np.ndarray, plate: np.ndarray, frames: np.ndarray) -> int:
        """The checksum of a clip's bytes as this cache's format defines it."""
        return clip_checksum(mask, plate, frames if self.format_version >= FRAMES_CHECKED_FROM else None)

    def check_clip(self, clip: int) -> bool:
        """Whether the stored checksum matches the clip's bytes."""
        stored = int(self.root["clips/checksum"][clip])
        return stored == self.checksum(self.mask(clip), self.plate(clip), self.root["clips/frames"][clip])

    def read_clip(
        self, clip: int, frames: np.ndarray | None = None, stored: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mask, plate) of a committed clip, checked against its checksum (with `frames`, the frame numbers the
        reader will decode, else the stored ones; with `stored`, the checksum as the reader read it before, else
        read now). Raises ClipDamaged: a missing shard reads as Zarr's fill value and a damaged one may decode to
        other bytes, and neither may pass for the clip."""
        try:
            mask, plate = self.mask(clip), self.plate(clip)
            if stored is None:
                stored = int(self._clip_array("clips/checksum", clip)[clip])
            frames = self._clip_array("clips/frames", clip)[clip] if frames is None else frames
        except Exception as exc:  # a codec, a shard index, a store: anything that stops the bytes coming back
            raise ClipDamaged(f"{self.url}: clip {clip} cannot be read ({type(exc).__name__}: {exc})") from exc
        got = self.checksum(mask, plate, frames)
        if got != stored:
            raise ClipDamaged(
                f"{self.url}: clip {clip} does not match its checksum (stored {stored:08x}, read {got:08x})"
            )
        return mask, plate

    # ---- writing (one writer per group) -----------------------------------------------------------------------
    def write_group(
        self,
        group: Group,
        masks: np.ndarray,
        plates: np.ndarray,
        frames: np.ndarray,
        video_updates: dict[str, np.ndarray],
    ) -> None:
        """Commit one group: clip arrays first, then video fields, status last.

        masks/plates/frames cover the whole group's clip range (padding slots included, as zeros); video_updates
        holds full columns for the group's videos and must include 'status' and 'error'; a column the cache was
        built without (`video_fields`) is left out.
        """
        sl = slice(group.clips.start, group.clips.stop)
        stored = [jpeg_roundtrip(p[None], PLATE_QUALITY)[0] for p in plates]  # what a reader gets back (lossy)
        checksums = np.array(
            [self.checksum(m, p, f) for m, p, f in zip(masks, stored, frames, strict=True)], dtype=np.uint32
        )
        self._drop_chunks(group.clips)
        clip_arrays = [("masks", masks), ("plates", plates), ("clips/frames", frames), ("clips/checksum", checksums)]
        vs = slice(group.videos.start, group.videos.stop)
        fields = self.video_fields
        columns = {name: v for name, v in video_updates.items() if name in fields and name != "status"}
        # Two round trips: everything but the status side by side (a reader goes by the status alone), then the status.
        write_arrays(
            self.root,
            [(name, sl, values) for name, values in clip_arrays]
            + [(f"videos/{k}", vs, _column(v, fields[k])) for k, v in columns.items()],
        )
        write_arrays(self.root, [("videos/status", vs, _column(video_updates["status"], str))])

    def _drop_chunks(self, clips: range) -> None:
        """Delete the stored chunks of a clip range's whole shards in every clip array, so the write that follows
        starts from nothing: Zarr reads an existing shard back before writing into it, and a damaged one fails."""
        keys = []
        for name in ("masks", "plates", "clips/frames", "clips/checksum"):
            arr = self.root[name]
            per_chunk = int((arr.shards or arr.chunks)[0])
            for index in range(clips.start // per_chunk, -(-clips.stop // per_chunk)):
                coords = (index, *([0] * (arr.ndim - 1)))
                keys.append(f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}")
        store = self.root.store
        together(*(store.delete(key) for key in keys))

    def mark(self, marks: dict[int, tuple[str, str]], within: range | None = None) -> None:
        """Set videos' (status, error): the error column first, the status last, so a reader that sees the new status
        sees its reason. Only the rows of `within` (a writer group's videos; default all) are rewritten, so writers
        of other groups are not overwritten. Callers hold the writer lock or own the group."""
        rows = within or range(self.n_videos)
        if any(v not in rows for v in marks):
            raise ValueError(f"videos {sorted(set(marks) - set(rows))} lie outside rows {rows.start}..{rows.stop - 1}")
        sl = slice(rows.start, rows.stop)
        status, errors = self.root["videos/status"][sl], self.root["videos/error"][sl]
        for v, (state, error) in marks.items():
            status[v - rows.start], errors[v - rows.start] = state, error
        self.root["videos/error"][sl] = np.asarray(errors, dtype=object)
        self.root["videos/status"][sl] = np.asarray(status, dtype=object)

    def set_status(self, videos: Sequence[int], status: str, error: str = "") -> None:
        """Mark videos with one status and reason (e.g. for recomputation by --resume)."""
        self.mark({int(v): (status, error) for v in videos})

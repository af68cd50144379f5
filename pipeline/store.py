"""The Zarr v3 cache: layout, creation, and the commit protocol. It knows nothing of what masks mean.

Layout (a public contract, documented in the README):

    attrs            format_version, method, params, params_hash, size, clip_len, source_root, tool_version, layout
    videos/path      (V,)  str     path relative to the source root
    videos/label     (V,)  str     class name
    videos/n_frames  (V,)  int32   frames decoded (probed estimate until done)
    videos/fps       (V,)  float32
    videos/height    (V,)  int32   source resolution
    videos/width     (V,)  int32
    videos/bytes     (V,)  int64   source file size at build time
    videos/mtime     (V,)  float64 source modification time at build time (0 when the store has none)
    videos/first_clip(V,)  int64   index of the video's first clip
    videos/n_clips   (V,)  int32
    videos/status    (V,)  str     pending | done | failed
    videos/error     (V,)  str     why it failed, empty otherwise
    clips/video      (N,)  int32   index into videos; -1 for padding slots that hold no clip
    clips/frames     (N,T) int32   source frame numbers
    clips/checksum   (N,)  uint32  CRC32 of the clip's mask bytes followed by its plate bytes
    masks            (N,T,h,w) uint8  soft foreground probability x 255
    plates           (N,h,w,3) uint8  RGB background plate (JPEG quality 90 per chunk, codec "fame.jpeg")

Videos are cut into groups of `videos_per_group`; each group's clips start on a shard boundary and fill whole shards
(padding slots at the end), so one writer owns every shard it touches, in every array. A group is committed by
writing its clips first and its videos' status last: a clip is readable only once its video says `done`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import zlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.sync import sync

from pipeline.codecs import JpegCodec, jpeg_roundtrip
from pipeline.params import FORMAT_VERSION, BuildParams

TOOL_VERSION = "0.1.0"
PLATE_QUALITY = 90  # plates are JPEG (see pipeline.codecs); masks are lossless
# Masks: zstd level 5 over the whole chunk as one Blosc block. On real masks that is within 2% of level 7's size at
# less than half its time; level 3 is faster again but 11% larger.
MASK_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.noshuffle, blocksize=1 << 22)
PENDING, DONE, FAILED = "pending", "done", "failed"
VIDEO_FIELDS: dict[str, Any] = {
    "path": str,
    "label": str,
    "n_frames": np.int32,
    "fps": np.float32,
    "height": np.int32,
    "width": np.int32,
    "bytes": np.int64,
    "mtime": np.float64,
    "first_clip": np.int64,
    "n_clips": np.int32,
    "status": str,
    "error": str,
}


class CacheError(Exception):
    """A cache that cannot be used as asked, with the path and the reason."""


def clip_checksum(mask: np.ndarray, plate: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(plate).tobytes(), zlib.crc32(np.ascontiguousarray(mask).tobytes()))


@dataclass(frozen=True)
class Group:
    """One writer's share: a run of videos and the whole shards that hold their clips."""

    index: int
    videos: range
    clips: range


def plan_layout(clip_counts: Sequence[int], videos_per_group: int, clips_per_shard: int) -> tuple[np.ndarray, int]:
    """First clip of each video and the total clip slots N, with every group starting on a shard boundary."""
    first = np.zeros(len(clip_counts), dtype=np.int64)
    cursor = 0
    for start in range(0, len(clip_counts), videos_per_group):
        cursor = -(-cursor // clips_per_shard) * clips_per_shard
        for v in range(start, min(start + videos_per_group, len(clip_counts))):
            first[v] = cursor
            cursor += int(clip_counts[v])
    total = -(-cursor // clips_per_shard) * clips_per_shard
    return first, max(total, clips_per_shard)


def together(*steps: Awaitable[Any]) -> list[Any]:
    """Await Zarr coroutines side by side on Zarr's event loop and return their results in order.

    A cache has many small arrays (the video table alone has twelve); one at a time, each read or write waits for
    its own metadata and chunk I/O. Overlapped, a table costs about one round trip: a few milliseconds locally,
    far more on an object store."""

    async def gather() -> list[Any]:
        return list(await asyncio.gather(*steps))

    return sync(gather())


async def _write(group: zarr.AsyncGroup, name: str, selection: Any, values: np.ndarray) -> None:
    await (await group.getitem(name)).setitem(selection, values)


async def _read(group: zarr.AsyncGroup, name: str) -> np.ndarray:
    return await (await group.getitem(name)).getitem(slice(None))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Cache:
    """An open cache. Reads are cheap views; writes follow the group protocol above."""

    def __init__(self, group: zarr.Group, url: str) -> None:
        self.root = group
        self.url = url

    # ---- opening and creating -------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, mode: str = "r") -> Cache:
        try:
            group = zarr.open_group(url, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise CacheError(f"{url}: no cache here (not a Zarr group)") from exc
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
    ) -> Cache:
        """Make an empty cache: attrs, the video table, the clip table, and empty mask/plate arrays."""
        n_videos = len(clip_counts)
        if n_videos == 0:
            raise CacheError(f"{url}: no videos to put in the cache")
        if clips_per_shard is None:
            per_video = params.clips_per_video or 8
            clips_per_shard = max(1, videos_per_group * per_video)
        first, n_clips = plan_layout(clip_counts, videos_per_group, clips_per_shard)
        h, w = params.size
        t = params.clip_len
        group = zarr.open_group(url, mode="w")
        group.attrs.update(
            {
                "format_version": FORMAT_VERSION,
                "method": params.method,
                "params": params.to_dict(),
                "params_hash": params.params_hash(),
                "size": [h, w],
                "clip_len": t,
                "source_root": source_root,
                "tool_version": TOOL_VERSION,
                "created": _now(),
                "layout": {"videos_per_group": videos_per_group, "clips_per_shard": clips_per_shard},
            }
        )
        table = dict(video_table)
        table["first_clip"] = first
        table["n_clips"] = np.asarray(clip_counts, dtype=np.int32)
        table.setdefault("status", np.full(n_videos, PENDING, dtype=object))
        table.setdefault("error", np.full(n_videos, "", dtype=object))
        clip_video = np.full(n_clips, -1, dtype=np.int32)
        frames = np.zeros((n_clips, t), dtype=np.int32)
        for v in range(n_videos):
            start, count = int(first[v]), int(clip_counts[v])
            clip_video[start : start + count] = v
            if count:
                frames[start : start + count] = clip_frames[v]
        videos = group.create_group("videos")._async_group
        clips = group.create_group("clips")._async_group
        root = group._async_group

        async def column(name: str, dtype: Any) -> None:
            values = table.get(name)
            values = np.zeros(n_videos, dtype=dtype) if values is None else values
            arr = await videos.create_array(name, shape=(n_videos,), chunks=(videos_per_group,), dtype=dtype)
            await arr.setitem(slice(None), np.asarray(values, dtype=object if dtype is str else dtype))

        async def clip_array(name: str, values: np.ndarray) -> None:
            chunks = (clips_per_shard, *values.shape[1:])
            arr = await clips.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype)
            await arr.setitem(slice(None), values)

        together(
            *(column(name, dtype) for name, dtype in VIDEO_FIELDS.items()),
            clip_array("video", clip_video),
            clip_array("frames", frames),
            clips.create_array("checksum", shape=(n_clips,), chunks=(clips_per_shard,), dtype=np.uint32, fill_value=0),
            root.create_array(
                "masks",
                shape=(n_clips, t, h, w),
                chunks=(1, t, h, w),
                shards=(clips_per_shard, t, h, w),
                dtype=np.uint8,
                compressors=MASK_COMPRESSOR,
                fill_value=0,
            ),
        )
        sync(  # last: a cache whose plates array exists was created in full (see build._complete)
            root.create_array(
                "plates",
                shape=(n_clips, h, w, 3),
                chunks=(1, h, w, 3),
                shards=(clips_per_shard, h, w, 3),
                dtype=np.uint8,
                serializer=JpegCodec(quality=PLATE_QUALITY),
                compressors=None,
                fill_value=0,
            ),
        )
        return cls(group, url)

    # ---- metadata ---------------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

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

    def videos(self, field: str) -> np.ndarray:
        """One column of the video table."""
        return self.root[f"videos/{field}"][:]

    def video_table(self) -> dict[str, np.ndarray]:
        """Every column of the video table, read side by side."""
        videos = self.root["videos"]._async_group
        return dict(zip(VIDEO_FIELDS, together(*(_read(videos, name) for name in VIDEO_FIELDS)), strict=True))

    def groups(self) -> list[Group]:
        """The writer groups, recomputed from the layout attrs and the video table."""
        layout = self.attrs["layout"]
        per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
        first = self.videos("first_clip")
        n_videos, n_slots = len(first), self.n_slots
        out = []
        for g, start in enumerate(range(0, n_videos, per_group)):
            stop = min(start + per_group, n_videos)
            clip_start = int(first[start])
            clip_stop = int(first[stop]) if stop < n_videos else n_slots
            clip_stop = -(-clip_stop // per_shard) * per_shard if stop == n_videos else clip_stop
            out.append(Group(g, range(start, stop), range(clip_start, clip_stop)))
        return out

    def clip_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(clips/video, clips/frames) for all slots."""
        return self.root["clips/video"][:], self.root["clips/frames"][:]

    def readable_clips(self) -> np.ndarray:
        """Indices of clips whose video is done: the only ones a reader may use."""
        clip_video = self.root["clips/video"][:]
        done = self.videos("status") == DONE
        ok = clip_video >= 0
        ok[ok] = done[clip_video[ok]]
        return np.flatnonzero(ok)

    # ---- clip data --------------------------------------------------------------------------------------------
    def mask(self, clip: int) -> np.ndarray:
        return self.root["masks"][clip]

    def plate(self, clip: int) -> np.ndarray:
        return self.root["plates"][clip]

    def check_clip(self, clip: int) -> bool:
        """Whether the stored checksum matches the clip's bytes."""
        stored = int(self.root["clips/checksum"][clip])
        return stored == clip_checksum(self.mask(clip), self.plate(clip))

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
        holds full columns for the group's videos and must include 'status' and 'error'.
        """
        sl = slice(group.clips.start, group.clips.stop)
        stored = [jpeg_roundtrip(p[None], PLATE_QUALITY)[0] for p in plates]  # what a reader gets back (lossy)
        checksums = np.array([clip_checksum(m, p) for m, p in zip(masks, stored, strict=True)], dtype=np.uint32)
        root = self.root._async_group
        together(
            _write(root, "masks", sl, masks),
            _write(root, "plates", sl, plates),
            _write(root, "clips/frames", sl, frames),
            _write(root, "clips/checksum", sl, checksums),
        )
        vs = slice(group.videos.start, group.videos.stop)
        columns = {name: v for name, v in video_updates.items() if name not in ("status", "error")}
        together(*(_write(root, f"videos/{k}", vs, np.asarray(v, dtype=VIDEO_FIELDS[k])) for k, v in columns.items()))
        self.root["videos/error"][vs] = np.asarray(video_updates["error"], dtype=object)
        self.root["videos/status"][vs] = np.asarray(video_updates["status"], dtype=object)

    def set_status(self, videos: Sequence[int], status: str, error: str = "") -> None:
        """Mark videos (e.g. for recomputation by --resume). Callers must own the videos' groups."""
        col_s = self.root["videos/status"]
        col_e = self.root["videos/error"]
        s, e = col_s[:], col_e[:]
        for v in videos:
            s[v], e[v] = status, error
        col_e[:] = e
        col_s[:] = s

"""Every node of a cache and the clip slots of each video, defined once: caches are created from here, and their
metadata checked and repaired here.

A node's metadata (its `zarr.json`) is a pure function of a few numbers: videos, clip slots, clip length, frame size
and the layout (videos per group, clips per shard). So a metadata file that was deleted, truncated or edited (a fill
value changed, a shape cut) is told apart from a sound one by comparing it with the document these numbers give, and
repaired by writing that document back: the data chunks beside it are untouched, so nothing computed is lost.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from pipeline.cache.codecs import JpegCodec

PLATE_QUALITY = 90  # plates are JPEG (see pipeline.cache.codecs); masks are lossless
# Masks: zstd level 5 over the whole chunk as one Blosc block. On real masks that is within 2% of level 7's size at
# less than half its time; level 3 is faster again but 11% larger.
MASK_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.noshuffle, blocksize=1 << 22)
VIDEO_FIELDS: dict[str, Any] = {
    "path": str,
    "label": str,
    "n_frames": np.int32,
    "fps": np.float32,
    "height": np.int32,
    "width": np.int32,
    "bytes": np.int64,
    "mtime": np.float64,
    "fingerprint": str,  # the source file's content fingerprint (pipeline.sources.fingerprint_source)
    "first_clip": np.int64,
    "n_clips": np.int32,
    "frame_index": str,  # packet timestamps and keyframes, for seeking (pipeline.video.FrameIndex.to_text)
    "status": str,
    "error": str,
}
GROUPS = ("videos", "clips")
# The fields of a node's metadata that decide how its bytes are read; anything else (attributes) may differ.
CHECKED_FIELDS = (
    "zarr_format",
    "node_type",
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
)
CLIP_ARRAYS = ("clips/video", "clips/frames", "clips/checksum", "masks", "plates")  # one row per clip slot
NODES = (*GROUPS, *(f"videos/{name}" for name in VIDEO_FIELDS), *CLIP_ARRAYS)  # every node but the root
# Nodes added within a format: a cache built before one has no file of it and loads as before (without the frame
# index, the loader demuxes each video to find where to seek). One with data but no metadata is damaged, not absent.
# Without the fingerprint, the source videos are checked by size alone (see pipeline.cache.fingerprint).
OPTIONAL_NODES = ("videos/frame_index", "videos/fingerprint")
GROWTH_PAUSE = 0.25  # seconds before a second look at arrays whose lengths disagree (see metadata_summary)


class MetadataError(Exception):
    """Metadata that cannot even be checked (the root's attributes are gone), with what is missing."""


@dataclass(frozen=True)
class CacheShape:
    """The numbers every node's metadata follows from."""

    n_videos: int
    n_slots: int
    clip_len: int
    size: tuple[int, int]
    videos_per_group: int
    clips_per_shard: int


def assign_clip_slots(
    clip_counts: Sequence[int],
    videos_per_group: int,
    clips_per_shard: int,
    first_video: int = 0,
    first_slot: int = 0,
) -> tuple[np.ndarray, int]:
    """First clip slot of each video and the total slots N. Every writer group starts on a shard boundary, so no two
    groups share a shard; N is a whole number of shards (at least one).

    `first_video`, `first_slot` (a shard boundary): where an append's videos go after a cache's N slots. Its groups
    end where the video table's chunks do (every `videos_per_group` rows), so the first may be short."""
    first = np.zeros(len(clip_counts), dtype=np.int64)
    cursor = first_slot
    for v in range(len(clip_counts)):
        if v == 0 or (first_video + v) % videos_per_group == 0:
            cursor = -(-cursor // clips_per_shard) * clips_per_shard
        first[v] = cursor
        cursor += int(clip_counts[v])
    return first, whole_shards(cursor, clips_per_shard)


def whole_shards(clip_end: int, clips_per_shard: int) -> int:
    """Clip slots of a cache whose last clip ends at slot `clip_end`: whole shards, at least one."""
    return max(-(-clip_end // clips_per_shard) * clips_per_shard, clips_per_shard)


def group_bounds(n_videos: int, videos_per_group: int, segments: Sequence[int] = (0,)) -> list[range]:
    """The writer groups' video ranges: a run of rows within one chunk of the video table (`videos_per_group` rows)
    and within one segment (the videos a build or an append added, starting at each of `segments`)."""
    cuts = sorted({0, n_videos, *range(0, n_videos, videos_per_group), *(s for s in segments if 0 < s < n_videos)})
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


def array_specs(shape: CacheShape) -> dict[str, dict[str, Any]]:
    """`create_array` arguments of every array, by node path, in creation order (plates last: a cache whose plates
    array exists was created in full)."""
    n, t, (h, w) = shape.n_slots, shape.clip_len, shape.size
    per_shard = shape.clips_per_shard
    specs: dict[str, dict[str, Any]] = {
        f"videos/{name}": {"shape": (shape.n_videos,), "chunks": (shape.videos_per_group,), "dtype": dtype}
        for name, dtype in VIDEO_FIELDS.items()
    }
    specs["clips/video"] = {"shape": (n,), "chunks": (per_shard,), "dtype": np.int32}
    specs["clips/frames"] = {"shape": (n, t), "chunks": (per_shard, t), "dtype": np.int32}
    specs["clips/checksum"] = {"shape": (n,), "chunks": (per_shard,), "dtype": np.uint32, "fill_value": 0}
    specs["masks"] = {
        "shape": (n, t, h, w),
        "chunks": (1, t, h, w),
        "shards": (per_shard, t, h, w),
        "dtype": np.uint8,
        "compressors": MASK_COMPRESSOR,
        "fill_value": 0,
    }
    specs["plates"] = {
        "shape": (n, h, w, 3),
        "chunks": (1, h, w, 3),
        "shards": (per_shard, h, w, 3),
        "dtype": np.uint8,
        "serializer": JpegCodec(quality=PLATE_QUALITY),
        "compressors": None,
        "fill_value": 0,
    }
    return specs


@functools.lru_cache(maxsize=8)
def expected_documents(shape: CacheShape) -> dict[str, bytes]:
    """The `zarr.json` bytes this version writes for every node but the root, by node path ('' suffix-free)."""
    with tempfile.TemporaryDirectory() as folder:
        root = zarr.open_group(folder, mode="w")
        for name in GROUPS:
            root.create_group(name)
        for name, spec in array_specs(shape).items():
            root.create_array(name, **spec)
        fs = fsspec.filesystem("file")
        return {name: fs.cat_file(f"{folder}/{name}/zarr.json") for name in NODES}


def _fs_root(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def read_document(url: str, node: str) -> tuple[dict | None, str]:
    """(parsed zarr.json of `node`, '') or (None, why it cannot be read)."""
    return _read_document(*_fs_root(url), node)


def _read_document(fs: fsspec.AbstractFileSystem, root: str, node: str) -> tuple[dict | None, str]:
    try:
        data = fs.cat_file(f"{root}/{node}/zarr.json")
    except FileNotFoundError:
        return None, "missing"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc})"
    return (doc, "") if isinstance(doc, dict) else (None, "not a JSON object")


def _majority(values: list[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


def nodes_in(url: str) -> tuple[str, ...]:
    """Every node but the root that the cache at `url` has: all of NODES, less an optional node it was built
    without (no file of it at all)."""
    fs, root = _fs_root(url)
    return tuple(node for node in NODES if node not in OPTIONAL_NODES or fs.exists(f"{root}/{node}"))


def _read_documents(url: str) -> dict[str, tuple[dict | None, str]]:
    """Every node's (parsed zarr.json, why not), each file read once."""
    fs, root = _fs_root(url)
    return {node: _read_document(fs, root, node) for node in nodes_in(url)}


def shape_of(
    url: str, attrs: dict[str, Any], documents: dict[str, tuple[dict | None, str]] | None = None
) -> CacheShape:
    """The cache's numbers, from the root's attributes and the lengths most of its arrays agree on (`documents`:
    the nodes' metadata as already read, if it was)."""
    documents = _read_documents(url) if documents is None else documents
    try:
        layout = attrs["layout"]
        h, w = attrs["size"]
        clip_len = int(attrs["clip_len"])
        per_group, per_shard = int(layout["videos_per_group"]), int(layout["clips_per_shard"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"{url}: the root attributes lack {exc} (zarr.json of the cache itself); rebuild") from exc
    lengths: dict[str, list[int]] = {"videos": [], "slots": []}
    for node, (doc, _) in documents.items():
        if node not in GROUPS and doc and isinstance(doc.get("shape"), list) and doc["shape"]:
            lengths["slots" if node in CLIP_ARRAYS else "videos"].append(int(doc["shape"][0]))
    n_videos, n_slots = _majority(lengths["videos"]), _majority(lengths["slots"])
    if n_videos is None or n_slots is None:
        raise MetadataError(f"{url}: no readable array says how many videos and clip slots the cache has; rebuild")
    return CacheShape(n_videos, n_slots, clip_len, (int(h), int(w)), per_group, per_shard)


@dataclass(frozen=True)
class MetadataProblem:
    node: str
    detail: str
    fields: tuple[str, ...] = ()  # the checked fields that differ ('' for a file that cannot be read)

    @property
    def file(self) -> str:
        return f"{self.node}/zarr.json"

    def __str__(self) -> str:
        return f"{self.file}: {self.detail}"


def check_metadata(url: str, attrs: dict[str, Any]) -> list[MetadataProblem]:
    """Every node the cache has (`nodes_in`) whose metadata file is missing, unreadable or not what this cache's
    numbers give."""
    documents = _read_documents(url)
    expected = expected_documents(shape_of(url, attrs, documents))
    problems = []
    for node, (have, why) in documents.items():
        want_bytes = expected[node]
        if have is None:
            problems.append(MetadataProblem(node, why))
            continue
        want = json.loads(want_bytes)
        wrong = [key for key in CHECKED_FIELDS if have.get(key) != want.get(key)]
        if wrong:
            shown = ", ".join(f"{key} is {have.get(key)!r}, expected {want.get(key)!r}" for key in wrong[:2])
            problems.append(MetadataProblem(node, shown, tuple(wrong)))
    return problems


def _growing(problems: list[MetadataProblem]) -> bool:
    """Whether every problem is an array's length alone: what a reader sees while an append grows the arrays, one
    metadata file at a time (see `Cache.append`)."""
    return bool(problems) and all(p.fields == ("shape",) for p in problems)


def metadata_summary(url: str, attrs: dict[str, Any]) -> str | None:
    """None when the metadata is sound; else its first problem and how many more, for a refusal to name. Lengths
    alone that disagree are looked at once more after GROWTH_PAUSE seconds: an append may be growing the arrays."""
    try:
        found = check_metadata(url, attrs)
        if _growing(found):
            time.sleep(GROWTH_PAUSE)
            found = check_metadata(url, attrs)
        problems = [str(p) for p in found]
    except MetadataError as exc:
        problems = [str(exc)]
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def rewrite_metadata(url: str, attrs: dict[str, Any], nodes: list[str]) -> None:
    """Write the expected metadata of `nodes` back (their data chunks are untouched)."""
    expected = expected_documents(shape_of(url, attrs))
    fs, root = _fs_root(url)
    for node in nodes:
        fs.pipe_file(f"{root}/{node}/zarr.json", expected[node])


def has_computed_data(url: str) -> bool:
    """Whether any mask or plate shard was ever written (the cache holds work a re-plan would throw away)."""
    fs, root = _fs_root(url)
    return any(fs.exists(f"{root}/{name}/c") for name in ("masks", "plates"))

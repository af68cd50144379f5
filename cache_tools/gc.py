"""`fame-cache gc`: drop what a cache should not keep and compact it.

Dropped: videos not `done` (failed, pending, half written), videos whose source is gone, and videos with a clip that
fails its checksum (their bytes are not trusted, so they are not copied under a fresh checksum). The kept videos are
copied, shard by shard, into a new cache beside the old one with the same parameters and layout; then the new one
replaces the old (two renames on a local disk; a copy then delete on object stores, which have no rename). The
folders beside it carry a suffix made unique for this run (`<cache>.gc-tmp-<id>`, `<cache>.gc-old-<id>`): gc deletes
only what it made, never a folder that happens to have such a name.

gc reads the whole video table and keeps only what it finds sound, so it refuses a cache whose table is not all part
of the cache (`refuse_unfinished`): one a Ray build is still planning, or was stopped while planning (the rows
without a status are not planned yet; dropped, the plan would be lost: `--resume` finishes it), and one holding an
append stopped before it committed (as `verify` checks nothing past such an append, gc decides nothing past it:
`verify --fix` removes it, then gc runs on the cache the append began from).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import fsspec
import numpy as np
from tqdm import tqdm

from cache_tools.api import disk_bytes
from cache_tools.find import cache_sources
from cache_tools.verify import (
    Problem,
    _clips,
    _sources,
    _statuses,
    _unreadable_table,
    index_problem,
    plan_in_progress,
    resume_command,
)
from pipeline.cache import DONE, Cache, CacheError
from pipeline.cache.unfinished import find_unfinished_append

PLATE_REENCODE_TOLERANCE = 1.0  # mean grey levels a JPEG plate may move when copied (decoded and encoded again)


@dataclass
class GcReport:
    url: str
    kept: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    bytes_before: int = 0
    bytes_after: int = 0
    dry_run: bool = True

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "kept": self.kept,
            "dropped": [{"path": p, "why": w} for p, w in self.dropped],
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_freed,
            "dry_run": self.dry_run,
        }


def videos_to_keep(cache: Cache, progress: bool = False) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(videos to keep, [(video, why dropped)]): dropped are the videos not done and those verify's own checks
    (status, clip table, source, checksums) find at fault, each with the first reason found."""
    status = cache.videos("status")
    why: dict[int, str] = {int(v): f"status {status[v]}" for v in np.flatnonzero(status != DONE)}
    clip_video, frames, bad_chunks = cache.read_clip_table()
    stored = cache.root["clips/checksum"][:]
    found: list[Problem] = (
        _statuses(status, cache.videos("path"))
        + _unreadable_table(cache, bad_chunks)
        + _sources(cache, progress)
        + _clips(cache, cache.readable_clips(clip_video), stored, clip_video, progress, frames)
    )
    for p in found:
        if p.video is not None:
            why.setdefault(p.video, f"{p.kind}: {p.detail}")
    keep = np.array([v for v in range(cache.n_videos) if v not in why], dtype=np.int64)
    return keep, sorted(why.items())


def _trusted_indexes(texts: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """The stored frame indexes to copy: one verify does not trust becomes '' (the loader demuxes that video), so a
    damaged index costs a demux, not the video."""
    sound = [index_problem(str(t), int(n)) is None for t, n in zip(texts, n_frames, strict=True)]
    return np.where(sound, texts, "").astype(object)


def kept_sources(records: list[dict], keep: np.ndarray, n_videos: int) -> list[dict]:
    """The cache's source records after gc keeps only `keep` (old video indices, ascending): each record's videos
    are those of its range [first_video, next record's first_video) that were kept, renumbered; a record left with
    none is dropped, so `fame-cache ls` still says where the kept videos came from."""
    starts = [int(r.get("first_video", 0)) for r in records] + [n_videos]
    out = []
    for record, lo, hi in zip(records, starts, starts[1:], strict=False):
        kept = int(((keep >= lo) & (keep < hi)).sum())
        if kept:
            out.append({**record, "videos": kept, "first_video": int((keep < lo).sum())})
    return out


def _copy(cache: Cache, keep: np.ndarray, url: str, progress: bool) -> Cache:
    """A new cache at url holding only the kept videos, with their clips, copied group by group."""
    table = {name: values[keep] for name, values in cache.video_table().items()}
    if "frame_index" in table:
        table["frame_index"] = _trusted_indexes(table["frame_index"], table["n_frames"])
    counts = table["n_clips"].astype(int)
    _, frames = cache.clip_table()
    first = table["first_clip"].astype(int)
    frame_lists = [frames[f : f + n] for f, n in zip(first, counts, strict=True)]
    layout = cache.attrs["layout"]
    new = Cache.create(
        url,
        cache.params,
        cache.source_root,
        {k: v for k, v in table.items() if k not in ("first_clip", "n_clips")},
        counts.tolist(),
        frame_lists,
        videos_per_group=int(layout["videos_per_group"]),
        clips_per_shard=int(layout["clips_per_shard"]),
    )
    for key in ("created", "tool_version"):
        new.root.attrs[key] = cache.attrs.get(key, "")
    new.root.attrs["sources"] = kept_sources(cache_sources(cache), keep, cache.n_videos)
    new_first = new.videos("first_clip")
    h, w = cache.size
    for group in tqdm(new.groups(), desc="gc copy", unit="group", disable=not progress, leave=False):
        n = len(group.clips)
        masks = np.zeros((n, cache.clip_len, h, w), np.uint8)
        plates = np.zeros((n, h, w, 3), np.uint8)
        out_frames = new.root["clips/frames"][group.clips.start : group.clips.stop]
        for v in group.videos:
            old_lo, cnt = int(first[v]), int(counts[v])
            lo = int(new_first[v]) - group.clips.start
            masks[lo : lo + cnt] = cache.root["masks"][old_lo : old_lo + cnt]
            plates[lo : lo + cnt] = cache.root["plates"][old_lo : old_lo + cnt]
        status = [str(s) for s in table["status"][group.videos.start : group.videos.stop]]
        errors = [str(e) for e in table["error"][group.videos.start : group.videos.stop]]
        new.write_group(group, masks, plates, out_frames, {"status": status, "error": errors})
    # The copy must carry what was verified: masks (lossless) byte for byte; plates are JPEG, and re-encoding a
    # decoded JPEG may move a pixel by a level or two, so they must agree within that.
    for i in range(len(keep)):
        a, b, n = int(first[i]), int(new_first[i]), int(counts[i])
        same_masks = np.array_equal(cache.root["masks"][a : a + n], new.root["masks"][b : b + n])
        plate_error = np.abs(
            cache.root["plates"][a : a + n].astype(np.int16) - new.root["plates"][b : b + n].astype(np.int16)
        ).mean()
        if not same_masks or plate_error > PLATE_REENCODE_TOLERANCE:
            raise OSError(f"{url}: copy of video {table['path'][i]} does not match its source")
    return new


def _unused_name(fs: fsspec.AbstractFileSystem, inner: str, kind: str) -> str:
    """`<inner>.gc-<kind>-<random id>`, checked to be free: the only names gc deletes are ones it made this run."""
    name = f"{inner.rstrip('/')}.gc-{kind}-{uuid.uuid4().hex[:12]}"
    if fs.exists(name):
        raise OSError(f"{name}: exists already; gc will not write over it")
    return name


def _swap(url: str, tmp: str) -> None:
    """Put tmp where url is: rename url away, rename tmp in (or the old one back, if that fails), delete the old."""
    fs, inner = fsspec.core.url_to_fs(url)
    _, tmp_inner = fsspec.core.url_to_fs(tmp)
    old = _unused_name(fs, inner, "old")
    fs.mv(inner, old, recursive=True)
    try:
        fs.mv(tmp_inner, inner, recursive=True)
    except BaseException:
        fs.mv(old, inner, recursive=True)
        raise
    fs.rm(old, recursive=True)


def refuse_unfinished(cache: Cache) -> None:
    """Raise CacheError when the video table holds rows that are not yet part of the cache: a plan not finished
    (rows without a status are not planned yet, and gc would drop them as not done, losing the plan) or an append
    stopped before it committed (verify reports it and checks nothing past it; gc would take its rows for failures)."""
    plan = plan_in_progress(cache)
    if plan is not None:
        planned = "" if plan.planned is None else f" ({plan.planned} of {plan.videos} videos planned)"
        raise CacheError(
            f"{cache.url}: still being planned by a Ray build, or stopped while planning{planned}: its rows without a "
            "status are not planned yet, and gc would drop them and lose the plan. Once no build is running, "
            f"`{resume_command(cache.url)}` finishes it; then run gc"
        )
    found = find_unfinished_append(cache)
    if found is not None:
        raise CacheError(
            f"{cache.url}: {found}. gc works on a committed cache only: once no build is running, "
            f"`fame-cache verify --fix {cache.url}` removes the unfinished append; then run gc (and that append again)"
        )


def gc_cache(url: str, dry_run: bool = True, progress: bool = False) -> GcReport:
    """Decide (and unless dry_run, do) the clean-up of the cache at url. Refused (CacheError) for a cache still
    being planned or holding an unfinished append (`refuse_unfinished`)."""
    cache = Cache.open(url, mode="r")
    refuse_unfinished(cache)
    keep, dropped = videos_to_keep(cache, progress)
    paths = cache.videos("path")
    report = GcReport(url, kept=len(keep), dropped=[(str(paths[v]), why) for v, why in dropped], dry_run=dry_run)
    report.bytes_before = disk_bytes(url)
    if dry_run:
        report.bytes_after = report.bytes_before
        return report
    if len(keep) == 0:
        raise ValueError(f"{url}: gc would drop every video ({len(dropped)}); delete the cache instead")
    fs, inner = fsspec.core.url_to_fs(url)
    tmp_inner = _unused_name(fs, inner, "tmp")
    tmp = url.rstrip("/") + tmp_inner[len(inner.rstrip("/")) :]
    try:
        _copy(cache, keep, tmp, progress)
        _swap(url, tmp)
    except BaseException:
        if fs.exists(tmp_inner):  # made by this run, under a name no one else has
            fs.rm(tmp_inner, recursive=True)
        raise
    report.bytes_after = disk_bytes(url)
    return report

"""`fame-cache verify`: re-check the metadata, every committed clip and the source files; `--fix` repairs.

Metadata first: every node's `zarr.json` must be the document the cache's numbers give (`pipeline.cache.layout`), or the
reads that follow would be misread (a fill value edited to 255 turns a missing shard into a full mask). Then the
status column (only pending, done, failed), the clip table chunk by chunk, and every committed clip: a deleted shard
reads back as the fill value and flipped bytes either fail to decode or change the data, so the stored CRC32 (mask,
plate, frame numbers) catches both. Each done video's source is compared with the file it was built from by size
and content fingerprint (`pipeline.cache.fingerprint`; by size alone in caches built before the fingerprint), never by
modification time, so a `touch` or a copy is the same video; and its path must stay inside the source root.

An append stopped before it committed comes first: its rows have no status and its arrays may be half grown, so
the checks after it would read them as damage. Fixing removes it (`pipeline.cache.unfinished`), and the next
`--append` adds its videos again.

A cache a Ray build is still planning, or was stopped while planning (layout `planning`), has rows without a status
by design: they are not planned yet. That is not damage: only the planned rows are checked, nothing is marked for
them, and the report says how far the plan got (`plan_in_progress`); `--resume` plans on from there.

Fixing rewrites damaged metadata files from their definition (the data chunks are untouched), rebuilds the clip-to-
video column from the video table (in a cache still being planned, from the planned rows alone), and marks the videos
behind every other problem `pending` (status and error columns, in one go), so a later `fame-pipeline build SRC --out
CACHE --resume` recomputes exactly their groups, writing their shards whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from pipeline.cache import DONE, PENDING, STATUSES, Cache
from pipeline.cache.fingerprint import source_changes
from pipeline.cache.layout import MetadataError, check_metadata, rewrite_metadata
from pipeline.cache.planning import is_planning, plan_state
from pipeline.cache.unfinished import UnfinishedAppend, drop_unfinished_append, find_unfinished_append
from pipeline.signals import deferred
from pipeline.video import NO_INDEX, FrameIndex

APPEND = "append"  # the problem kind of an append stopped before it committed


@dataclass(frozen=True)
class Problem:
    """One thing wrong. kind: append (one stopped before it committed), metadata, structure, status, clip-table,
    layout, unreadable, checksum, frames, frame-index, source-missing, source-changed, source-escape. Metadata
    problems name the file in `path`."""

    kind: str
    detail: str
    video: int | None = None
    path: str | None = None
    clip: int | None = None

    def __str__(self) -> str:
        where = self.path or ("cache" if self.video is None else f"video {self.video}")
        clip = f" clip {self.clip}" if self.clip is not None else ""
        return f"{where}{clip}: {self.kind}: {self.detail}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _metadata(cache: Cache) -> list[Problem]:
    """Metadata files that are missing, unreadable or not what the cache's numbers give."""
    try:
        found = check_metadata(cache.url, cache.attrs)
    except MetadataError as exc:
        return [Problem("structure", str(exc))]
    return [Problem("metadata", p.detail, path=p.file) for p in found]


def _statuses(status: np.ndarray, paths: np.ndarray) -> list[Problem]:
    """Status values other than pending, done and failed (readers would silently skip those videos)."""
    return [
        Problem("status", f"status {str(status[v])!r} is not one of {', '.join(STATUSES)}", int(v), str(paths[v]))
        for v, value in enumerate(status)
        if str(value) not in STATUSES
    ]


def _unreadable_table(cache: Cache, bad: list[tuple[range, str]]) -> list[Problem]:
    """A problem for every done video with a clip in an unreadable clip-table chunk."""
    status, paths = cache.videos("status"), cache.videos("path")
    first, count = cache.videos("first_clip"), cache.videos("n_clips")
    problems = []
    for slots, why in bad:
        for v in np.flatnonzero((status == DONE) & (first < slots.stop) & (first + count > slots.start)):
            detail = f"clip table chunk {slots.start}..{slots.stop - 1} cannot be read ({why})"
            problems.append(Problem("clip-table", detail, int(v), str(paths[v])))
    return problems


def _layout(cache: Cache, clip_video: np.ndarray, frames: np.ndarray) -> list[Problem]:
    """Each done video's clip slots point back to it and its frame numbers lie inside the video, increasing."""
    problems = []
    status, paths = cache.videos("status"), cache.videos("path")
    first, count, n_frames = cache.videos("first_clip"), cache.videos("n_clips"), cache.videos("n_frames")
    for v in np.flatnonzero(status == DONE):
        lo, hi = int(first[v]), int(first[v]) + int(count[v])
        path = str(paths[v])
        if lo < 0 or hi > len(clip_video):
            problems.append(Problem("layout", f"clips {lo}..{hi} outside the {len(clip_video)} slots", v, path))
            continue
        if (clip_video[lo:hi] != v).any():
            problems.append(Problem("layout", f"clip slots {lo}..{hi} do not all belong to this video", v, path))
        f = frames[lo:hi]
        limit = int(n_frames[v]) if int(n_frames[v]) > 0 else np.iinfo(np.int32).max  # 0: length not recorded
        bad = (f < 0).any(axis=1) | (f >= limit).any(axis=1) | (np.diff(f, axis=1) < 0).any(axis=1)
        for k in np.flatnonzero(bad):
            detail = f"frame numbers {f[k].tolist()} are not increasing within 0..{int(n_frames[v]) - 1}"
            problems.append(Problem("frames", detail, int(v), path, lo + int(k)))
    return problems


def index_problem(text: str, n_frames: int) -> str | None:
    """Why a stored frame index cannot be trusted to seek in a video of n_frames, or None when it can ('' and
    NO_INDEX say there is none: the loader demuxes the file, or decodes it from the start)."""
    if text in ("", NO_INDEX):
        return None
    try:
        index = FrameIndex.from_text(text)
    except ValueError as exc:
        return str(exc)
    if n_frames > 0 and len(index.pts) != n_frames:
        return f"frame index numbers {len(index.pts)} frames, the video decoded to {n_frames}"
    return None


def _frame_indexes(cache: Cache) -> list[Problem]:
    """Done videos whose stored frame index (where the cache has the column) is malformed or numbers another count
    of frames than the video decoded to: a loader would fall back to demuxing, a sign of damaged bytes."""
    if "frame_index" not in cache.video_fields:
        return []
    status, paths = cache.videos("status"), cache.videos("path")
    texts, n_frames = cache.videos("frame_index"), cache.videos("n_frames")
    problems = []
    for v in np.flatnonzero(status == DONE):
        why = index_problem(str(texts[v]), int(n_frames[v]))
        if why:
            problems.append(Problem("frame-index", why, int(v), str(paths[v])))
    return problems


def _read(cache: Cache, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    return cache.root["masks"][lo:hi], cache.root["plates"][lo:hi]


def _clips(
    cache: Cache,
    clips: np.ndarray,
    stored: np.ndarray,
    clip_video: np.ndarray,
    progress: bool,
    frames: np.ndarray,
) -> list[Problem]:
    """Read the readable clips shard by shard (one request per shard); a shard that fails is re-read clip by clip."""
    problems = []
    paths = cache.videos("path")
    per_shard = int(cache.root["masks"].shards[0]) if cache.root["masks"].shards else 1
    shards = np.unique(clips // per_shard)
    wanted = set(clips.tolist())
    for shard in tqdm(shards, desc="verify", unit="shard", disable=not progress, leave=False):
        lo, hi = int(shard) * per_shard, min(int(shard + 1) * per_shard, cache.n_slots)
        try:
            masks, plates = _read(cache, lo, hi)
            data: list[tuple[int, np.ndarray, np.ndarray] | tuple[int, Exception]] = [
                (c, masks[c - lo], plates[c - lo]) for c in range(lo, hi) if c in wanted
            ]
        except Exception:
            data = []
            for c in range(lo, hi):
                if c not in wanted:
                    continue
                try:
                    m, p = _read(cache, c, c + 1)
                    data.append((c, m[0], p[0]))
                except Exception as exc:
                    data.append((c, exc))
        for item in data:
            c = item[0]
            v = int(clip_video[c])
            if len(item) == 2:
                exc = item[1]
                problems.append(Problem("unreadable", f"{type(exc).__name__}: {exc}"[:200], v, str(paths[v]), c))
                continue
            got = cache.checksum(item[1], item[2], frames[c])
            if got != int(stored[c]):
                problems.append(
                    Problem("checksum", f"stored {int(stored[c]):08x}, bytes give {got:08x}", v, str(paths[v]), c)
                )
    return problems


def _sources(cache: Cache, progress: bool) -> list[Problem]:
    """Done videos whose path leads outside the source root, or whose source file vanished or is no longer the file
    the cache was built from."""
    status = cache.videos("status")
    done = tqdm(np.flatnonzero(status == DONE), desc="sources", unit="video", disable=not progress, leave=False)
    changes = source_changes(cache.source_root, cache.video_table(), done)
    return [Problem(c.kind, c.detail, c.video, c.path) for c in changes]


def resume_command(url: str) -> str:
    """The build command that finishes a cache (the videos `verify --fix` marked, or a plan stopped part way): the
    cache's own videos and options."""
    return f"fame-pipeline build --out {url} --resume"


@dataclass(frozen=True)
class PlanInProgress:
    """A cache whose plan is not finished: a Ray build is planning it, or was stopped while planning. Its first
    `planned` rows are planned (they have a status); the others are not yet, which is no damage."""

    url: str
    planned: int | None  # None: the video table cannot be read (the metadata check names the file)
    videos: int | None

    def __str__(self) -> str:
        done = (
            "how many videos are planned cannot be read"
            if self.planned is None
            else (f"{self.planned} of {self.videos} videos planned")
        )
        return (
            f"planning: {self.url} is being planned by a Ray build, or was stopped while planning: {done} (the rows "
            "without a status are not planned yet: not damage, only the planned rows are checked). Once no build is "
            f"running, `{resume_command(self.url)}` plans the rest and computes every video not done"
        )

    def to_dict(self) -> dict[str, int | None]:
        return {"planned": self.planned, "videos": self.videos}


def plan_in_progress(cache: Cache) -> PlanInProgress | None:
    """How far the plan of a cache still being planned got (see pipeline.cache.planning), or None when it is done."""
    if not is_planning(cache):
        return None
    try:
        return PlanInProgress(cache.url, cache.committed_videos(), cache.n_videos)
    except Exception:  # a video column that cannot be read: `_metadata` reports it, and --fix rewrites it
        return PlanInProgress(cache.url, None, None)


def _unfinished_append(cache: Cache) -> list[Problem]:
    """An append stopped before it committed (see pipeline.cache.unfinished), as a problem of the whole cache."""
    found = find_unfinished_append(cache)
    return [] if found is None else [Problem(APPEND, str(found))]


def verify_cache(cache: Cache, sources: bool = True, progress: bool = False) -> list[Problem]:
    """Every problem found, in the order unfinished append, metadata, status, clip table, frame indexes, clip data,
    sources. [] means the cache is sound. An unfinished append or damaged metadata stops the check there: what
    follows would read through it. In a cache still being planned, the rows not planned yet have no status, and
    only the planned ones are checked (`plan_in_progress`)."""
    problems = _unfinished_append(cache)
    if problems:
        return problems
    problems = _metadata(cache)
    if problems:
        return problems
    plan = plan_in_progress(cache)
    rows = slice(None) if plan is None else slice(plan.planned)  # the metadata check above passed: it is read
    problems = _statuses(cache.videos("status")[rows], cache.videos("path")[rows])
    clip_video, frames, bad_chunks = cache.read_clip_table()
    problems += _unreadable_table(cache, bad_chunks)
    stored = cache.root["clips/checksum"][:]
    problems += _layout(cache, clip_video, frames)
    problems += _frame_indexes(cache)
    problems += _clips(cache, cache.readable_clips(clip_video), stored, clip_video, progress, frames)
    if sources:
        problems += _sources(cache, progress)
    return problems


def repair_metadata(cache: Cache, problems: Iterable[Problem]) -> list[str]:
    """Rewrite every damaged metadata file from its definition; returns the files rewritten."""
    files = sorted({p.path for p in problems if p.kind == "metadata" and p.path})
    rewrite_metadata(cache.url, cache.attrs, [f.removesuffix("/zarr.json") for f in files])
    return files


def clip_video_of(cache: Cache) -> np.ndarray:
    """clips/video as the video table gives it (first clip and clip count of each video, the data it derives from).
    In a cache still being planned only the planned rows count, at the slots the plan gives them (`plan_state`, what
    their group's share of the plan writes to `first_clip`): a planned row whose share is not written yet reads first
    clip 0 (the fill value), and a row not planned may hold a clip count already, so either would claim the slots
    from 0 on, another video's."""
    n_slots = cache.n_slots
    if is_planning(cache):
        state, first = plan_state(cache)
        count = cache.videos("n_clips")[: state.planned]
    else:
        first, count = cache.videos("first_clip"), cache.videos("n_clips")
    clip_video = np.full(n_slots, -1, np.int32)
    for v in range(len(first)):
        clip_video[min(int(first[v]), n_slots) : min(int(first[v]) + int(count[v]), n_slots)] = v
    return clip_video


def repair_clip_video(cache: Cache) -> None:
    """Rewrite clips/video from the video table (`clip_video_of`)."""
    cache.root["clips/video"][:] = clip_video_of(cache)


@dataclass
class Repair:
    """What `verify --fix` found and did: problems as found, metadata files rewritten, videos marked pending, and
    the unfinished append removed (None when there was none)."""

    problems: list[Problem]
    rewritten: list[str]
    marked: list[int]
    dropped: UnfinishedAppend | None = None


def drop_append(cache: Cache, problems: list[Problem]) -> UnfinishedAppend | None:
    """Remove the unfinished append that `problems` report, if they report one; what was removed."""
    found = find_unfinished_append(cache) if any(p.kind == APPEND for p in problems) else None
    if found is not None:
        drop_unfinished_append(cache, found)
    return found


def verify_and_fix(url: str, sources: bool = True, progress: bool = False) -> Repair:
    """Verify; remove an unfinished append and rewrite damaged metadata, verifying again after each (each hides
    what lies behind it: metadata can hide an append too); then mark the videos behind every problem pending."""
    cache = Cache.open(url, mode="r+")
    problems = verify_cache(cache, sources, progress)
    found, rewritten, dropped = list(problems), [], None
    for _ in range(3):  # an unfinished append, then metadata, then an append the metadata hid: nothing more
        undone = drop_append(cache, problems)
        files = repair_metadata(cache, problems)
        if undone is None and not files:
            break
        dropped, rewritten = dropped or undone, rewritten + files
        cache = Cache.open(url, mode="r+")
        problems = verify_cache(cache, sources, progress)
        found += problems
    return Repair(found, rewritten, fix_cache(url, found), dropped)


def fix_cache(url: str, problems: list[Problem]) -> list[int]:
    """Mark the videos behind `problems` pending, with the reason in videos/error; returns the videos marked.

    The whole status and error columns are rewritten in one go (error first, status last), so hold the writer lock
    around it (`pipeline.cache.lock.writer_lock`, as `fame-cache verify --fix` does). Structural problems cannot be
    fixed this way: rebuild the cache.
    """
    reasons: dict[int, str] = {}
    for p in problems:
        if p.video is not None and p.video not in reasons:
            clip = f" (clip {p.clip})" if p.clip is not None else ""
            reasons[p.video] = f"verify: {p.kind}{clip}: {p.detail}"
    if not reasons:
        return []
    cache = Cache.open(url, mode="r+")
    with deferred():  # Ctrl-C or SIGTERM waits: no column is left half-written (one file per chunk)
        if any(p.kind == "clip-table" for p in problems):
            repair_clip_video(cache)
        cache.mark({v: (PENDING, reason) for v, reason in reasons.items()})
    return sorted(reasons)

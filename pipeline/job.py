"""The compute phase: one task per writer group, the same function in-process or as a Ray task (`pipeline.runners`).

A group task decodes each of its videos once (keeping only the frames its clips need), computes masks and plates per
clip, and commits the whole group with `Cache.write_group` (clips first, status last). A video that fails is recorded
with its reason and the group goes on. The output depends only on the task's inputs and the source files, so a
retried or resumed group rewrites the same bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.cache import DONE, FAILED, Cache, Group
from pipeline.masks import MaskStep
from pipeline.params import BuildParams
from pipeline.plan import clip_count, clip_frames
from pipeline.sources import join, stamp_source
from pipeline.video import NO_INDEX, FrameIndex, VideoError, decode_indexed


class Cancelled(Exception):
    """The build is stopping (Ctrl-C, SIGTERM): the group gave up before its commit, so its videos stay pending."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled


@dataclass(frozen=True)
class GroupTask:
    """Everything one writer needs, read by the driver once so workers never scan the video table."""

    cache_url: str
    source_root: str
    params: BuildParams
    group: Group
    paths: tuple[str, ...]
    n_frames: np.ndarray  # (v,) frame counts in the table (probed)
    n_clips: np.ndarray  # (v,) planned clip slots
    first_clip: np.ndarray  # (v,) absolute index of each video's first slot
    status: tuple[str, ...]
    error: tuple[str, ...]
    bytes: np.ndarray
    mtime: np.ndarray
    fingerprint: tuple[str, ...] = ()  # the video table's, where the cache has the column
    cost: float = 0.0  # a rough work estimate (source pixels to decode), to start the biggest groups first
    threads: int = 0  # decoding/OpenCV threads for this task; 0: all cores (one in-process worker)


@dataclass
class VideoResult:
    video: int
    path: str
    status: str
    error: str
    n_clips: int


@dataclass
class GroupResult:
    group: int
    videos: list[VideoResult] = field(default_factory=list)
    clips: int = 0
    seconds: float = 0.0


def planned_frames(n_frames: int, params: BuildParams, n_clips: int) -> np.ndarray:
    """The clip table of a video of n_frames with n_clips slots: the plan's own layout when the counts agree,
    otherwise the same number of clips spread over the frames the video really has."""
    if n_clips == 0:
        return np.zeros((0, params.clip_len), np.int32)
    if clip_count(n_frames, params) == n_clips:
        return clip_frames(n_frames, params)
    return clip_frames(n_frames, params, n_clips=n_clips)


@dataclass(frozen=True)
class DecodedVideo:
    """What the build takes from decoding a video: its clips' frames and what the cache records of the file."""

    frames: np.ndarray  # (F, h, w, 3) uint8: the frames the mask method reads
    numbers: np.ndarray  # (F,) their source frame numbers, sorted
    table: np.ndarray  # (n, T) source frame numbers of the clips
    n_frames: int  # frames decoded
    frame_index: str  # FrameIndex.to_text(), or NO_INDEX: where a loader can seek


def _index_text(index: FrameIndex | None) -> str:
    return NO_INDEX if index is None else index.to_text()


def frames_read(n_frames: int, table: np.ndarray, method: str) -> np.ndarray:
    """Sorted source frame numbers a method reads of a video of n_frames whose clips are `table`: the clips' own,
    and for a whole-video method the frames of its background model too."""
    from pipeline.masks import VIDEO_METHODS

    if method in VIDEO_METHODS:
        from pipeline.masks.video import model_frames

        return model_frames(n_frames, table)
    return np.unique(table)


def _decode_clips(path: str, params: BuildParams, n_planned: int, n_clips: int, threads: int = 0) -> DecodedVideo:
    """Decode the video once (twice when it has another length than its header said) for the frames its mask method
    reads and its frame index."""
    limits = {"max_pixels": params.max_pixels, "max_frames": params.max_frames, "threads": threads}
    table = planned_frames(max(n_planned, 2), params, n_clips)
    keep = frames_read(max(n_planned, 2), table, params.method)
    frames, info, index = decode_indexed(path, params.size, keep=keep, **limits)
    if info.n_frames != n_planned:
        # The file decodes to another length than its header said: keep the planned clip count, spread anew.
        if info.n_frames < 2:
            raise VideoError(path, f"decodes to {info.n_frames} frame(s); a clip needs at least 2")
        table = planned_frames(info.n_frames, params, n_clips)
        needed = np.unique(table)
        got = keep[keep < info.n_frames]
        if not np.isin(needed, got).all():
            needed = frames_read(info.n_frames, table, params.method)
            frames, info, index = decode_indexed(path, params.size, keep=needed, **limits)
            got = needed
        keep = got
    return DecodedVideo(frames, keep, table, info.n_frames, _index_text(index))


def _clip_outputs(
    clips: np.ndarray, mask_step: MaskStep, plate_fn: Callable, path: str
) -> tuple[np.ndarray, np.ndarray]:
    """Masks (n,T,h,w) and plates (n,h,w,3) of a stack of clips: the pure core, one clip at a time. Each plate gets
    the camera motion its mask step tracked, so a clip's camera is tracked once."""
    n, t, h, w, _ = clips.shape
    masks = np.empty((n, t, h, w), np.uint8)
    plates = np.empty((n, h, w, 3), np.uint8)
    for i, clip in enumerate(clips):
        out = mask_step(clip)
        m = np.asarray(out.masks)
        p = np.asarray(plate_fn(clip, m, out.camera))
        if m.shape != (t, h, w) or p.shape != (h, w, 3):
            raise VideoError(path, f"mask method gave shapes {m.shape}, {p.shape}; expected {(t, h, w)}, {(h, w, 3)}")
        masks[i], plates[i] = m, p
    return masks, plates


def video_outputs(frames: np.ndarray, numbers: np.ndarray, table: np.ndarray, method: str, path: str = "") -> tuple:
    """Masks (n, T, h, w) and plates (n, h, w, 3) of one video's clips: `frames` (F, h, w, 3) are the decoded frames
    whose source numbers are `numbers` (sorted; `frames_read` says which), `table` (n, T) the clips' frame numbers.
    Per-clip methods see each clip alone; a whole-video method sees every frame given."""
    from pipeline.masks import VIDEO_METHODS, get_step
    from pipeline.plates import background_plate

    if method in VIDEO_METHODS:
        from pipeline.masks.video import video_masks_and_plates

        masks, plates = video_masks_and_plates(frames, numbers, table)
        n, t = table.shape
        h, w = frames.shape[1:3]
        if masks.shape != (n, t, h, w) or plates.shape != (n, h, w, 3):
            raise VideoError(path, f"mask method gave shapes {masks.shape}, {plates.shape}")
        return masks, plates
    clips = frames[np.searchsorted(numbers, table)]
    return _clip_outputs(clips, get_step(method), background_plate, path)


def run_group(task: GroupTask, stop: threading.Event | None = None) -> GroupResult:
    """Compute and commit one group. Per-video errors are recorded, not raised; store errors raise. Once `stop` is
    set the group raises `Cancelled` before its next video and before its commit: it is written whole or not at all."""
    before = cv2.getNumThreads()
    if task.threads:
        cv2.setNumThreads(task.threads)  # a Ray worker is one core: parallelism comes from groups side by side
    try:
        return _run_group(task, stop)
    finally:
        cv2.setNumThreads(before)


def _run_group(task: GroupTask, stop: threading.Event | None) -> GroupResult:
    start = time.perf_counter()
    params, group = task.params, task.group
    t, (h, w) = params.clip_len, params.size
    n_slots = len(group.clips)
    cache = Cache.open(task.cache_url, mode="r+")
    frames_out = np.zeros((n_slots, t), np.int32)  # every video's rows are set below; padding stays 0 as created
    masks = np.zeros((n_slots, t, h, w), np.uint8)
    plates = np.zeros((n_slots, h, w, 3), np.uint8)
    n_frames = np.asarray(task.n_frames, np.int32).copy()
    size_col = np.asarray(task.bytes, np.int64).copy()
    mtime_col = np.asarray(task.mtime, np.float64).copy()
    print_col = list(task.fingerprint)
    index_col = [""] * len(task.paths)  # a failed or refused video has no index
    status, errors = list(task.status), list(task.error)
    result = GroupResult(group.index)
    for i, rel in enumerate(task.paths):
        _check(stop)
        n_clips = int(task.n_clips[i])
        video = group.videos.start + i
        if n_clips == 0:  # refused when planned (probe failed, too short, over limits): nothing to compute
            result.videos.append(VideoResult(video, rel, status[i], errors[i], 0))
            continue
        path = join(task.source_root, rel)
        lo = int(task.first_clip[i]) - group.clips.start
        rows = slice(lo, lo + n_clips)
        try:
            try:
                stamp = stamp_source(path)  # the file decoded now, by size and content (see pipeline.cache.fingerprint)
                size_col[i], mtime_col[i] = stamp.bytes, stamp.mtime
                if print_col:
                    print_col[i] = stamp.fingerprint
            except FileNotFoundError as exc:
                raise VideoError(path, "file not found") from exc
            video_out = _decode_clips(path, params, int(task.n_frames[i]), n_clips, task.threads)
            masks[rows], plates[rows] = video_outputs(
                video_out.frames, video_out.numbers, video_out.table, params.method, path
            )
            frames_out[rows] = video_out.table
            n_frames[i], index_col[i] = video_out.n_frames, video_out.frame_index
            status[i], errors[i] = DONE, ""
            result.clips += n_clips
        except Exception as exc:  # any per-video failure is recorded with its reason; the group goes on
            reason = exc.reason if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
            masks[rows], plates[rows] = 0, 0
            frames_out[rows] = planned_frames(max(int(task.n_frames[i]), 2), params, n_clips)
            status[i], errors[i] = FAILED, reason
        result.videos.append(VideoResult(video, rel, status[i], errors[i], n_clips))
    updates = {
        "n_frames": n_frames,
        "bytes": size_col,
        "mtime": mtime_col,
        **({"fingerprint": print_col} if print_col else {}),
        "frame_index": index_col,
        "status": status,
        "error": errors,
    }
    _check(stop)
    cache.write_group(group, masks, plates, frames_out, updates)
    result.seconds = time.perf_counter() - start
    return result

"""Which source frames make up each clip of a video.

A clip is `clip_len` frames taken every `stride` frames. With K clips per video their starts are spread evenly over
the video; with 'all' the clips tile it without overlap. A video shorter than one clip is looped (its frames repeat
from the start) so short videos still give one clip; under 2 frames there is no motion to see and it is refused.
"""

from __future__ import annotations

import numpy as np

from pipeline.cache import FAILED
from pipeline.params import BuildParams

MIN_FRAMES = 2


def clip_count(n_frames: int, params: BuildParams) -> int:
    """How many clips a video of n_frames gives (0 when it is too short to use)."""
    if n_frames < MIN_FRAMES:
        return 0
    room = n_frames - params.span
    if room < 0:
        return 1
    if params.clips_per_video is None:
        return room // params.span + 1
    return min(params.clips_per_video, room + 1)


def clip_frames(n_frames: int, params: BuildParams, n_clips: int | None = None) -> np.ndarray:
    """(n_clips, clip_len) int32 source frame indices, in time order.

    `n_clips` forces the count (used when a video decodes to a slightly different length than planned, so the
    cache's clip table keeps its shape).
    """
    if n_frames < MIN_FRAMES:
        raise ValueError(f"a video needs at least {MIN_FRAMES} frames, this one has {n_frames}")
    count = clip_count(n_frames, params) if n_clips is None else n_clips
    offsets = np.arange(params.clip_len, dtype=np.int64) * params.stride
    room = n_frames - params.span
    if room < 0:
        starts = np.zeros(count, dtype=np.int64)
    elif params.clips_per_video is None and n_clips is None:
        starts = np.arange(count, dtype=np.int64) * params.span
    else:
        starts = np.round(np.linspace(0, room, count)).astype(np.int64) if count > 1 else np.array([room // 2])
    frames = (starts[:, None] + offsets[None, :]) % n_frames
    return frames.astype(np.int32)


def plan_clips(table: dict[str, np.ndarray], params: BuildParams) -> tuple[list[int], list[np.ndarray | None]]:
    """The build's plan of each video of a probed table: its clip count and their source frames (none for a video
    that failed its probe)."""
    counts = [
        0 if s == FAILED else clip_count(int(n), params)
        for s, n in zip(table["status"], table["n_frames"], strict=True)
    ]
    frames = [clip_frames(int(n), params) if c else None for n, c in zip(table["n_frames"], counts, strict=True)]
    return counts, frames

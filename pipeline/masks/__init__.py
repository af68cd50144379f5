"""Foreground mask methods. Each is a pure function of a clip: (T, H, W, 3) uint8 RGB -> (T, H, W) uint8,
the soft foreground probability x 255 for every frame. No Ray, no Zarr, no I/O in here.

`get_method` gives the masks alone; `get_step` gives them with what the plate step can reuse (`MaskResult`), so the
build tracks a clip's camera once and hands it on as a value. `video` is no function of one clip: it reads the whole
video (`pipeline.masks.video.video_masks_and_plates`, through `pipeline.job.video_outputs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

METHODS = ("fame", "motion", "video")
VIDEO_METHODS = ("video",)  # methods that see every frame of a video, not one clip at a time


@dataclass(frozen=True)
class MaskResult:
    """One clip's masks, (T, H, W) uint8, and the camera motion the method tracked for them: (T - 1, 2, 3) float32,
    the i-th mapping frame i onto frame i + 1 in the clip's pixels; None when the method tracks none."""

    masks: np.ndarray
    camera: np.ndarray | None = None


MaskFn = Callable[[np.ndarray], np.ndarray]
MaskStep = Callable[[np.ndarray], MaskResult]


def _check(name: str) -> None:
    if name not in METHODS:
        raise ValueError(f"unknown mask method {name!r}; choose one of {', '.join(METHODS)}")
    if name in VIDEO_METHODS:
        raise ValueError(f"mask method {name!r} reads the whole video, not one clip: use pipeline.job.video_outputs")


def get_method(name: str) -> MaskFn:
    """The mask function registered under `name` ('fame' or 'motion')."""
    _check(name)
    if name == "fame":
        from pipeline.masks.fame import fame_masks

        return fame_masks
    from pipeline.masks.motion import motion_masks

    return motion_masks


def get_step(name: str) -> MaskStep:
    """The build's mask step for method `name`: the masks of `get_method(name)` and the camera motion, if tracked."""
    _check(name)
    if name == "fame":
        return _fame_step
    return _motion_step


def _fame_step(clip: np.ndarray) -> MaskResult:
    from pipeline.masks.fame import fame_masks

    return MaskResult(fame_masks(clip))


def _motion_step(clip: np.ndarray) -> MaskResult:
    from pipeline.masks.motion import motion_masks_and_camera

    masks, camera = motion_masks_and_camera(clip)
    return MaskResult(masks, camera)

"""Foreground mask methods. Each is a pure function of a clip: (T, H, W, 3) uint8 RGB -> (T, H, W) uint8,
the soft foreground probability x 255 for every frame. No Ray, no Zarr, no I/O in here."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MaskFn = Callable[[np.ndarray], np.ndarray]


def get_method(name: str) -> MaskFn:
    """The mask function registered under `name` ('fame' or 'motion')."""
    if name == "fame":
        from pipeline.masks.fame import fame_masks

        return fame_masks
    if name == "motion":
        from pipeline.masks.motion import motion_masks

        return motion_masks
    raise ValueError(f"unknown mask method {name!r}; choose one of fame, motion")

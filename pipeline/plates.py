"""Background plates: the clip's static background with its foreground removed.

Each pixel takes the median of its background samples over the clip (frames where the mask says background);
pixels that are foreground in every frame have no sample and are filled by inpainting from their surroundings.
"""

from __future__ import annotations

import cv2
import numpy as np

FOREGROUND = 128  # mask value from which a pixel counts as foreground


def background_plate(clip: np.ndarray, masks: np.ndarray, threshold: int = FOREGROUND) -> np.ndarray:
    """(T, H, W, 3) uint8 clip and (T, H, W) uint8 masks -> (H, W, 3) uint8 plate."""
    background = masks < threshold
    samples = background.sum(axis=0)
    # Median over the background samples: sort each pixel's values with foreground pushed past the end.
    values = np.where(background[..., None], clip, np.uint16(256)).astype(np.uint16)
    values = np.ascontiguousarray(np.moveaxis(values, 0, -1))  # (H, W, 3, T): sort along contiguous memory
    values.sort(axis=-1)
    middle = np.clip((samples - 1) // 2, 0, None)
    plate = np.take_along_axis(values, middle[:, :, None, None].repeat(3, axis=2), axis=-1)[..., 0]
    plate = np.minimum(plate, 255).astype(np.uint8)
    holes = samples == 0
    if holes.all():
        return np.median(clip, axis=0).astype(np.uint8)
    if holes.any():
        radius = max(3, min(clip.shape[1:3]) // 32)
        plate = cv2.inpaint(plate, holes.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return plate

"""Background plates: the clip's static background with its foreground removed.

Each pixel takes the mean of its background samples over the clip (frames where the mask says background; the
per-frame masks already keep the mover out, and a mean costs a tenth of a per-pixel median);
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
    weights = background.astype(np.float32)[..., None]
    total = np.einsum("thwc,thwc->hwc", clip.astype(np.float32), np.broadcast_to(weights, clip.shape))
    plate = np.round(total / np.maximum(samples, 1)[..., None]).astype(np.uint8)
    holes = samples == 0
    if holes.all():
        return np.round(clip.mean(axis=0)).astype(np.uint8)
    if holes.any():
        radius = max(3, min(clip.shape[1:3]) // 32)
        plate = cv2.inpaint(plate, holes.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return plate

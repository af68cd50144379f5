"""Background plates: the clip's static background with its foreground removed.

A moving camera is compensated first: every frame (and its mask) is warped onto the clip's middle frame with the
clip's camera motion, so the plate is the middle frame's view, sharp, not a smear of the pan. The mask step passes in
the motion it already tracked (the `motion` method does); without it, the plate tracks the camera itself, the same
way. Each pixel then takes the mean of its background samples over the clip (frames where the mask says background;
per-frame masks already keep the mover out, and a masked running sum costs a small fraction of a per-pixel median).
Pixels that are foreground in every frame have no sample; they are filled by inpainting from their surroundings, at
a reduced size, because a static mask (the `fame` method) can leave a hole over most of the frame, and inpainting
cost grows with hole area.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.masks.motion import STILL, clip_camera_motion, corner_shift
from pipeline.params import FOREGROUND_THRESHOLD

FILL_SIDE = 32  # holes are inpainted on a plate shrunk to about this short side: fills are smooth anyway


def fill_holes(plate: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Inpaint the `holes` (H, W) bool of an (H, W, 3) uint8 plate; pixels outside the holes are kept exactly."""
    h, w = holes.shape
    scale = min(1.0, FILL_SIDE / min(h, w))
    if scale == 1.0:
        return cv2.inpaint(plate, holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # A small pixel that any hole pixel touches is a hole too: the zeros in the holes must not bleed into the fill.
    small_holes = cv2.resize(holes.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    small = cv2.resize(plate, size, interpolation=cv2.INTER_AREA)
    if small_holes.all():
        return np.broadcast_to(plate[~holes].mean(axis=0).round().astype(np.uint8), plate.shape).copy()
    filled = cv2.inpaint(small, small_holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    large = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    out = plate.copy()
    out[holes] = large[holes]
    return out


def onto_reference(forward: np.ndarray, reference: int) -> np.ndarray:
    """(T, 2, 3) transforms taking each frame onto frame `reference`, chained from (T - 1, 2, 3) frame-to-frame
    transforms (forward[i] maps frame i onto frame i + 1)."""
    t = len(forward) + 1
    full = [np.vstack([f.astype(np.float64), [0.0, 0.0, 1.0]]) for f in forward]
    out = np.tile(np.eye(3), (t, 1, 1))
    for j in range(reference - 1, -1, -1):  # j -> j + 1 -> ... -> reference
        out[j] = out[j + 1] @ full[j]
    for j in range(reference + 1, t):  # j -> j - 1 -> ... -> reference
        out[j] = out[j - 1] @ np.linalg.inv(full[j - 1])
    return out[:, :2].astype(np.float32)


def camera_to_middle(clip: np.ndarray, camera: np.ndarray | None = None) -> np.ndarray | None:
    """(T, 2, 3) transforms taking each frame onto the middle one, from the clip's frame-to-frame `camera` motion
    (tracked here when None), or None for a still camera (no warps: no interpolation blur and no cost)."""
    t, h, w, _ = clip.shape
    transforms = onto_reference(clip_camera_motion(clip) if camera is None else camera, t // 2)
    return None if corner_shift(transforms, h - 1, w - 1) <= STILL else transforms


def background_plate(
    clip: np.ndarray,
    masks: np.ndarray,
    camera: np.ndarray | None = None,
    *,
    threshold: int = FOREGROUND_THRESHOLD,
    compensate_camera: bool = True,
) -> np.ndarray:
    """(T, H, W, 3) uint8 clip and (T, H, W) uint8 masks -> (H, W, 3) uint8 plate (no holes). `camera` is the clip's
    (T - 1, 2, 3) frame-to-frame camera motion as its mask step tracked it (`MaskResult.camera`); None: tracked here."""
    if clip.ndim != 4 or clip.shape[-1] != 3 or masks.shape != clip.shape[:3]:
        raise ValueError(f"expected a (T, H, W, 3) clip and (T, H, W) masks, got {clip.shape} and {masks.shape}")
    t, h, w, _ = clip.shape
    if camera is not None and np.shape(camera) != (max(t - 1, 0), 2, 3):
        raise ValueError(f"expected ({max(t - 1, 0)}, 2, 3) camera transforms for {t} frames, got {np.shape(camera)}")
    background = (masks < threshold).view(np.uint8)
    transforms = camera_to_middle(clip, camera) if compensate_camera and t > 1 else None
    total = np.zeros((h, w, 3), np.float32)
    samples = np.zeros((h, w), np.float32)
    for i in range(t):
        frame, flags = clip[i], background[i]
        if transforms is not None:  # pixels the warped frame does not cover get no sample
            frame = cv2.warpAffine(frame, transforms[i], (w, h), borderMode=cv2.BORDER_REPLICATE)
            flags = cv2.warpAffine(flags, transforms[i], (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        cv2.accumulate(frame, total, mask=flags)
        cv2.accumulate(flags, samples)
    if not samples.any():  # foreground everywhere: nothing to go on but the frames themselves
        return np.round(clip.mean(axis=0)).astype(np.uint8)
    plate = np.round(total / np.maximum(samples, 1)[..., None]).astype(np.uint8)
    holes = samples == 0
    return fill_holes(plate, holes) if holes.any() else plate


def mosaic(frames: np.ndarray, onto: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A background from frames of one shot, on a canvas (the reference view, grown by what a pan shows): (F, H, W, 3)
    uint8 frames, (F, 2, 3) transforms taking each onto the canvas, and (F, CH, CW) bool flags on the canvas saying
    which of each frame's aligned pixels are background. Returns the (CH, CW, 3) uint8 mean of the flagged samples
    and where there was one (bool); pixels with none are 0."""
    _, h, w, _ = frames.shape
    ch, cw = clean.shape[1:]
    total = np.zeros((ch, cw, 3), np.float32)
    samples = np.zeros((ch, cw), np.float32)
    ones = np.ones((h, w), np.uint8)
    for frame, m, flags in zip(frames, onto, clean, strict=True):
        if (ch, cw) != (h, w) or corner_shift(m, h - 1, w - 1) > STILL:  # pixels no frame covers stay unflagged
            cover = cv2.warpAffine(ones, m, (cw, ch), flags=cv2.INTER_NEAREST) > 0
            frame = cv2.warpAffine(frame, m, (cw, ch), borderMode=cv2.BORDER_REPLICATE)
            flags = flags & cover
        flags = flags.view(np.uint8)
        cv2.accumulate(frame, total, mask=flags)
        cv2.accumulate(flags, samples)
    plate = np.round(total / np.maximum(samples, 1)[..., None]).astype(np.uint8)
    return plate, samples > 0

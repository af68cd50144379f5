"""Our mask method: per-frame masks that survive camera motion.

1. Camera motion: a global similarity transform between consecutive frames, from corners tracked with pyramidal
   Lucas-Kanade and fitted with RANSAC (identity when the frame has too little texture to track).
2. Motion evidence: each frame is compared with both neighbours warped onto it; the smaller of the two residuals
   keeps only what moved in the frame itself (a plain difference also lights up where the object was and will be).
3. Adaptive area: the residual is scaled by the clip's own noise level (median + MAD), not cut at a fixed top-x%,
   so a still clip gives an empty mask and a large mover a large one.
4. Colour refinement: HSV histograms of confident foreground and background pixels fill in the textureless inside
   of movers, only near where motion was seen.
5. Temporal smoothing over neighbouring frames; values are quantised to 16 levels, which compress far better.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.masks.fame import colour_posterior, hsv_bins

MIN_TRACKS = 8
NOISE_K = 4.0  # residuals this many robust sigmas above the median count as motion
FLOOR = 6.0  # grey levels: below this nothing is motion, however clean the video
LEVELS = 17  # quantisation step on the 0..255 scale
WORK_SIDE = 96  # masks of frames with a larger short side are computed at half size
TRACK_SIDE = 64  # camera motion is tracked on frames this small (short side): the global motion needs no detail


def _similarity(src: np.ndarray, dst: np.ndarray, scale: float) -> np.ndarray:
    """2x3 transform mapping src onto dst (grey uint8 frames tracked at `scale` of full size), identity when
    tracking fails. The translation is returned in full-size pixels."""
    corners = cv2.goodFeaturesToTrack(src, maxCorners=80, qualityLevel=0.01, minDistance=4, blockSize=5)
    identity = np.float32([[1, 0, 0], [0, 1, 0]])
    if corners is None or len(corners) < MIN_TRACKS:
        return identity
    moved, status, _ = cv2.calcOpticalFlowPyrLK(src, dst, corners, None, winSize=(11, 11), maxLevel=2)
    ok = status.ravel() == 1
    if ok.sum() < MIN_TRACKS:
        return identity
    matrix, _ = cv2.estimateAffinePartial2D(corners[ok], moved[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if matrix is None:
        return identity
    matrix[:, 2] /= scale
    return matrix.astype(np.float32)


def _residual(frame: np.ndarray, other: np.ndarray, onto_frame: np.ndarray) -> np.ndarray:
    """|frame - other warped onto frame|, 0 (no evidence) where the warp has no full source pixel: interpolating
    against the border would otherwise light up a stripe along the edge the camera uncovers."""
    h, w = frame.shape
    warped = cv2.warpAffine(other, onto_frame, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    covered = cv2.warpAffine(np.ones_like(frame), onto_frame, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    residual = np.abs(frame - warped)
    residual[covered < 0.999] = 0.0
    return residual


def motion_evidence(grey: np.ndarray) -> np.ndarray:
    """(T, H, W) float32 residual motion per frame after compensating the camera."""
    t, h, w = grey.shape
    scale = min(1.0, TRACK_SIDE / min(h, w))
    if scale < 1.0:
        small = [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in grey]
    else:
        small = list(grey)
    small = [g.astype(np.uint8) for g in small]
    forward = [_similarity(small[i], small[i + 1], scale) for i in range(t - 1)]  # maps frame i onto frame i + 1
    evidence = np.empty_like(grey)
    for i in range(t):
        residuals = []
        if i > 0:
            residuals.append(_residual(grey[i], grey[i - 1], forward[i - 1]))
        if i < t - 1:
            residuals.append(_residual(grey[i], grey[i + 1], cv2.invertAffineTransform(forward[i])))
        evidence[i] = np.minimum(*residuals) if len(residuals) == 2 else residuals[0]
    return evidence


def _fill_holes(soft: np.ndarray) -> np.ndarray:
    """Raise the enclosed inside of each moving region to foreground: a mover's smooth interior barely changes
    between frames, so motion evidence alone outlines it."""
    binary = (soft >= 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(binary)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return np.maximum(soft, filled * 0.75)


def motion_masks(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8 soft foreground probability x 255, per frame.

    Frames larger than WORK_SIDE (short side) are processed at half size and the soft masks scaled back: the masks
    are smooth, and the mask costs a quarter as much next to decoding."""
    t, h, w, _ = clip.shape
    if t < 2:
        return np.zeros((t, h, w), np.uint8)
    if min(h, w) > WORK_SIDE:
        # One call for all frames: stacked vertically, 2x2 area blocks never straddle two frames (even heights).
        tall = clip[:, : h // 2 * 2].reshape(-1, w, 3)
        half = cv2.resize(tall, (w // 2, tall.shape[0] // 2), interpolation=cv2.INTER_AREA).reshape(
            t, h // 2, w // 2, 3
        )
        small = _masks_at(half).astype(np.float32)
        full = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in small])
        return (np.round(full / LEVELS) * LEVELS).astype(np.uint8)
    return _masks_at(clip)


def _masks_at(clip: np.ndarray) -> np.ndarray:
    t, h, w, _ = clip.shape
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]).astype(np.float32)
    k = max(3, (min(h, w) // 24) | 1)
    evidence = np.stack([cv2.GaussianBlur(e, (k, k), 0) for e in motion_evidence(grey)])
    sample = evidence[:, ::3, ::3]  # robust statistics need no full sort of every pixel
    median = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - median)))
    threshold = max(median + NOISE_K * spread, FLOOR)
    soft = np.clip((evidence - 0.5 * threshold) / threshold, 0.0, 1.0)
    if soft.max() < 0.5:
        return np.zeros((t, h, w), np.uint8)

    fg_seed, bg_seed = soft >= 0.9, soft <= 0.05
    if fg_seed.sum() > 16 and bg_seed.sum() > 16:
        bins = hsv_bins(clip)
        n = 1000
        fg = np.bincount(bins[fg_seed], minlength=n).astype(np.float32)
        bg = np.bincount(bins[bg_seed], minlength=n).astype(np.float32)
        posterior = (fg / fg.sum()) / (fg / fg.sum() + bg / bg.sum() + 1e-6)
        colour = posterior[bins]
        grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        near = np.stack([cv2.dilate((s >= 0.5).astype(np.uint8), grow) for s in soft]).astype(bool)
        soft = np.maximum(soft, np.where(near, colour, 0.0) * (colour > 0.6))
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    soft = np.stack([_fill_holes(cv2.morphologyEx(s.astype(np.float32), cv2.MORPH_CLOSE, close)) for s in soft])
    padded = np.concatenate([soft[:1], soft, soft[-1:]])
    soft = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return (np.round(soft * 255 / LEVELS) * LEVELS).astype(np.uint8)


__all__ = ["colour_posterior", "motion_masks"]

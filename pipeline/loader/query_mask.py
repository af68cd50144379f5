"""The merged query's alpha: how much of its own clip a FAME view keeps, pixel by pixel, inside its crop.

The cache stores soft masks over the whole frame; what matters for learning is the part the query shows. So the
mask is cropped with the query's window first and binarised there: by a fixed threshold, or by the paper's rule
(the top `beta` of the crop's pixels, as the authors' code ranks the soft mask of the crop it merges). A floor then
keeps at least `own_floor` of every frame of the crop from the clip itself (ranked on the mask at half resolution,
`at_least`): a tight mask of a small mover, or the empty mask of a still clip, would otherwise leave a query made
(almost) wholly of another video's background, a positive pair that shares nothing. A margin (`own_margin`) keeps
the frame's mask share plus that much of the crop, the mover and some of its own scene around it, so a large mover
keeps more context than a small one; the area rule keeps its beta (a share chosen outright), margin or not.

Ranking uses a tie-break: masks are quantised (and a still clip's is all zero), so many pixels share the cut value.
Among equal values, pixels nearer the mask's mass come first, then pixels nearer the crop's centre, so the kept
area is one blob around the mover rather than scattered pixels.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from pipeline.loader.params import LoaderParams

OWN = 255  # alpha of a pixel taken from the clip itself


def crop_mask(mask: np.ndarray, roi: np.ndarray, crop: int) -> np.ndarray:
    """(T, h, w) uint8 soft mask -> (T, crop, crop) uint8: the relative window roi [y0, x0, y1, x1], resized
    bilinearly as the clip's frames are."""
    _, h, w = mask.shape
    y0, y1 = round(float(roi[0]) * h), max(round(float(roi[2]) * h), round(float(roi[0]) * h) + 1)
    x0, x1 = round(float(roi[1]) * w), max(round(float(roi[3]) * w), round(float(roi[1]) * w) + 1)
    window = np.ascontiguousarray(mask[:, y0:y1, x0:x1].transpose(1, 2, 0))  # frames as channels: one resize
    resized = cv2.resize(window, (crop, crop), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.reshape(crop, crop, -1).transpose(2, 0, 1))


def centre_on_mask(roi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The window `roi` (relative [y0, x0, y1, x1]) moved, its size kept, so its centre is the soft mask's mass
    centre over the clip (clamped to stay in the frame); a mask with no mass leaves it where it was."""
    weights = mask.astype(np.float32).sum(axis=0)
    total = float(weights.sum())
    if total <= 0:
        return roi
    h, w = weights.shape
    cy = float((weights.sum(axis=1) * (np.arange(h) + 0.5)).sum()) / total / h
    cx = float((weights.sum(axis=0) * (np.arange(w) + 0.5)).sum()) / total / w
    ch, cw = float(roi[2] - roi[0]), float(roi[3] - roi[1])
    y0 = min(max(cy - ch / 2, 0.0), 1.0 - ch)
    x0 = min(max(cx - cw / 2, 0.0), 1.0 - cw)
    return np.array([y0, x0, y0 + ch, x0 + cw], np.float32)


@functools.lru_cache(maxsize=16)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float32 M with M @ x = OpenCV's float Gaussian blur of x along one axis: its kernel (4 sigma either
    side) and its border (reflect-101, folded again where the kernel is wider than the axis) summed per source
    pixel. Made once per crop size."""
    ksize = round(sigma * 4 * 2 + 1) | 1  # OpenCV's size for a float image
    kernel = cv2.getGaussianKernel(ksize, sigma, cv2.CV_32F).ravel().astype(np.float64)
    matrix = np.zeros((n, n))
    for i in range(n):
        for tap in range(ksize):
            matrix[i, cv2.borderInterpolate(i + tap - ksize // 2, n, cv2.BORDER_REFLECT_101)] += kernel[tap]
    return matrix.astype(np.float32)


def _blur_wide(frames: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, T) float32 frames blurred as `cv2.GaussianBlur(frames, (0, 0), sigma)` does, as two matrix products:
    a kernel a third of the crop wide costs a 150-tap filter per pixel and frame, the products a few milliseconds."""
    h, w, t = frames.shape
    rows = (_blur_matrix(h, sigma) @ frames.reshape(h, w * t)).reshape(h, w, t)
    return np.einsum("xw,hwt->hxt", _blur_matrix(w, sigma), rows, optimize=True)


@functools.lru_cache(maxsize=16)
def _near_centre(h: int, w: int) -> np.ndarray:
    """(h, w) float32: 1 at the crop's centre, 0 at its corners; the same for every frame and clip of a crop size."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    distance = np.hypot((yy - (h - 1) / 2) / h, (xx - (w - 1) / 2) / w)
    return (1.0 - distance / distance.max()).astype(np.float32)


def _tie_break(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) float32 in [0, 1): nearness to the mask's mass (blurred mask), then to the crop's centre."""
    t, h, w = mask.shape
    blurred = _blur_wide(mask.transpose(1, 2, 0).astype(np.float32), max(h, w) / 6.0).transpose(2, 0, 1)
    peak = blurred.reshape(t, -1).max(axis=1)[:, None, None]
    near_mass = np.divide(blurred, peak, out=np.zeros_like(blurred), where=peak > 0)
    return (0.9 * near_mass + 0.09 * _near_centre(h, w)[None]).astype(np.float32)


def top_fraction(mask: np.ndarray, fraction: float | np.ndarray) -> np.ndarray:
    """(T, H, W) bool: exactly round(fraction x H x W) pixels of each frame, those of highest mask value (ties
    broken by `_tie_break`); `fraction` is one for all frames or (T,) one per frame."""
    t, h, w = mask.shape
    score = (mask.astype(np.float32) + _tie_break(mask)).reshape(t, -1)
    counts = np.clip(np.rint(np.broadcast_to(np.asarray(fraction, np.float64), (t,)) * h * w), 1, h * w)
    keep = np.zeros(score.shape, bool)
    for row, frame_score, k in zip(keep, score, counts.astype(np.int64), strict=True):
        if k == h * w:
            row[:] = True
        else:
            row[np.argpartition(-frame_score, k - 1)[:k]] = True
    return keep.reshape(t, h, w)


def query_alpha(mask: np.ndarray, roi: np.ndarray, params: LoaderParams) -> np.ndarray:
    """(T, h, w) cached soft mask -> (T, crop, crop) uint8 alpha of the query's own clip (255 = own pixel)."""
    cropped = crop_mask(mask, roi, params.crop)
    if params.mask_mode == "soft":
        alpha = cropped
    elif params.mask_mode == "threshold":
        alpha = np.where(cropped >= params.threshold, OWN, 0).astype(np.uint8)
    else:  # "area": the paper's top-beta of the crop
        alpha = np.where(top_fraction(cropped, params.beta), OWN, 0).astype(np.uint8)
    margin = 0.0 if params.mask_mode == "area" else params.own_margin  # the area rule's share is beta, as asked
    if params.own_floor > 0 or margin > 0:
        own = alpha.reshape(len(alpha), -1).mean(axis=1) / OWN
        target = np.maximum(params.own_floor, np.minimum(1.0, own + margin))
        short = own < target
        if short.any():
            floor = np.where(at_least(cropped[short], target[short]), OWN, 0).astype(np.uint8)
            alpha[short] = np.maximum(alpha[short], floor)
    return alpha


def at_least(mask: np.ndarray, fraction: float | np.ndarray) -> np.ndarray:
    """(T, H, W) bool: at least `fraction` (one, or one per frame) of each frame's pixels, those of highest mask
    value, as `top_fraction` ranks them but on the mask at half resolution (2x2 means), each pixel kept there a 2x2
    block here: a quarter of the ranking's work, for the own-pixel floor, which needs a lower bound and a blob, not
    an exact count. It keeps at most 3 pixels more than the floor per frame. Frames of odd size are ranked whole."""
    t, h, w = mask.shape
    if h % 2 or w % 2:
        return top_fraction(mask, fraction)
    half = cv2.resize(np.ascontiguousarray(mask.transpose(1, 2, 0)), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    half = half.reshape(h // 2, w // 2, t).transpose(2, 0, 1)
    need = np.ceil(np.asarray(fraction, np.float64) * h * w)
    blocks = -(-need // 4)  # whole 2x2 blocks enough for the floor's pixel count
    keep = top_fraction(half, blocks / half[0].size)
    return keep.repeat(2, axis=1).repeat(2, axis=2)

"""The published FAME mask (Ding et al., CVPR 2022), one static soft mask per clip, as the authors' code computes it.

1. Motion map: the absolute difference of consecutive frames, summed over the colour channels and averaged over the
   clip; Gaussian blur (kernel 0.1 of the frame's short side, odd, sigma = kernel / 3); min-max normalisation.
2. Seeds: the 50% most moving pixels are foreground seeds, the 10% least moving background seeds (exact counts, ties
   broken by pixel order).
3. Colour model on the clip's mean frame in HSV: hue and saturation are placed on the colour wheel
   (x, y = (s cos 2 pi h + 1) / 2, (s sin 2 pi h + 1) / 2) so that red hues on both ends of the hue range share bins;
   x, y and value each take 10 bins. The seeds' histograms (the background's with one count added to every bin) give
   each pixel P(fg | colour) = p_fg / (p_fg + p_bg).
4. The posterior is blurred and min-max normalised again.

The paper's area fraction (beta: keep the top beta of pixels) is a loader option, so the mask is stored soft, x 255.
A clip with no change at all has no seeds to speak of, and gets an empty mask rather than colour noise.
"""

from __future__ import annotations

import cv2
import numpy as np

BINS = 10  # per axis of the colour space: wheel x, wheel y, value
FG_FRACTION = 0.5  # the most moving half of the pixels seeds the foreground
BG_FRACTION = 0.1  # the 10% least moving pixels seed the background
EPS = 1e-8


def blur(image: np.ndarray) -> np.ndarray:
    """The authors' Gaussian: odd kernel of 0.1 x the short side, sigma a third of it, reflected borders."""
    k = int(0.1 * min(image.shape[:2])) // 2 * 2 + 1
    return cv2.GaussianBlur(image, (k, k), k / 3, borderType=cv2.BORDER_REFLECT_101)


def normalise(image: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] as the authors do it: subtract the minimum, divide by the maximum plus a tiny epsilon."""
    shifted = image - image.min()
    return (shifted / (shifted.max() + EPS)).astype(np.float32)


def motion_map(clip: np.ndarray) -> np.ndarray:
    """(H, W) float32: blurred, normalised mean over the clip of the channel-summed absolute frame difference."""
    t, h, w, _ = clip.shape
    rows = clip.reshape(t, h * w * 3)
    diff = cv2.absdiff(rows[1:], rows[:-1])  # (T - 1, H * W * 3) uint8, one vectorised call
    over_time = diff.sum(axis=0, dtype=np.uint16 if t <= 257 else np.uint32)  # contiguous rows: a fast reduction
    total = over_time.reshape(h, w, 3).sum(axis=-1, dtype=np.float32)
    mean = total / (255.0 * (t - 1))
    return normalise(blur(mean))


def colour_bins(image: np.ndarray) -> np.ndarray:
    """(H, W) int64 colour-wheel HSV bin in [0, BINS^3) of an (H, W, 3) float32 RGB image in [0, 1]."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float input: hue in degrees, saturation and value in [0, 1]
    angle = np.deg2rad(hsv[..., 0])
    sat = hsv[..., 1]
    x = np.round(((sat * np.cos(angle) + 1) / 2) * (BINS - 1)).astype(np.int64)
    y = np.round(((sat * np.sin(angle) + 1) / 2) * (BINS - 1)).astype(np.int64)
    v = np.round(hsv[..., 2] * (BINS - 1)).astype(np.int64)
    return x + y * BINS + v * BINS * BINS


def colour_posterior(bins: np.ndarray, fg_seed: np.ndarray, bg_seed: np.ndarray) -> np.ndarray:
    """P(fg | colour) for every entry of `bins`, from the bins of the seed pixels (flat index arrays or boolean
    masks over `bins`). The background histogram counts one extra in every bin, so unseen colours lean background."""
    n = BINS**3
    fg = np.bincount(bins[fg_seed].ravel(), minlength=n).astype(np.float32)
    bg = np.bincount(bins[bg_seed].ravel(), minlength=n).astype(np.float32) + 1.0
    fg /= fg.sum() + EPS
    bg /= bg.sum() + EPS
    return (fg / (fg + bg))[bins]


def fame_mask(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (H, W) float32 in [0, 1]: the clip's soft FAME mask."""
    h, w = clip.shape[1:3]
    if len(clip) < 2:
        return np.zeros((h, w), np.float32)
    motion = motion_map(clip)
    if not motion.any():
        return np.zeros((h, w), np.float32)
    n = h * w
    order = np.argsort(motion.ravel(), kind="stable")
    fg_seed, bg_seed = order[n - int(FG_FRACTION * n) :], order[: int(BG_FRACTION * n)]
    bins = colour_bins(clip.mean(axis=0, dtype=np.float32) / 255.0).ravel()
    posterior = colour_posterior(bins, fg_seed, bg_seed).reshape(h, w)
    return normalise(blur(posterior))


def fame_masks(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8: the clip's static FAME mask x 255, repeated over its frames."""
    mask = np.round(fame_mask(clip) * 255).astype(np.uint8)
    return np.broadcast_to(mask, clip.shape[:3]).copy()

"""The published FAME mask (Ding et al., CVPR 2022), one static soft mask per clip.

Steps, as in the paper: the mean absolute difference of consecutive grey frames is the motion map; it is blurred
and min-max normalised; its top 50% are foreground seeds and its bottom 10% background seeds; HSV colour histograms
(10 x 10 x 10 bins, hue binned around the colour wheel) of the seeds give each pixel a foreground posterior; the
posterior, averaged over the clip, is blurred and normalised again. The paper's area fraction (beta) is applied by
the loader, so the mask is stored soft.
"""

from __future__ import annotations

import cv2
import numpy as np

BINS = 10
FG_QUANTILE = 0.5  # pixels above the median motion seed the foreground
BG_QUANTILE = 0.1  # the 10% least moving pixels seed the background
EPS = 1e-6


def blur(image: np.ndarray) -> np.ndarray:
    """Gaussian blur with a kernel that scales with the frame (about 1/20 of its short side, odd)."""
    k = max(3, (min(image.shape[:2]) // 20) | 1)
    return cv2.GaussianBlur(image, (k, k), 0)


def normalise(image: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a flat image (no motion at all) becomes all zero."""
    low, high = float(image.min()), float(image.max())
    if high - low < EPS:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def hsv_bins(clip: np.ndarray) -> np.ndarray:
    """(T, H, W) joint HSV bin index in [0, BINS^3). OpenCV hue spans 0..179, so hue bins wrap the wheel."""
    hsv = cv2.cvtColor(clip.reshape(-1, clip.shape[2], 3), cv2.COLOR_RGB2HSV).reshape(clip.shape)
    h = (hsv[..., 0].astype(np.int32) * BINS) // 180
    s = (hsv[..., 1].astype(np.int32) * BINS) // 256
    v = (hsv[..., 2].astype(np.int32) * BINS) // 256
    return (h * BINS + s) * BINS + v


def colour_posterior(bins: np.ndarray, fg_seed: np.ndarray, bg_seed: np.ndarray) -> np.ndarray:
    """P(foreground | colour bin) from seed histograms (each normalised to a distribution), per pixel (T, H, W)."""
    n = BINS**3
    fg = np.bincount(bins[:, fg_seed].ravel(), minlength=n).astype(np.float32)
    bg = np.bincount(bins[:, bg_seed].ravel(), minlength=n).astype(np.float32)
    fg /= max(fg.sum(), 1.0)
    bg /= max(bg.sum(), 1.0)
    posterior = fg / (fg + bg + EPS)
    return posterior[bins]


def motion_map(clip: np.ndarray) -> np.ndarray:
    """Blurred, normalised mean absolute difference of consecutive grey frames, (H, W) in [0, 1]."""
    grey = clip.astype(np.float32).mean(axis=-1)
    if len(grey) < 2:
        return np.zeros(grey.shape[1:], np.float32)
    return normalise(blur(np.abs(np.diff(grey, axis=0)).mean(axis=0)))


def fame_masks(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8: the clip's static FAME mask, repeated over its frames."""
    t = clip.shape[0]
    motion = motion_map(clip)
    if not motion.any():
        return np.zeros(clip.shape[:3], np.uint8)
    fg_seed = motion >= np.quantile(motion, FG_QUANTILE)
    bg_seed = motion <= np.quantile(motion, BG_QUANTILE)
    posterior = colour_posterior(hsv_bins(clip), fg_seed, bg_seed).mean(axis=0)
    mask = normalise(blur(posterior.astype(np.float32)))
    return np.broadcast_to(np.round(mask * 255).astype(np.uint8), (t, *mask.shape)).copy()

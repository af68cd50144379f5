"""Our mask method: per-frame masks that survive camera motion.

1. Camera motion: a global similarity transform between consecutive frames, from corners tracked with pyramidal
   Lucas-Kanade and fitted with RANSAC (identity when the frame has too little texture to track).
2. Motion evidence: each frame is compared with both neighbours warped onto it; the smaller of the two residuals
   keeps only what moved in the frame itself (a plain difference also lights up where the object was and will be).
3. Adaptive area: the residual is scaled by the clip's own noise level (median + MAD), not cut at a fixed top-x%,
   so a still clip gives an empty mask and a large mover a large one; each frame's outline is then placed at half
   the height of its moving region's evidence, where a blurred edge crosses the true one.
4. Colour refinement: HSV histograms of confident foreground and background pixels decide the uncertain band
   around each motion edge (blurred residuals spill past the mover's outline; colour pulls the edge back onto it).
5. Temporal smoothing over neighbouring frames; values are quantised to 6 levels (0, 51, ..., 255), which
   compress about twice as well as 16 levels and four times as well as 256.
"""

from __future__ import annotations

import cv2
import numpy as np

BINS = 10  # per HSV axis of the colour model
MIN_TRACKS = 8  # fewer tracked corners than this: too little texture, the camera is taken as still
STILL = 0.25  # pixels: a frame-to-frame move of no frame corner beyond this is jitter, not camera motion
MAX_TRACKS = 40  # RANSAC needs few; Lucas-Kanade's cost grows with every one
NOISE_K = 4.0  # residuals this many robust sigmas above the median count as motion
FLOOR = 6.0  # grey levels: below this nothing is motion, however clean the video
COLOUR_WEIGHT = 0.65  # share of the colour posterior in the mask near motion edges
EDGE_HEIGHT = 0.5  # the outline sits at this fraction of the moving region's typical evidence ...
MOVING_PERCENTILE = 75  # ... taken as this percentile of the evidence above the noise threshold
MIN_MOVING = 2  # sampled pixels (every other row and column) above the noise threshold before a frame's own
# level is trusted
LEVELS = 51  # quantisation step: 6 levels; 127.5 is a half step, so ">= 128 is foreground" is kept exactly
WORK_SIDE = 96  # masks of frames with a larger short side are computed at half size
TRACK_SIDE = 64  # camera motion is tracked on frames this small (short side): the global motion needs no detail

_LEVEL = np.arange(256)
_HUE_BIN = (np.minimum(_LEVEL, 179) * BINS // 180 * BINS * BINS).astype(np.int16)  # lookup tables: value -> bin
_SAT_BIN = (_LEVEL * BINS // 256 * BINS).astype(np.int16)
_VAL_BIN = (_LEVEL * BINS // 256).astype(np.int16)


def hsv_bins(clip: np.ndarray) -> np.ndarray:
    """(T, H, W) joint HSV bin in [0, BINS^3) of a uint8 RGB clip; OpenCV's 8-bit hue spans 0..179."""
    hsv = cv2.cvtColor(clip.reshape(-1, clip.shape[2], 3), cv2.COLOR_RGB2HSV).reshape(clip.shape)
    return _HUE_BIN[hsv[..., 0]] + _SAT_BIN[hsv[..., 1]] + _VAL_BIN[hsv[..., 2]]


def corner_shift(transforms: np.ndarray, h: float, w: float) -> float:
    """How far the camera moved: the largest displacement of a corner (0 or w, 0 or h) under (..., 2, 3) transforms,
    computed in the transforms' own float type."""
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=transforms.dtype).T
    return float(np.abs(transforms @ corners - corners[:2]).max())


def _similarity(src: np.ndarray, dst: np.ndarray, scale: float) -> np.ndarray:
    """2x3 transform mapping src onto dst (grey uint8 frames tracked at `scale` of full size), identity when
    tracking fails or finds no real move. The translation is returned in full-size pixels."""
    # Corners kept apart spread over the frame, so the background's share of them follows its share of the area
    # (a finely textured mover would otherwise collect most of them and pull RANSAC to its own motion).
    spacing = max(4, min(src.shape) // 8)
    corners = cv2.goodFeaturesToTrack(src, maxCorners=MAX_TRACKS, qualityLevel=0.01, minDistance=spacing, blockSize=5)
    identity = np.float32([[1, 0, 0], [0, 1, 0]])
    if corners is None or len(corners) < MIN_TRACKS:
        return identity
    moved, status, _ = cv2.calcOpticalFlowPyrLK(src, dst, corners, None, winSize=(9, 9), maxLevel=2)
    ok = status.ravel() == 1
    if ok.sum() < MIN_TRACKS:
        return identity
    matrix, _ = cv2.estimateAffinePartial2D(corners[ok], moved[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if matrix is None:
        return identity
    matrix[:, 2] /= scale
    h, w = src.shape
    if corner_shift(matrix, h / scale, w / scale) < STILL:  # tracking jitter, not a camera move: keep pixels exact
        return identity
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


def camera_motion(grey: np.ndarray) -> list[np.ndarray]:
    """The camera's frame-to-frame motion of a (T, H, W) grey clip: T - 1 similarity transforms (2x3 float32),
    the i-th mapping frame i onto frame i + 1, tracked on frames shrunk to TRACK_SIDE."""
    t, h, w = grey.shape
    scale = min(1.0, TRACK_SIDE / min(h, w))
    if scale < 1.0:
        small = np.stack([cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in grey])
    else:
        small = grey
    small = np.ascontiguousarray(small.astype(np.uint8))
    return [_similarity(small[i], small[i + 1], scale) for i in range(t - 1)]


def half_size(clip: np.ndarray) -> np.ndarray:
    """A (T, H, W, 3) clip at half its height and width, in one resize call: the frames stacked vertically, 2x2
    area blocks never straddle two frames. An odd last row or column is dropped first, which keeps OpenCV on its
    fast exact-halving path (eight times faster than a 171 -> 85 area resize)."""
    t, h, w, _ = clip.shape
    tall = np.ascontiguousarray(clip[:, : h // 2 * 2, : w // 2 * 2]).reshape(-1, w // 2 * 2, 3)
    return cv2.resize(tall, (w // 2, tall.shape[0] // 2), interpolation=cv2.INTER_AREA).reshape(t, h // 2, w // 2, 3)


def grey_frames(clip: np.ndarray) -> np.ndarray:
    """(T, H, W) float32 grey levels of a (T, H, W, 3) uint8 RGB clip."""
    t, h, w, _ = clip.shape
    return cv2.cvtColor(clip.reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(t, h, w).astype(np.float32)


def as_camera(forward: list[np.ndarray], half: bool) -> np.ndarray:
    """(T - 1, 2, 3) float32 camera motion in a clip's own pixels, from transforms tracked on the clip itself or,
    with `half`, on its `half_size` version."""
    if not forward:
        return np.zeros((0, 2, 3), np.float32)
    if not half:
        return np.stack(forward).astype(np.float32)
    to_half = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])  # pixel centres of 2x2 blocks
    back = np.linalg.inv(to_half)
    return np.stack([(back @ np.vstack([m, [0.0, 0.0, 1.0]]) @ to_half)[:2].astype(np.float32) for m in forward])


def clip_camera_motion(clip: np.ndarray) -> np.ndarray:
    """(T - 1, 2, 3) float32 camera motion of an RGB clip in its own pixels, tracked on the same frames
    `motion_masks_and_camera` tracks, so both give the same value: for callers whose masks came without one."""
    half = min(clip.shape[1:3]) > WORK_SIDE
    return as_camera(camera_motion(grey_frames(half_size(clip) if half else clip)), half)


def motion_evidence(grey: np.ndarray, forward: list[np.ndarray]) -> np.ndarray:
    """(T, H, W) float32 residual motion per frame after compensating the camera's `forward` motion (as
    `camera_motion` gives it)."""
    t = len(grey)
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


def edge_levels(evidence: np.ndarray, threshold: float) -> np.ndarray:
    """(T,) per-frame level at which a frame's blurred evidence counts as foreground: half the typical height of its
    moving region (a blurred step crosses half its height on the true edge), never below the noise threshold.
    Cutting at the noise threshold alone would put the outline a blur radius outside the mover."""
    t = len(evidence)
    values = evidence[:, ::2, ::2].reshape(t, -1)  # every other pixel is plenty for a percentile
    level = np.full(t, threshold, np.float64)
    for i, row in enumerate(values):
        moving = row[row > threshold]  # a partial sort of the moving values alone: no full sort of each frame
        if len(moving) > MIN_MOVING:
            rank = int(MOVING_PERCENTILE / 100 * (len(moving) - 1))
            level[i] = max(threshold, EDGE_HEIGHT * float(np.partition(moving, rank)[rank]))
    return level.astype(np.float32)


def motion_masks(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8 soft foreground probability x 255, per frame."""
    return motion_masks_and_camera(clip)[0]


def motion_masks_and_camera(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 RGB -> the (T, H, W) uint8 masks of `motion_masks` and the (T - 1, 2, 3) float32 camera
    motion they compensated (as `clip_camera_motion` gives it): the plate step reuses it instead of tracking again.

    Frames larger than WORK_SIDE (short side) are processed at half size and the soft masks scaled back: the masks
    are smooth, and the mask costs a quarter as much next to decoding."""
    t, h, w, _ = clip.shape
    if t < 2:
        return np.zeros((t, h, w), np.uint8), as_camera([], False)
    if min(h, w) > WORK_SIDE:
        small, forward = soft_masks(half_size(clip))
        return quantise_at(small, h, w), as_camera(forward, True)
    soft, forward = soft_masks(clip)
    return _quantise(soft), as_camera(forward, False)


def quantise_at(soft: np.ndarray, h: int, w: int) -> np.ndarray:
    """(T, h', w') float32 probabilities -> (T, h, w) uint8 multiples of LEVELS, resized (bilinear) when h', w'
    differ from h, w."""
    t = len(soft)
    if soft.shape[1:] == (h, w):
        return _quantise(soft)
    if t <= 512:  # OpenCV's channel limit: all frames as channels of one image, resized in one call
        large = cv2.resize(np.ascontiguousarray(soft.transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(_quantise(large.reshape(h, w, t)).transpose(2, 0, 1))
    return _quantise(np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in soft]))


def _quantise(soft: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 multiples of LEVELS."""
    steps = cv2.convertScaleAbs(soft.reshape(soft.shape[0], -1), alpha=255 / LEVELS)  # rounds to nearest
    return (steps * np.uint8(LEVELS)).reshape(soft.shape)


def soft_masks(clip: np.ndarray, forward: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(T, H, W) float32 foreground probability in [0, 1] of a (T, H, W, 3) uint8 clip at its own size, and the
    camera motion (`camera_motion`) it compensated: `forward` when given (tracked already), else tracked here."""
    t, h, w, _ = clip.shape
    grey = grey_frames(clip)
    forward = camera_motion(grey) if forward is None else forward
    k = max(3, (min(h, w) // 24) | 1)
    evidence = np.stack([cv2.GaussianBlur(e, (k, k), 0) for e in motion_evidence(grey, forward)])
    sample = evidence[:, ::3, ::3]  # robust statistics need no full sort of every pixel
    median = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - median)))
    threshold = median + max(NOISE_K * spread, FLOOR)  # over the typical residual: flicker moves the median
    level = edge_levels(evidence, threshold)[:, None, None]
    soft = np.clip((evidence - 0.5 * level) / level, 0.0, 1.0)
    if soft.max() < 0.5:
        return np.zeros((t, h, w), np.float32), forward

    fg_seed, bg_seed = soft >= 0.9, soft <= 0.05
    if fg_seed.sum() > 16 and bg_seed.sum() > 16:
        bins = hsv_bins(clip)
        n = BINS**3
        fg = np.bincount(bins[fg_seed], minlength=n).astype(np.float32)
        bg = np.bincount(bins[bg_seed], minlength=n).astype(np.float32)
        posterior = (fg / fg.sum()) / (fg / fg.sum() + bg / bg.sum() + 1e-6)
        colour = posterior[bins]
        grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        near = np.stack([cv2.dilate((s >= 0.5).astype(np.uint8), grow) for s in soft]).astype(bool)
        inner = np.stack([cv2.erode((s >= 0.5).astype(np.uint8), grow) for s in soft]).astype(bool)
        band = near & ~inner  # where the blurred motion edge is uncertain, colour decides most of the way
        soft = np.where(band, (1 - COLOUR_WEIGHT) * soft + COLOUR_WEIGHT * colour, soft)
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    soft = np.stack([_fill_holes(cv2.morphologyEx(s.astype(np.float32), cv2.MORPH_CLOSE, close)) for s in soft])
    padded = np.concatenate([soft[:1], soft, soft[-1:]])
    soft = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return soft.astype(np.float32), forward

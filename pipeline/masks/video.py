"""The `video` mask method: masks from a background model of the whole video (or a window of it around each clip),
which only an offline build, decoding every frame anyway, can afford.

1. Frames: the clips' own and every MODEL_STEP-th frame of the video (`model_frames`), at `motion`'s work size.
2. Camera: neighbouring frames are tracked as `motion` tracks a clip (`camera_motion`) and chained onto a reference
   frame, the middle one of a segment.
3. Segments: a cut (a jump in the colour histogram between neighbours) starts a new model, and so does every WINDOW
   source frames of a long shot.
4. Model: per pixel and channel, the median of up to MODEL_MAX aligned frames. Its support is the share of the
   pixel's samples within the noise tolerance of it: a mover that travels leaves a crossed pixel's median and support
   alone; a mover that stays in place (pulses, stops for half the video) lowers its pixels' support, and so does
   background seen by few frames (uncovered by a pan).
5. Per frame: the residual against the model, warped into the frame's view, says P(fg) where the model is sure; the
   per-frame `motion` evidence says it where the model is unsure, the two weighted by the model's confidence.
   Enclosed holes are filled: a mover in place changes only at its rim.
6. A segment with too few frames or no usable background (median confidence under ALL_MOTION: all motion) falls
   back to `motion` for its clips.

Plates come from the same model where the camera holds still: per segment, the mean of the model's frames'
samples close to the median, at pixels where the median is the majority (support over MAJORITY), so a mover that
travels, or stops for less than half the shot, never enters it; every clip of the shot gets that plate, and the
pixels it never saw so (a mover in place most of the time) come from the clip's own plate. A panning segment's
clips keep their own plates (`pipeline.plates.background_plate` with these masks): the model's alignment, chained
over the shot, drifts by a pixel or so, which blurs a plate more than a clip's own mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.masks.motion import (
    NOISE_K,
    STILL,
    WORK_SIDE,
    as_camera,
    camera_motion,
    corner_shift,
    edge_levels,
    grey_frames,
    half_size,
    quantise_at,
    soft_masks,
)

MODEL_STEP = 4  # besides the clips' frames, every this many source frames feeds the model
WINDOW = 250  # source frames of one model at most (10 s at 25 fps): a long shot gets a model per window
MODEL_MAX = 24  # aligned frames per median: more add cost, not robustness
MIN_MODEL = 6  # a segment of fewer frames has no model: its clips fall back to `motion`
MIN_SAMPLES = 6  # a pixel seen by fewer aligned frames has a less trusted model (newly uncovered background)
MODEL_FLOOR = 24.0  # grey levels: residuals against the model below this are never foreground (H.264 at web bitrates)
SUPPORT_LO, SUPPORT_HI = 0.55, 0.8  # model support at which confidence starts rising, and where it is full
MAJORITY = 0.5  # model support from which a pixel's samples close to the median are its background (plates)
ALL_MOTION = 0.5  # a segment whose median confidence is under this has no usable background
CUT = 0.5  # Bhattacharyya distance between neighbours' colour histograms that marks a cut
EXPLAINED = 0.2  # a moving region under this share of confident model foreground is a mover in place
RIM = 0.25  # soft level of a rim that encloses a hole
HOLD = 0.3  # share of a clip's frames in which an unchanging pixel is foreground to be held in all
CLOSE = 3  # px: gaps this small in the foreground are closed
CUT_RESIDUAL = 20.0  # grey levels: the median residual of neighbours across a cut
HIST_BINS = 8  # per RGB channel of the cut detector's histogram


@dataclass(frozen=True)
class Model:
    """One segment's background, in its reference frame's view (work size)."""

    lo: int  # first and one-past-last model frame of the segment
    hi: int
    onto: np.ndarray  # (hi - lo, 2, 3) transforms taking each frame onto the reference
    background: np.ndarray  # (h, w, 3) uint8 median of the aligned (blurred) frames
    confidence: np.ndarray  # (h, w) float32 in [0, 1]
    tolerance: float  # residuals (max over channels) above this are not noise
    picks: np.ndarray  # the frames the median was taken over
    clean: np.ndarray  # (len(picks), h, w) bool: the picks' aligned samples that are sure background (for plates)
    still: bool  # no pick moved against the reference (a still camera): its plate needs no resampling


def model_frames(n_frames: int, table: np.ndarray) -> np.ndarray:
    """Sorted source frame numbers the method reads from a video of `n_frames`: its clips' (`table`) and a grid."""
    grid = np.arange(0, n_frames, MODEL_STEP)
    return np.union1d(grid, np.asarray(table).ravel()).astype(np.int64)


def _as3(m: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = m
    return out


def channel_residual(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(..., h, w) uint8: the largest channel's absolute difference of two (..., h, w, 3) uint8 images. OpenCV's
    saturating difference and a max over three slices: numpy's max over a last axis of 3 costs ten times more."""
    d = cv2.absdiff(frame, background) if frame.ndim == 3 else np.abs(frame.astype(np.int16) - background)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).astype(np.uint8)


def _chain(forward: list[np.ndarray], a: int, b: int) -> np.ndarray:
    """2x3 transform taking frame a onto frame b through the neighbour-to-neighbour `forward` transforms."""
    out = np.eye(3)
    for i in range(min(a, b), max(a, b)):
        out = _as3(forward[i]) @ out
    if b < a:
        out = np.linalg.inv(out)
    return out[:2].astype(np.float32)


def _onto(forward: list[np.ndarray], lo: int, hi: int, ref: int) -> np.ndarray:
    """(hi - lo, 2, 3) transforms taking frames lo..hi-1 onto frame ref."""
    out = np.tile(np.eye(3), (hi - lo, 1, 1))
    for j in range(ref - 1, lo - 1, -1):
        out[j - lo] = out[j + 1 - lo] @ _as3(forward[j])
    for j in range(ref + 1, hi):
        out[j - lo] = out[j - 1 - lo] @ np.linalg.inv(_as3(forward[j - 1]))
    return out[:, :2].astype(np.float32)


def _median(values: np.ndarray) -> float:
    """np.median of an array, by a partial sort without its overhead (which is most of the cost on a small frame)."""
    flat = values.ravel()
    k = flat.size // 2
    if flat.size % 2:
        return float(np.partition(flat, k)[k])
    low, high = np.partition(flat, [k - 1, k])[k - 1 : k + 1]
    return float((low + high) / 2)


def cuts(frames: np.ndarray, forward: list[np.ndarray] | None = None) -> np.ndarray:
    """(F - 1,) bool: a cut between frame i and i + 1: their colour histograms differ (Bhattacharyya distance over
    CUT), or most of frame i + 1 differs from frame i moved by the camera (`forward`, tracked when None): a median
    grey residual over CUT_RESIDUAL, where neighbours in one shot differ by a few levels."""
    f, h, w, _ = frames.shape
    step = max(1, min(h, w) // 32)  # a cut changes the whole frame: a coarse sample shows it
    small = frames[:, ::step, ::step] // (256 // HIST_BINS)
    codes = (small[..., 0].astype(np.int32) * HIST_BINS + small[..., 1]) * HIST_BINS + small[..., 2]
    hists = [np.bincount(c.ravel(), minlength=HIST_BINS**3).astype(np.float32) for c in codes]
    grey = grey_frames(frames)
    forward = camera_motion(grey) if forward is None else forward
    out = np.zeros(max(f - 1, 0), bool)
    for i in range(f - 1):
        moved = cv2.warpAffine(grey[i], forward[i], (w, h), borderMode=cv2.BORDER_REPLICATE)
        residual = _median(np.abs(grey[i + 1] - moved)[::step, ::step])
        distance = cv2.compareHist(hists[i], hists[i + 1], cv2.HISTCMP_BHATTACHARYYA)
        out[i] = distance > CUT or residual > CUT_RESIDUAL
    return out


def segments(numbers: np.ndarray, cut: np.ndarray) -> list[tuple[int, int]]:
    """(lo, hi) index ranges of the model frames that share one model: split at cuts and every WINDOW frames."""
    out, lo = [], 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or cut[i - 1] or numbers[i] - numbers[lo] >= WINDOW:
            out.append((lo, i))
            lo = i
    return out


def _warp(image: np.ndarray, m: np.ndarray, size: tuple[int, int], still: bool, **kwargs) -> np.ndarray:
    return image if still else cv2.warpAffine(image, m, size, **kwargs)


def fit_model(blurred: np.ndarray, forward: list[np.ndarray], lo: int, hi: int) -> Model | None:
    """The background model of frames lo..hi-1 (work size, blurred), or None when it is not usable."""
    if hi - lo < MIN_MODEL:
        return None
    _, h, w, _ = blurred.shape
    onto = _onto(forward, lo, hi, (lo + hi) // 2)
    picks = np.unique(np.linspace(lo, hi - 1, min(hi - lo, MODEL_MAX)).round().astype(int))
    samples = np.empty((len(picks), h, w, 3), np.uint8)
    valid = np.ones((len(picks), h, w), bool)
    ones = np.ones((h, w), np.float32)
    moved = np.array([corner_shift(onto[j - lo], h - 1, w - 1) > STILL for j in picks])
    for k, j in enumerate(picks):
        m = onto[j - lo]
        samples[k] = _warp(blurred[j], m, (w, h), not moved[k], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if moved[k]:
            valid[k] = cv2.warpAffine(ones, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0) >= 0.999
    n_valid = valid.sum(axis=0)
    ordered = np.sort(np.where(valid[..., None], samples, np.uint8(255)), axis=0)  # missing samples sort last
    middle = np.maximum(n_valid - 1, 0) // 2
    background = np.take_along_axis(ordered, middle[None, :, :, None], axis=0)[0]
    residual = np.stack([channel_residual(sample, background) for sample in samples])
    noise = residual[valid][::7]
    median = float(np.median(noise))
    spread = 1.4826 * float(np.median(np.abs(noise - median)))
    tolerance = median + max(NOISE_K * spread, MODEL_FLOOR)
    support = ((residual <= tolerance) & valid).sum(axis=0) / np.maximum(n_valid, 1)
    confidence = np.clip((support - SUPPORT_LO) / (SUPPORT_HI - SUPPORT_LO), 0, 1)
    confidence *= np.clip(n_valid / MIN_SAMPLES, 0, 1)
    if float(np.median(confidence)) < ALL_MOTION:
        return None
    clean = (residual <= tolerance) & valid & (support >= MAJORITY) & (n_valid >= MIN_SAMPLES)
    return Model(lo, hi, onto, background, confidence.astype(np.float32), tolerance, picks, clean, not moved.any())


def model_view(model: Model, frame: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(residual, confidence) of frame j (work size, blurred) against the model, in j's view: the residual is the
    largest channel's absolute difference."""
    h, w = frame.shape[:2]
    m = cv2.invertAffineTransform(model.onto[j - model.lo])
    still = corner_shift(m, h - 1, w - 1) <= STILL
    background = _warp(model.background, m, (w, h), still, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    confidence = _warp(model.confidence, m, (w, h), still, flags=cv2.INTER_LINEAR, borderValue=0.0)
    residual = channel_residual(frame, background).astype(np.float32)
    return residual, confidence


def _unexplained(motion: np.ndarray, combined: np.ndarray, model_fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`combined`, raised to `motion` on each moving region of `motion` that the model barely explains (under
    EXPLAINED of it is confident model foreground): a mover the model has taken for background (it stays in place);
    and those regions (bool)."""
    binary = (motion >= 0.5).astype(np.uint8)
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    if n <= 1:
        return combined, np.zeros(motion.shape, bool)
    area = np.bincount(labels.ravel(), minlength=n)
    explained = np.bincount(labels.ravel(), weights=model_fg.ravel(), minlength=n)
    keep = explained < EXPLAINED * area
    keep[0] = False
    if not keep.any():
        return combined, np.zeros(motion.shape, bool)
    region = cv2.dilate(keep[labels].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return np.where(region, np.maximum(combined, motion), combined), region


def _hold(
    soft: np.ndarray, in_place: np.ndarray, clip: np.ndarray, forward: list[np.ndarray], model: Model | None
) -> np.ndarray:
    """Raise to foreground, in every frame of a clip, the pixels (aligned on its middle frame) that are found as part
    of a mover in place (`in_place`: unexplained motion or an enclosed hole) in at least HOLD of its frames and do not
    change over it: the inside of a mover in place, whose rim closes in some frames only."""
    from pipeline.plates import onto_reference

    if not in_place.any():  # nothing in place: nothing to hold
        return soft
    t, h, w = soft.shape
    tolerance = model.tolerance if model is not None else MODEL_FLOOR
    onto = onto_reference(np.stack(forward), t // 2)
    grey = grey_frames(clip)
    still = [corner_shift(m, h - 1, w - 1) <= STILL for m in onto]
    fg = np.stack(
        [_warp(s, m, (w, h), st, flags=cv2.INTER_LINEAR) for s, m, st in zip(in_place, onto, still, strict=True)]
    )
    aligned = np.stack(
        [_warp(g, m, (w, h), st, borderMode=cv2.BORDER_REPLICATE) for g, m, st in zip(grey, onto, still, strict=True)]
    )
    held = ((fg >= 0.5).mean(axis=0) >= HOLD) & (aligned.max(axis=0) - aligned.min(axis=0) <= tolerance)
    if not held.any():
        return soft
    held = held.astype(np.float32) * 0.75
    back = [
        _warp(held, cv2.invertAffineTransform(m), (w, h), st, flags=cv2.INTER_LINEAR)
        for m, st in zip(onto, still, strict=True)
    ]
    return np.maximum(soft, np.stack(back))


def _fill(soft: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Close small gaps and raise the enclosed holes of the foreground to it: a mover in place changes only at its
    rim, and a rim with weak evidence (under 0.5) still encloses its inside (at RIM). Also the holes (bool)."""
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    closed = cv2.morphologyEx(soft, cv2.MORPH_CLOSE, close)
    rim = (closed >= RIM).astype(np.uint8)
    contours, _ = cv2.findContours(rim, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(rim)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    holes = filled > rim
    return np.maximum(closed, holes * np.float32(0.75)), holes


def video_masks_and_plates(frames: np.ndarray, numbers: np.ndarray, table: np.ndarray) -> tuple:
    """Masks (n, T, h, w) uint8 and plates (n, h, w, 3) uint8 of a video's clips. `frames` (F, h, w, 3) uint8 RGB are
    the frames numbered `numbers` (sorted; `model_frames` says which to give), `table` (n, T) the clips' frames."""
    from pipeline.plates import background_plate

    f, h, w, _ = frames.shape
    n, t = table.shape
    half = min(h, w) > WORK_SIDE
    work = half_size(frames) if half else frames
    wh, ww = work.shape[1:3]
    grey = grey_frames(work)
    forward = camera_motion(grey)
    blurred = np.stack([cv2.GaussianBlur(x, (3, 3), 0) for x in work])
    models: list[Model | None] = []
    owner = np.empty(f, np.int64)
    for lo, hi in segments(numbers, cuts(work, forward)):
        owner[lo:hi] = len(models)
        models.append(fit_model(blurred, forward, lo, hi))
    rows = np.searchsorted(numbers, table)
    masks = np.empty((n, t, h, w), np.uint8)
    plates = np.empty((n, h, w, 3), np.uint8)
    soft_all = np.empty((n, t, wh, ww), np.float32)
    for c in range(n):
        pos = rows[c]
        clip_forward = [_chain(forward, int(pos[i]), int(pos[i + 1])) for i in range(t - 1)]
        soft, _ = soft_masks(work[pos], clip_forward)
        in_place = np.zeros(soft.shape, np.float32)
        for i, j in enumerate(pos):
            model = models[owner[j]]
            if model is not None:
                residual, confidence = model_view(model, blurred[j], int(j))
                level = float(edge_levels(residual[None], model.tolerance)[0])
                p_model = np.clip((residual - 0.5 * level) / level, 0, 1)
                combined = confidence * p_model + (1 - confidence) * soft[i]
                combined, unexplained = _unexplained(soft[i], combined, (p_model >= 0.5) & (confidence >= 0.5))
                soft[i], holes = _fill(combined, CLOSE)
                in_place[i] = unexplained | holes
        if any(models[owner[j]] is not None for j in pos):
            soft = _hold(soft, in_place, blurred[pos], clip_forward, models[owner[pos[t // 2]]])
        soft_all[c] = soft
    for c in range(n):
        masks[c] = quantise_at(soft_all[c], h, w)
    mosaics = [segment_plate(frames, model) if model is not None and model.still else None for model in models]
    for c in range(n):
        pos = rows[c]
        mosaic = mosaics[owner[int(pos[t // 2])]]
        holes = None
        if mosaic is not None:  # a still shot: its plate, the same for each of its clips
            plates[c], holes = mosaic[0], ~mosaic[1]
            if not holes.any():
                continue
        camera = as_camera([_chain(forward, int(pos[i]), int(pos[i + 1])) for i in range(t - 1)], half)
        own = background_plate(frames[pos], masks[c], camera)
        plates[c] = own if holes is None else np.where(holes[..., None], own, plates[c])
    return masks, plates


def segment_plate(frames: np.ndarray, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """A still shot's background at the frames' full size: per pixel, the mean of the picks' samples the model
    calls sure background (close to its median, where it is confident), and where some pick saw it so (bool). A
    mover that travels never enters it; one that stays in place leaves its pixels unsure, so unseen."""
    from pipeline.plates import mosaic

    h, w = frames.shape[1:3]
    clean = model.clean
    if clean.shape[1:] != (h, w):  # the model's work size: each sample's flags at full size
        clean = np.stack([cv2.resize(c.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for c in clean])
    onto = np.tile(np.float32([[1, 0, 0], [0, 1, 0]]), (len(model.picks), 1, 1))
    return mosaic(frames[model.picks], onto, clean.view(bool))

"""Mask methods on clips whose true foreground is known, and on real videos."""

from __future__ import annotations

import colorsys
import itertools
import math

import cv2
import numpy as np
import pytest

from pipeline.masks import get_method
from pipeline.masks.fame import fame_masks
from pipeline.masks.motion import camera_motion, motion_masks
from pipeline.plates import background_plate
from pipeline.video import decode, write_video
from synthetic import MASK_SCENES, Scene, render

PAN, PAN_DIAGONAL, STATIC = (MASK_SCENES[name] for name in ("pan", "pan_diagonal", "static"))


def mean_iou(masks: np.ndarray, truth: np.ndarray) -> float:
    pred = masks >= 128
    inter = (pred & truth).sum(axis=(1, 2))
    union = np.maximum((pred | truth).sum(axis=(1, 2)), 1)
    return float(np.mean(inter / union))


def gaussian_blur(image: np.ndarray) -> np.ndarray:
    """The authors' blur written out: odd kernel of 0.1 x the short side, sigma kernel / 3, mirrored borders."""
    h, w = image.shape
    k = int(0.1 * min(h, w)) // 2 * 2 + 1
    r, sigma = k // 2, k / 3
    weights = [math.exp(-((i - r) ** 2) / (2 * sigma**2)) for i in range(k)]
    weights = [x / sum(weights) for x in weights]

    def mirror(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    rows = [[sum(weights[j] * image[y, mirror(x + j - r, w)] for j in range(k)) for x in range(w)] for y in range(h)]
    return np.array(
        [[sum(weights[j] * rows[mirror(y + j - r, h)][x] for j in range(k)) for x in range(w)] for y in range(h)]
    )


def min_max(image: np.ndarray) -> np.ndarray:
    low = image.min()
    return (image - low) / ((image - low).max() + 1e-8)


def fame_transcription(clip: np.ndarray) -> np.ndarray:
    """The FAME steps written plainly, pixel by pixel, as a reference for the vectorised version."""
    t, h, w, _ = clip.shape
    diff = np.zeros((h, w))
    for i in range(1, t):
        for y in range(h):
            for x in range(w):
                diff[y, x] += sum(abs(int(clip[i, y, x, c]) - int(clip[i - 1, y, x, c])) for c in range(3)) / 255
    motion = min_max(gaussian_blur(diff / (t - 1)))
    by_motion = sorted(range(h * w), key=lambda p: motion[p // w, p % w])  # stable: ties keep pixel order
    background, foreground = by_motion[: int(0.1 * h * w)], by_motion[h * w - int(0.5 * h * w) :]
    colour = {}
    for y in range(h):
        for x in range(w):
            r, g, b = (sum(int(clip[i, y, x, c]) for i in range(t)) / t / 255 for c in range(3))
            hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
            wheel_x = round((sat * math.cos(2 * math.pi * hue) + 1) / 2 * 9)
            wheel_y = round((sat * math.sin(2 * math.pi * hue) + 1) / 2 * 9)
            colour[y * w + x] = (wheel_x, wheel_y, round(val * 9))
    fg_hist = {key: 0 for key in itertools.product(range(10), repeat=3)}
    bg_hist = {key: 1 for key in fg_hist}  # one extra count per background bin
    for p in foreground:
        fg_hist[colour[p]] += 1
    for p in background:
        bg_hist[colour[p]] += 1
    fg_total, bg_total = sum(fg_hist.values()), sum(bg_hist.values())
    posterior = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            pf, pb = fg_hist[colour[y * w + x]] / fg_total, bg_hist[colour[y * w + x]] / bg_total
            posterior[y, x] = pf / (pf + pb)
    mask = min_max(gaussian_blur(posterior))
    return np.repeat(np.round(mask * 255)[None], t, axis=0)


@pytest.mark.parametrize(
    "scene",
    [
        Scene(size=(40, 48), n_frames=5, pan=(0.5, 1.0), object_radius=(9, 7), shape_change=0.2),
        Scene(size=(36, 44), n_frames=4, object_radius=(8, 7), background_seed=3),  # still background: tied seeds
    ],
    ids=["pan", "static"],
)
def test_fame_matches_the_transcription(scene):
    frames, _ = render(scene)
    ours = fame_masks(frames)
    assert ours.shape == frames.shape[:3] and ours.dtype == np.uint8
    assert (ours == ours[:1]).all(), "one static mask per clip"
    error = np.abs(ours.astype(np.float64) - fame_transcription(frames))
    assert error.max() <= 1, f"max difference {error.max()}"
    assert 0.05 < (ours >= 128).mean() < 0.95, "a mask, not a constant"


def best_iou(masks: np.ndarray, truth: np.ndarray) -> float:
    """IoU at the threshold that suits the mask best: a comparison that cannot be lost to the choice of 128."""
    return max(mean_iou(np.where(masks >= level, 255, 0), truth) for level in range(17, 256, 17))


@pytest.mark.parametrize("scene", [PAN, PAN_DIAGONAL], ids=["pan", "pan-diagonal"])
def test_motion_beats_fame_with_a_panning_camera(scene):
    frames, truth = render(scene)
    ours = mean_iou(motion_masks(frames), truth)
    paper = best_iou(fame_masks(frames), truth)
    assert ours >= 0.7, f"motion IoU {ours:.3f}"
    assert ours > paper + 0.3, f"motion {ours:.3f} vs fame at its best threshold {paper:.3f}"


def test_motion_on_encoded_h264_panning(tmp_path):
    frames, truth = render(PAN)
    write_video(tmp_path / "pan.mp4", frames)
    decoded, _ = decode(str(tmp_path / "pan.mp4"))
    assert decoded.shape == frames.shape
    ours = mean_iou(motion_masks(decoded), truth)
    assert ours >= 0.7 and ours > best_iou(fame_masks(decoded), truth) + 0.3, f"motion IoU {ours:.3f}"


def test_static_camera():
    frames, truth = render(STATIC)
    ours = mean_iou(motion_masks(frames), truth)
    paper = best_iou(fame_masks(frames), truth)
    assert ours >= 0.75 and ours > paper + 0.2, f"motion {ours:.3f} vs fame at its best threshold {paper:.3f}"


def test_camera_motion_is_recovered():
    frames, _ = render(PAN)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    centre = np.array([PAN.size[1] / 2, PAN.size[0] / 2, 1.0])
    shifts = np.array([m @ centre - centre[:2] for m in camera_motion(grey)])  # (dx, dy); the background moves -pan
    assert np.abs(shifts - [-PAN.pan[1], -PAN.pan[0]]).max() < 0.3, shifts
    flat = np.full((3, 40, 48), 100, np.uint8)
    assert all((m == np.float32([[1, 0, 0], [0, 1, 0]])).all() for m in camera_motion(flat)), "no texture: identity"


def test_no_motion_gives_an_empty_mask_and_shapes():
    frames, _ = render(Scene(size=(48, 64), n_frames=6, object_velocity=(0.0, 0.0)))
    for name in ("fame", "motion"):
        masks = get_method(name)(frames)
        assert masks.shape == (6, 48, 64) and masks.dtype == np.uint8
        assert (masks >= 128).mean() < 0.01, name
        assert get_method(name)(frames[:1]).shape == (1, 48, 64)
    flat = np.full((4, 48, 64, 3), 90, np.uint8)
    assert not motion_masks(flat).any() and not fame_masks(flat).any()


def test_camera_moves_but_nothing_else_does():
    frames, _ = render(Scene(size=(48, 64), n_frames=8, pan=(0.0, 2.0), object_radius=(0.1, 0.1)))
    assert (motion_masks(frames) >= 128).mean() < 0.01


def test_textureless_flickering_frames_fall_back_gracefully():
    frames = np.full((8, 48, 64, 3), 120, np.uint8)
    frames[:, 20:30] = 200  # one edge: too little texture to track the camera
    frames[::2] += 8  # global brightness flicker moves every pixel's residual alike
    assert (motion_masks(frames) >= 128).mean() < 0.01


@pytest.mark.parametrize(
    "scene",
    [
        Scene(size=(64, 80), n_frames=8, pan=(0.0, 2.0), object_velocity=(0.0, 0.0)),  # the camera follows a subject
        Scene(size=(64, 80), n_frames=2, pan=(0.0, 2.0)),
        Scene(size=(64, 80), n_frames=2),
    ],
    ids=["followed-subject", "two-frames-pan", "two-frames-static"],
)
def test_short_and_followed_clips(scene):
    frames, truth = render(scene)
    masks = motion_masks(frames)
    assert masks.shape == truth.shape and masks.dtype == np.uint8
    assert mean_iou(masks, truth) >= 0.7


def test_real_videos_give_non_trivial_masks(real_videos):
    for path in sorted(real_videos.glob("*.mp4")):
        clip, _ = decode(str(path), size=(128, 171), keep=range(0, 32, 2))
        for name in ("fame", "motion"):
            fraction = float((get_method(name)(clip) >= 128).mean())
            assert 0.005 < fraction < 0.9, f"{path.name} {name}: foreground fraction {fraction:.3f}"
        plate = background_plate(clip, motion_masks(clip))
        assert plate.shape == (128, 171, 3) and 20 < plate.mean() < 235

"""Mask methods on clips whose true foreground is known, and on real videos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.masks import get_method
from pipeline.masks.fame import fame_masks
from pipeline.masks.motion import motion_masks
from pipeline.plates import background_plate
from pipeline.synthetic import Scene, render, write_video
from pipeline.video import decode

PAN = Scene(size=(128, 172), n_frames=16, pan=(0.5, 2.0), shape_change=0.25, object_radius=(26, 20))
PAN_DIAGONAL = Scene(
    size=(128, 172),
    n_frames=16,
    pan=(-1.0, -1.5),
    object_velocity=(1.0, 3.0),
    shape_change=0.3,
    object_radius=(22, 18),
    background_seed=5,
    object_seed=7,
)
STATIC = Scene(size=(128, 172), n_frames=16, object_radius=(26, 20))


def mean_iou(masks: np.ndarray, truth: np.ndarray) -> float:
    pred = masks >= 128
    inter = (pred & truth).sum(axis=(1, 2))
    union = np.maximum((pred | truth).sum(axis=(1, 2)), 1)
    return float(np.mean(inter / union))


def fame_transcription(clip: np.ndarray) -> np.ndarray:
    """The paper's steps written plainly, pixel by pixel, as a reference for the vectorised version."""
    t, h, w, _ = clip.shape
    grey = [[[sum(int(c) for c in clip[i, y, x]) / 3.0 for x in range(w)] for y in range(h)] for i in range(t)]
    diff = np.zeros((h, w), np.float32)
    for i in range(1, t):
        for y in range(h):
            for x in range(w):
                diff[y, x] += abs(grey[i][y][x] - grey[i - 1][y][x]) / (t - 1)
    k = max(3, (min(h, w) // 20) | 1)
    motion = cv2.GaussianBlur(diff, (k, k), 0)
    motion = (motion - motion.min()) / (motion.max() - motion.min())
    fg_cut, bg_cut = np.quantile(motion, 0.5), np.quantile(motion, 0.1)
    fg_hist, bg_hist = {}, {}
    bins = {}
    for i in range(t):
        hsv = cv2.cvtColor(clip[i], cv2.COLOR_RGB2HSV)
        for y in range(h):
            for x in range(w):
                hh, ss, vv = (int(c) for c in hsv[y, x])
                key = (hh * 10 // 180, ss * 10 // 256, vv * 10 // 256)
                bins[i, y, x] = key
                if motion[y, x] >= fg_cut:
                    fg_hist[key] = fg_hist.get(key, 0) + 1
                if motion[y, x] <= bg_cut:
                    bg_hist[key] = bg_hist.get(key, 0) + 1
    fg_total, bg_total = sum(fg_hist.values()), sum(bg_hist.values())
    posterior = np.zeros((h, w), np.float32)
    for i in range(t):
        for y in range(h):
            for x in range(w):
                key = bins[i, y, x]
                pf, pb = fg_hist.get(key, 0) / fg_total, bg_hist.get(key, 0) / bg_total
                posterior[y, x] += pf / (pf + pb + 1e-6) / t
    mask = cv2.GaussianBlur(posterior, (k, k), 0)
    mask = (mask - mask.min()) / (mask.max() - mask.min())
    return np.repeat(np.round(mask * 255)[None], t, axis=0)


def test_fame_matches_the_transcription():
    frames, _ = render(Scene(size=(40, 48), n_frames=5, object_radius=(9, 7)))
    ours = fame_masks(frames).astype(np.float32)
    reference = fame_transcription(frames)
    assert ours.shape == (5, 40, 48) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 2


@pytest.mark.parametrize("scene", [PAN, PAN_DIAGONAL], ids=["pan", "pan-diagonal"])
def test_motion_beats_fame_with_a_panning_camera(scene):
    frames, truth = render(scene)
    ours = mean_iou(motion_masks(frames), truth)
    paper = mean_iou(fame_masks(frames), truth)
    assert ours >= 0.7, f"motion IoU {ours:.3f}"
    assert ours > paper + 0.2, f"motion {ours:.3f} vs fame {paper:.3f}"


def test_motion_on_encoded_h264_and_static_camera(tmp_path):
    frames, truth = render(STATIC)
    write_video(tmp_path / "static.mp4", frames)
    decoded, _ = decode(str(tmp_path / "static.mp4"))
    assert mean_iou(motion_masks(decoded), truth) >= 0.7


def test_no_motion_gives_an_empty_mask_and_shapes():
    frames, _ = render(Scene(size=(48, 64), n_frames=6, object_velocity=(0.0, 0.0)))
    for name in ("fame", "motion"):
        masks = get_method(name)(frames)
        assert masks.shape == (6, 48, 64) and masks.dtype == np.uint8
        assert (masks >= 128).mean() < 0.01, name
    two = render(Scene(size=(48, 64), n_frames=2))[0]
    assert motion_masks(two).shape == (2, 48, 64)
    flat = np.full((4, 48, 64, 3), 90, np.uint8)
    assert not motion_masks(flat).any() and not fame_masks(flat).any()


def test_real_videos_give_non_trivial_masks(real_videos):
    for path in sorted(real_videos.glob("*.mp4")):
        clip, _ = decode(str(path), size=(128, 171), keep=range(0, 32, 2))
        for name in ("fame", "motion"):
            fraction = float((get_method(name)(clip) >= 128).mean())
            assert 0.005 < fraction < 0.9, f"{path.name} {name}: foreground fraction {fraction:.3f}"
        plate = background_plate(clip, motion_masks(clip))
        assert plate.shape == (128, 171, 3) and 20 < plate.mean() < 235


def test_plate_reveals_the_background_behind_the_mover():
    scene = Scene(size=(64, 80), n_frames=16, object_velocity=(0.0, 3.0), object_radius=(10, 8))
    frames, truth = render(scene)
    background, _ = render(Scene(size=(64, 80), n_frames=1, object_radius=(0.1, 0.1)))
    plate = background_plate(frames, truth.astype(np.uint8) * 255)
    passed = truth.any(axis=0) & ~truth.all(axis=0)
    error = np.abs(plate.astype(int) - background[0].astype(int))[passed].mean()
    assert error < 3, f"plate differs from the true background by {error:.1f} where the object passed"
    everywhere = background_plate(frames, np.full(truth.shape, 255, np.uint8))
    assert everywhere.shape == (64, 80, 3) and everywhere.dtype == np.uint8

"""Background plates on generated clips whose true background is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.masks import get_method, get_step
from pipeline.masks.motion import clip_camera_motion
from pipeline.plates import background_plate, mosaic
from synthetic import Scene, render

SIZE = (64, 80)
MOVER = Scene(size=SIZE, n_frames=16, object_velocity=(0.0, 3.0), object_radius=(10, 8))


def true_background() -> np.ndarray:
    """The scene's background alone: the same seed rendered with a vanishing object."""
    frames, _ = render(Scene(size=SIZE, n_frames=1, object_radius=(0.1, 0.1)))
    return frames[0].astype(int)


def test_plate_reveals_the_background_behind_the_mover():
    frames, truth = render(MOVER)
    plate = background_plate(frames, truth.astype(np.uint8) * 255)
    assert plate.shape == (*SIZE, 3) and plate.dtype == np.uint8
    passed = truth.any(axis=0) & ~truth.all(axis=0)
    assert passed.mean() > 0.1
    error = np.abs(plate.astype(int) - true_background())[passed].mean()
    assert error < 2, f"plate differs from the true background by {error:.1f} where the object passed"
    naive = np.abs(frames.mean(axis=0) - true_background())[passed].mean()
    assert naive > 5 * max(error, 1), "the clip's plain mean would also have passed: the test says nothing"


def test_plate_from_computed_masks():
    frames, truth = render(MOVER)
    passed = truth.any(axis=0) & ~truth.all(axis=0)
    naive = np.abs(frames.mean(axis=0) - true_background())[passed].mean()
    plate = background_plate(frames, get_method("motion")(frames))
    error = np.abs(plate.astype(int) - true_background())[passed].mean()
    assert error < naive / 2, f"motion: plate error {error:.1f} vs the plain mean's {naive:.1f}"
    # fame's one static mask covers the whole path of the mover, so its plate is mostly filled in: valid, not exact.
    static = background_plate(frames, get_method("fame")(frames))
    assert static.shape == (*SIZE, 3) and static.dtype == np.uint8 and static.std() > 5


def test_plate_follows_a_panning_camera():
    scene = dataclasses.replace(MOVER, n_frames=12, pan=(0.5, 1.5))
    frames, truth = render(scene)
    middle, _ = render(dataclasses.replace(scene, object_radius=(0.1, 0.1)))
    middle = middle[len(frames) // 2].astype(int)  # the plate is the middle frame's view of the background
    inside = np.zeros(truth.shape[1:], bool)
    inside[4:-4, 6:-6] = True  # away from the borders that the pan uncovers
    masks = get_method("motion")(frames)
    error = np.abs(background_plate(frames, masks).astype(int) - middle)[inside].mean()
    smeared = np.abs(background_plate(frames, masks, compensate_camera=False).astype(int) - middle)[inside].mean()
    assert error < 10 and error < smeared / 3, f"plate error {error:.1f}, without camera compensation {smeared:.1f}"


def test_holes_are_filled_from_their_surroundings():
    frames = np.full((6, *SIZE, 3), (40, 160, 90), np.uint8)
    frames[:, :, :, 0] += np.arange(SIZE[1], dtype=np.uint8)[None, None, :] // 4  # a gentle ramp left to right
    masks = np.zeros((6, *SIZE), np.uint8)
    masks[:, 20:44, 30:54] = 255  # foreground in every frame: no background sample there
    plate = background_plate(frames, masks)
    assert plate.shape == (*SIZE, 3) and plate.dtype == np.uint8
    outside = masks[0] < 128
    assert (plate[outside] == frames[0][outside]).all(), "pixels with samples are their mean, untouched"
    hole_error = np.abs(plate.astype(int) - frames[0].astype(int))[~outside]
    assert hole_error.max() <= 12, f"hole filled {hole_error.max()} grey levels off its surroundings"


def test_all_foreground_and_bad_shapes():
    frames, _ = render(MOVER)
    everywhere = background_plate(frames, np.full(frames.shape[:3], 255, np.uint8))
    assert everywhere.shape == (*SIZE, 3) and everywhere.dtype == np.uint8
    assert np.abs(everywhere.astype(int) - frames.mean(axis=0)).max() <= 1
    with pytest.raises(ValueError, match="masks"):
        background_plate(frames, np.zeros((3, *SIZE), np.uint8))


@pytest.mark.parametrize("size", [SIZE, (112, 144)])  # the second is tracked at half size
def test_camera_from_the_mask_step_gives_the_plate_tracked_anew(size):
    frames, _ = render(dataclasses.replace(MOVER, size=size, n_frames=8, pan=(0.5, 1.5)))
    result = get_step("motion")(frames)
    np.testing.assert_array_equal(result.masks, get_method("motion")(frames))
    assert result.camera.shape == (7, 2, 3) and result.camera.dtype == np.float32
    assert np.abs(result.camera[..., 0, 2]).min() > 1, "the pan is in the camera motion"
    np.testing.assert_array_equal(result.camera, clip_camera_motion(frames))
    given = background_plate(frames, result.masks, result.camera)
    np.testing.assert_array_equal(given, background_plate(frames, result.masks))
    assert get_step("fame")(frames).camera is None
    with pytest.raises(ValueError, match="camera"):
        background_plate(frames, result.masks, result.camera[1:])


def test_mosaic_is_the_mean_of_flagged_samples():
    """The shot plate of the `video` method: per pixel, the mean of the samples flagged background; unflagged
    pixels are unseen."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    clean = rng.random((4, 6, 8)) < 0.6
    clean[:, 0, 0] = False
    onto = np.tile(np.float32([[1, 0, 0], [0, 1, 0]]), (4, 1, 1))
    plate, seen = mosaic(frames, onto, clean)
    count = clean.sum(axis=0)
    expected = np.round((frames * clean[..., None]).sum(axis=0) / np.maximum(count, 1)[..., None])
    np.testing.assert_array_equal(seen, count > 0)
    assert not seen[0, 0]
    np.testing.assert_array_equal(plate[seen], expected[seen].astype(np.uint8))

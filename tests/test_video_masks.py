"""The `video` mask method: a background model of the whole video, with `motion` where the model is unsure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.build import build_cache
from pipeline.cache import Cache
from pipeline.job import frames_read, video_outputs
from pipeline.masks import get_method
from pipeline.masks.motion import motion_masks_and_camera
from pipeline.masks.video import cuts, model_frames, segments, video_masks_and_plates
from pipeline.params import BuildParams
from pipeline.plan import clip_frames
from pipeline.plates import background_plate
from synthetic import Scene, render, write_dataset

SIZE = (96, 128)
CLIPS = BuildParams(size=SIZE, clip_len=8, stride=2, clips_per_video=None)
MOVER = {"size": SIZE, "n_frames": 64, "object_radius": (12.0, 10.0), "object_velocity": (0.5, 1.5)}


def iou(masks: np.ndarray, truth: np.ndarray) -> float:
    pred = masks >= 128
    return float(np.mean((pred & truth).sum(axis=(1, 2)) / np.maximum((pred | truth).sum(axis=(1, 2)), 1)))


def per_clip(frames: np.ndarray, truth: np.ndarray, params: BuildParams = CLIPS):
    """(video IoUs, motion IoUs) per clip, and the video method's masks and plates."""
    table = clip_frames(len(frames), params)
    masks, plates = video_masks_and_plates(frames, np.arange(len(frames)), table)
    motion = [iou(get_method("motion")(frames[rows]), truth[rows]) for rows in table]
    return [iou(m, truth[rows]) for m, rows in zip(masks, table, strict=True)], motion, masks, plates


@pytest.mark.parametrize("pan", [(0.0, 0.0), (0.3, 0.8)], ids=["still", "panning"])
def test_known_mover_found_better_than_motion(pan):
    frames, truth = render(Scene(**MOVER, pan=pan))
    video, motion, masks, plates = per_clip(frames, truth)
    assert min(video) >= 0.72, video
    assert np.mean(video) >= np.mean(motion) + 0.05, (video, motion)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= set(range(0, 256, 51))
    assert plates.shape == (len(masks), *SIZE, 3) and plates.dtype == np.uint8


def test_mover_that_stops_half_way_leaves_no_ghost():
    """The model sees the stopped mover half the time: while it still moves, the place where it will stand must not
    light up (a plain median makes it background there, and the uncovered background a ghost)."""
    scene = Scene(**MOVER, stop_at=32)
    frames, truth = render(scene)
    video, motion, masks, _ = per_clip(frames, truth)
    assert min(video[:2]) >= 0.72, video  # the moving half
    assert all(v >= m - 0.02 for v, m in zip(video[2:], motion[2:], strict=True)), (video, motion)
    where_it_stops = truth[-1]
    table = clip_frames(len(frames), CLIPS)
    early = [i for i, rows in enumerate(table) if not truth[rows][:, where_it_stops].any()]
    assert early, "the scene should show the stop location free at first"
    assert max((masks[i][:, where_it_stops] >= 128).mean() for i in early) < 0.05


def test_cut_splits_the_model():
    first, truth_a = render(Scene(**{**MOVER, "n_frames": 32}, background_seed=3, object_seed=4))
    second, truth_b = render(Scene(**{**MOVER, "n_frames": 32}, background_seed=8, object_seed=9, pan=(0.0, 0.6)))
    frames, truth = np.concatenate([first, second]), np.concatenate([truth_a, truth_b])
    numbers = np.arange(64)
    assert segments(numbers, cuts(frames)) == [(0, 32), (32, 64)]
    video, motion, _, plates = per_clip(frames, truth)
    assert min(video) >= 0.6 and min(video[2:]) >= max(motion[2:]), (video, motion)
    # Every clip's plate shows its own shot: close to its middle frame's background, far from the other shot.
    for rows, plate in zip(clip_frames(64, CLIPS), plates, strict=True):
        middle = rows[len(rows) // 2]
        other = second[0] if middle < 32 else first[0]
        background = ~truth[middle]
        own_error = np.abs(plate.astype(int) - frames[middle])[background].mean()
        other_error = np.abs(plate.astype(int) - other)[background].mean()
        assert own_error < 8 and other_error > 4 * own_error, (own_error, other_error)


def test_all_motion_video_falls_back_to_motion_per_clip():
    """Nothing holds still (every frame a new texture): no background model; each clip gets exactly `motion`."""
    rng = np.random.default_rng(0)
    frames = np.stack(
        [render(Scene(size=SIZE, n_frames=1, background_seed=int(s)))[0][0] for s in rng.integers(1 << 30, size=64)]
    )
    table = np.arange(0, 64, 4).reshape(2, 8)  # two 8-frame clips at stride 4: on the model's grid
    read = model_frames(64, table)  # what the build decodes: here the grid, which holds every clip frame
    masks, plates = video_masks_and_plates(frames[read], read, table)
    for rows, mask, plate in zip(table, masks, plates, strict=True):
        expected, camera = motion_masks_and_camera(frames[rows])
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_array_equal(plate, background_plate(frames[rows], expected, camera))


def test_frames_read_and_half_size_frames():
    table = clip_frames(100, BuildParams(size=SIZE, clip_len=8, stride=2, clips_per_video=2))
    read = frames_read(100, table, "video")
    np.testing.assert_array_equal(read, model_frames(100, table))
    assert set(table.ravel()) <= set(read) and set(range(0, 100, 4)) <= set(read)
    np.testing.assert_array_equal(frames_read(100, table, "motion"), np.unique(table))
    # Frames over 96 px (short side) are worked on at half size; the outputs come back at full size.
    frames, truth = render(Scene(size=(128, 172), n_frames=40, object_radius=(16.0, 14.0), object_velocity=(0.6, 2.0)))
    table = clip_frames(40, BuildParams(size=(128, 172), clip_len=8, stride=2, clips_per_video=2))
    masks, plates = video_outputs(frames, np.arange(40), table, "video")
    assert masks.shape == (2, 8, 128, 172) and plates.shape == (2, 128, 172, 3)
    assert min(iou(m, truth[rows]) for m, rows in zip(masks, table, strict=True)) >= 0.7


def test_get_method_refuses_the_whole_video_method():
    with pytest.raises(ValueError, match="whole video"):
        get_method("video")


def test_build_with_video_masks_is_deterministic(tmp_path):
    """The build reads the model's frames too, and rebuilding writes the same bytes."""
    src = tmp_path / "videos"
    write_dataset(src, n_classes=2, videos_per_class=1, n_frames=48, seed=3, size=(64, 96))
    params = BuildParams(size=(64, 96), clip_len=8, stride=2, clips_per_video=2, method="video")
    stores = []
    for name in ("a.zarr", "b.zarr"):
        report = build_cache(str(src), str(tmp_path / name), params, progress=False)
        assert report.n_done == 2 and report.n_failed == 0
        stores.append(Cache.open(str(tmp_path / name)))
    a, b = stores
    assert a.params.method == "video"
    for c in a.readable_clips():
        assert a.check_clip(int(c))
        mask = a.mask(int(c))
        np.testing.assert_array_equal(mask, b.mask(int(c)))
        np.testing.assert_array_equal(a.plate(int(c)), b.plate(int(c)))
        assert 0 < (mask >= 128).mean() < 0.5


def test_still_shot_plate_has_no_ghost_where_a_clips_plate_has_one():
    """A mover that stops for the last third of a still shot: `motion` sees nothing in those clips, so their own
    plate (a clip's mean) holds the mover; the shot's background model saw the place empty most of the time, so
    the `video` plate shows the background there, and every clip of the shot gets the same plate."""
    scene = Scene(**MOVER, stop_at=44)
    frames, truth = render(scene)
    background, _ = render(dataclasses.replace(scene, object_radius=(1e-3, 1e-3)))  # the scene without its mover
    table = clip_frames(len(frames), CLIPS)
    _, _, _, plates = per_clip(frames, truth)
    stopped = [c for c, rows in enumerate(table) if rows[0] >= 44]
    assert stopped, "the scene should have clips after the stop"
    for c in stopped:
        rows = table[c]
        where = truth[rows].all(axis=0)  # under the mover throughout the clip
        masks, camera = motion_masks_and_camera(frames[rows])
        own = background_plate(frames[rows], masks, camera)
        ghost = np.abs(own.astype(int) - background[rows[0]])[where].mean()
        error = np.abs(plates[c].astype(int) - background[rows[0]])[where].mean()
        assert ghost > 20 and error < 3, (ghost, error)
    same = (plates == plates[0]).all(axis=-1).mean(axis=(1, 2))  # one plate for the shot, but where it never saw
    assert same.min() >= 0.97, same  # its background for sure (there, each clip's own)

"""The background-bias generator: motion alone defines the class, movers stay in frame, splits swap backgrounds,
and one seed gives the same frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bias_scenes import (
    CLASSES,
    MOVER_AREAS,
    draw_split,
    load_real_frames,
    look_palette,
    render,
    write_bias_set,
)

SIZE = (96, 128)


@pytest.fixture(scope="module")
def pool(real_videos) -> list[np.ndarray]:
    return load_real_frames(real_videos, per_video=2)


def centroids(masks: np.ndarray) -> np.ndarray:
    """(T, 2) centre (y, x) of each frame's mask."""
    yy, xx = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]]
    area = masks.sum((1, 2))
    return np.stack([(masks * yy).sum((1, 2)) / area, (masks * xx).sum((1, 2)) / area], axis=1)


@pytest.mark.parametrize("mover", list(MOVER_AREAS))
def test_each_class_moves_its_own_way_inside_the_frame(pool, mover):
    specs = draw_split(3, 1, True, mover, SIZE, 24, 24.0)
    lo, hi = MOVER_AREAS[mover]
    for spec in specs:
        _, masks = render(spec, pool)
        area = masks.mean((1, 2))
        centre = centroids(masks)
        span = centre.max(0) - centre.min(0)  # (dy, dx) travelled
        # Never cut by the frame's edge; the evaluation crop keeps the middle 80% of the width.
        assert masks[:, 0].sum() == masks[:, -1].sum() == 0
        assert masks[:, :, : SIZE[1] // 8].sum() == masks[:, :, -SIZE[1] // 8 :].sum() == 0
        name = CLASSES[spec.motion]
        if name == "pulse":
            assert span.max() < 1.0 and area.max() / area.min() > 1.5
            assert lo * 0.9 < np.median(area) < hi * 1.1
            continue
        assert lo * 0.9 < area.mean() < hi * 1.1 and area.std() < 0.01
        if name == "side_to_side":
            assert span[1] > 4 and span[0] < 1
        elif name == "up_down":
            assert span[0] > 2 and span[1] < 1
        else:  # circle and corner to corner move on both axes; only the diagonal keeps them in lockstep
            assert span.min() > 2
            dy, dx = np.diff(centre, axis=0).T
            lockstep = abs(np.corrcoef(dy, dx)[0, 1])
            assert lockstep > 0.95 if name == "corner_to_corner" else lockstep < 0.9


def test_training_backgrounds_follow_the_class_and_test_backgrounds_never_do():
    train = draw_split(1, 40, True, "small", SIZE, 24, 24.0)
    test = draw_split(2, 20, False, "small", SIZE, 24, 24.0)
    match = np.mean([s.family == s.motion for s in train])
    assert 0.9 <= match < 1.0
    assert all(s.family != s.motion for s in test)
    others = {(s.motion, s.family) for s in test}
    assert len(others) == len(CLASSES) * (len(CLASSES) - 1)  # every other family shows up
    assert 0.3 < np.mean([s.pan != (0.0, 0.0) for s in train]) < 0.7


def test_same_seed_same_videos_and_layout(pool, tmp_path):
    a = draw_split(5, 2, True, "actor", SIZE, 16, 24.0)
    b = draw_split(5, 2, True, "actor", SIZE, 16, 24.0)
    assert a == b
    np.testing.assert_array_equal(render(a[0], pool)[0], render(b[0], pool)[0])
    train, test = write_bias_set(tmp_path / "a", "small", 1, 1, n_frames=8, pool=pool)
    assert sorted(p.parent.name for p in train.glob("*/*.mp4")) == sorted(CLASSES)
    assert len(list(test.glob("*/*.mp4"))) == len(CLASSES)
    assert (train / "manifest.json").is_file()
    again, _ = write_bias_set(tmp_path / "b", "small", 1, 1, n_frames=8, pool=pool)
    for video in sorted(train.glob("*/*.mp4")):
        assert video.read_bytes() == (again / video.relative_to(train)).read_bytes()


def test_shared_looks_come_from_one_palette_for_both_splits(pool, tmp_path):
    """With `looks`, every mover of both splits wears one of the palette's looks, whatever its class; without, each
    video draws its own."""
    train, test = write_bias_set(tmp_path / "shared", "small", 4, 2, n_frames=4, pool=pool, looks=2)
    palette = set(look_palette(2, 0))
    rows = [r for split in (train, test) for r in json.loads((split / "manifest.json").read_text())]
    worn = {(r["mover_seed"], r["mover_hue"]) for r in rows}
    assert worn == palette  # both looks worn, nothing else
    assert {r["motion"] for r in rows if (r["mover_seed"], r["mover_hue"]) == min(palette)} != {rows[0]["motion"]}
    own, _ = write_bias_set(tmp_path / "own", "small", 4, 2, n_frames=4, pool=pool)
    rows = json.loads((own / "manifest.json").read_text())
    assert len({(r["mover_seed"], r["mover_hue"]) for r in rows}) == len(rows)


def test_widths_that_encode_differently_from_run_to_run_are_refused(pool, tmp_path):
    with pytest.raises(ValueError, match="multiple of 64"):
        write_bias_set(tmp_path, "small", 1, 1, size=(64, 80), pool=pool)


def test_cross_validated_decodability_tells_held_information_from_none():
    import torch

    from benchmarks.bias import cv_top1

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 20)
    held = torch.as_tensor(np.eye(5)[labels] + 0.1 * rng.standard_normal((100, 5)), dtype=torch.float32)
    noise = torch.as_tensor(rng.standard_normal((100, 16)), dtype=torch.float32)
    assert cv_top1(held, labels) == 1.0
    assert cv_top1(noise, labels) < 0.4  # chance is 0.2: nothing to decode, nothing decoded


def test_bias_benchmark_runs_the_issue_arms_by_default_and_named_extras_on_request():
    from benchmarks.bias import DEFAULT_ARMS, QUICK_ARMS, parse_args, select_arms

    assert list(select_arms(parse_args([]))) == list(DEFAULT_ARMS)
    assert {"moco", "fame_paper", "fame", "fame+semi", "fame+semi+micro"} <= set(DEFAULT_ARMS)
    assert "supervised" in select_arms(parse_args(["--arms", "supervised"]))
    assert list(select_arms(parse_args(["--quick"]))) == list(QUICK_ARMS)
    assert select_arms(parse_args(["--arms", "moco", "fame+still"]))["fame+still"] == {"still_negatives": True}

"""The swapped-background test (`pipeline.swap`, `fame-train eval --protocol swapped`, `fame-pipeline swap-test`).

Data: generated videos whose class sets both the background's colour and the mover's colour, with exact masks and
plates in a cache. Features made by hand: one reads only the frame's corners, where the mover never goes (it sees
the background only), the other only the centre, which the mover always covers (it sees the foreground only). A
probe fitted on the unmodified training videos must then follow the background or the action on the swapped clips.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers import N_FRAMES, SIZE, T, cache_of

from pipeline.cache import Cache
from pipeline.cli import main as pipeline_main
from pipeline.loader.params import LoaderParams
from pipeline.sources import list_source
from pipeline.swap import SwapError, draw_swaps, paste, read_swapped
from pipeline.video import decode_clip, write_video
from synthetic import Scene, render
from trainer.cli import main as train_main
from trainer.config import TrainConfig
from trainer.evaluate import EvalError, EvalSettings, evaluate

BACKGROUND_HUES = (0, 60, 120)  # per class: red, green, blue scenes
MOVER_HUES = (30, 90, 150)  # per class: orange, cyan, purple movers
SETTINGS = EvalSettings(clip_len=T, stride=2, clips_per_video=2, size=SIZE, crop=24)
PATCH = 4  # side of the patches the hand-made features average


class CornerColour(torch.nn.Module):
    """Mean colour of the crop's four corner patches: the mover stays in the middle, so this sees the scene only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = PATCH
        corners = [x[..., :p, :p], x[..., :p, -p:], x[..., -p:, :p], x[..., -p:, -p:]]
        return torch.cat([c.mean(dim=(2, 3, 4)) for c in corners], dim=1)


class CentreColour(torch.nn.Module):
    """Mean colour of the crop's central patch, which the mover always covers: this sees the action's actor only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = (h - PATCH) // 2, (w - PATCH) // 2
        return x[..., top : top + PATCH, left : left + PATCH].mean(dim=(2, 3, 4))


def video(label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mover of its class's colour over a scene of its class's colour, near the middle of a 32x40 frame."""
    scene = Scene(
        size=SIZE,
        n_frames=N_FRAMES,
        object_radius=(7.0, 6.0),
        object_velocity=(0.0, 0.5),
        background_seed=1000 * label + seed,
        object_seed=5000 + 1000 * label + seed,
        background_hue=BACKGROUND_HUES[label],
        object_hue=MOVER_HUES[label],
    )
    return render(scene)


def train_set(root) -> str:
    for label in range(3):
        for seed in range(3):
            frames, _ = video(label, 100 + seed)
            write_video(root / f"class_{label}" / f"v{seed}.mp4", frames, lossless=True)
    return str(root)


def swapped_cache(root, still: bool = False, classes: tuple[int, ...] = (0, 1, 2), labelled: bool = True) -> str:
    videos = []
    for label in classes:
        for seed in range(3):
            frames, truth = video(label, seed)
            videos.append((f"class_{label}/t{seed}.mp4", f"class_{label}" if labelled else "", frames, truth))
    if still:  # a video whose cached mask is empty (as for a clip where nothing moves)
        frames, truth = video(0, 9)
        videos.append(("class_0/still.mp4", "class_0", frames, np.zeros_like(truth)))
    return cache_of(root, videos)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("swapped")
    return {"train": train_set(root / "train"), "cache": swapped_cache(root / "test", still=True)}


def test_paste_takes_the_clip_where_the_mask_is_foreground_at_the_default_threshold():
    frames = np.full((2, 1, 4, 3), 200, np.uint8)
    plate = np.full((1, 4, 3), 10, np.uint8)
    mask = np.array([[[0, 127, 128, 255]], [[255, 128, 127, 0]]], np.uint8)  # FOREGROUND_THRESHOLD is 128
    out = paste(frames, mask, plate)
    assert out[0, 0, :, 0].tolist() == [10, 10, 200, 200]
    assert out[1, 0, :, 0].tolist() == [200, 200, 10, 10]


def test_background_features_follow_the_scene(data):
    metrics = evaluate(CornerColour(), data["train"], None, ("swapped",), SETTINGS, swap_set=draw_swaps(data["cache"]))
    assert metrics["linear_top1"] == 1.0  # the unmodified test: scene and actor agree
    assert metrics["swapped_bg_top1"] >= 0.9
    assert metrics["swapped_top1"] <= 0.1  # chance is 1/3; a partner is always of another class
    assert metrics["background_only_top1"] >= 0.9


def test_foreground_features_follow_the_action(data):
    metrics = evaluate(CentreColour(), data["train"], None, ("swapped",), SETTINGS, swap_set=draw_swaps(data["cache"]))
    assert metrics["linear_top1"] == 1.0
    assert metrics["swapped_top1"] >= 0.9
    assert metrics["swapped_bg_top1"] <= 0.1


def test_plan_is_deterministic_for_a_seed_and_pairs_other_classes(data):
    first, again, other = (draw_swaps(data["cache"], seed=seed) for seed in (0, 0, 1))
    assert first == again
    assert [p.partner_video for p in first.pairs] != [p.partner_video for p in other.pairs]
    assert all(p.background_label != p.label for p in first.pairs)
    assert all(first.labels[p.partner_video] == p.background_label for p in first.pairs)
    for clips_a, clips_b in zip(read_swapped(first), read_swapped(again), strict=True):
        for a, b in zip(clips_a, clips_b, strict=True):
            assert np.array_equal(a.swapped, b.swapped) and np.array_equal(a.background, b.background)


def test_empty_masks_are_left_out_and_counted(data):
    swap_set = draw_swaps(data["cache"])
    still = swap_set.paths.index("class_0/still.mp4")
    assert swap_set.empty_masks == 2  # the still video's two clips
    assert still not in {p.video for p in swap_set.pairs}
    assert len(swap_set.pairs) == 9 * 2 and swap_set.n_videos == 9


def test_swapped_clip_is_the_foreground_over_the_partner_plate(data):
    swap_set = draw_swaps(data["cache"])
    item = next(read_swapped(swap_set))[0]
    assert swap_set.paths[item.pair.video] == "class_0/t0.mp4"
    frames, truth = (a[list(item.pair.frames)] for a in video(0, 0))
    assert truth.any() and (~truth).any()
    cache = Cache.open(data["cache"])
    partner_plate, own_plate = cache.plate(item.pair.partner_clip), cache.plate(item.pair.clip)
    assert np.array_equal(item.original, frames)
    assert np.array_equal(item.swapped[truth], frames[truth])  # the mover is the clip's own
    assert np.array_equal(item.swapped[~truth], np.broadcast_to(partner_plate, frames.shape)[~truth])  # the scene not
    assert np.array_equal(item.background, np.broadcast_to(own_plate, frames.shape))


def test_swap_test_exports_the_set_with_both_labels(data, tmp_path):
    out, picture = tmp_path / "swapped", tmp_path / "swap.png"
    assert pipeline_main(["swap-test", data["cache"], "--out", str(out), "--seed", "0", "--preview", str(picture)]) == 0
    assert picture.stat().st_size > 1000
    swap_set = draw_swaps(data["cache"], seed=0)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == len(swap_set.pairs)
    for row, pair in zip(rows, swap_set.pairs, strict=True):
        assert row["label"] == row["source_video"].split("/")[0] == pair.label
        assert row["background_label"] == row["background_video"].split("/")[0] == pair.background_label
        assert row["label"] != row["background_label"]
    first = next(read_swapped(swap_set))[0]
    exported = decode_clip(str(out / rows[0]["path"]), range(T))
    assert np.array_equal(exported, first.swapped)  # lossless: the pixels eval scores
    assert np.array_equal(decode_clip(str(out / rows[0]["background_path"]), range(T)), first.background)
    listed = list_source(str(out / "labels.csv"))  # readable as a labelled list: `fame-train eval --test`
    assert {e.path: e.label for e in listed.entries} == {r["path"]: r["label"] for r in rows}
    assert pipeline_main(["swap-test", data["cache"], "--out", str(out)]) == 1  # never mixes two sets


def test_refuses_caches_it_cannot_swap(tmp_path):
    one_class = swapped_cache(tmp_path / "one", classes=(1,))
    with pytest.raises(SwapError, match="one class only") as info:
        draw_swaps(one_class)
    assert one_class in str(info.value)
    unlabelled = swapped_cache(tmp_path / "unlabelled", labelled=False)
    with pytest.raises(SwapError, match="no class label"):
        draw_swaps(unlabelled)
    with pytest.raises(SwapError, match="no cache here"):
        draw_swaps(str(tmp_path / "missing.zarr"))


def test_eval_refuses_a_test_cache_that_does_not_match(data):
    other = EvalSettings(clip_len=T + 2, stride=2, clips_per_video=2, size=SIZE, crop=24)
    with pytest.raises(EvalError, match="test cache holds clips of 4 frames") as info:
        evaluate(CornerColour(), data["train"], None, ("swapped",), other, swap_set=draw_swaps(data["cache"]))
    assert data["cache"] in str(info.value)
    with pytest.raises(EvalError, match="go together"):
        evaluate(CornerColour(), data["train"], None, ("swapped",), SETTINGS)
    two_classes = f"{data['train']}/two_classes.csv"  # the training videos of classes 0 and 1 only
    with open(two_classes, "w") as handle:
        handle.writelines(f"class_{c}/v{v}.mp4,class_{c}\n" for c in (0, 1) for v in range(3))
    with pytest.raises(EvalError, match="classes not in the training set") as info:
        evaluate(CornerColour(), two_classes, None, ("swapped",), SETTINGS, swap_set=draw_swaps(data["cache"]))
    assert data["cache"] in str(info.value)


def test_cli_eval_swapped(data, tmp_path, monkeypatch, capsys):
    config = TrainConfig(loader=LoaderParams(crop=24))
    monkeypatch.setattr("trainer.checkpoint.load_backbone", lambda path: (CornerColour(), config))
    metrics_path, picture, checkpoint = tmp_path / "metrics.json", tmp_path / "preview.png", tmp_path / "run.pt"
    checkpoint.touch()  # must exist (else usage error, exit 2); the patched load_backbone never reads it
    args = ["eval", str(checkpoint), "--train", data["train"], "--test-cache", data["cache"]]
    args += ["--protocol", "swapped,knn"]
    assert train_main([*args, "--json", str(metrics_path), "--preview", str(picture)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics.pop("setup")["protocols"] == ["swapped", "knn"]  # what was measured (test_run_folder.py)
    assert set(metrics) == {
        "linear_top1",
        "linear_confusion",
        "knn_top1",
        "swapped_top1",
        "swapped_bg_top1",
        "background_only_top1",
        "swapped_videos",
        "swapped_clips",
        "swapped_empty_masks",
        "swapped_damaged_clips",
    }
    assert metrics["swapped_bg_top1"] >= 0.9 and metrics["swapped_top1"] <= 0.1
    assert (metrics["swapped_clips"], metrics["swapped_empty_masks"], metrics["swapped_damaged_clips"]) == (18, 2, 0)
    assert picture.stat().st_size > 1000 and (tmp_path / "metrics_confusion.png").stat().st_size > 1000
    assert train_main([*args, "--size", "48x64"]) == 1
    assert data["cache"] in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        train_main(["eval", "run.pt", "--train", data["train"]])
    assert info.value.code == 2

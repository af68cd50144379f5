"""Evaluation protocols, the command line, and the micro-bias heat map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_cache

from synthetic import Scene, write_scene
from trainer.cli import main
from trainer.evaluate import EvalError, EvalSettings, confusion, evaluate, knn, retrieval


class ColourFeatures(torch.nn.Module):
    """A fixed 'backbone' whose features are mean colours: classes that differ in colour are separable."""

    out_dim = 3

    def forward(self, x):
        return x.mean(dim=(2, 3, 4))


def coloured_set(root, seed: int) -> str:
    rng = np.random.default_rng(seed)
    for label, hue in (("red", 0), ("green", 60), ("blue", 120)):
        for v in range(3):
            scene = Scene(
                size=(48, 64),
                n_frames=10,
                background_hue=hue,
                object_hue=hue,
                background_seed=int(rng.integers(1 << 20)),
                object_seed=int(rng.integers(1 << 20)),
            )
            write_scene(root / label / f"v{v}.mp4", scene)
    return str(root)


SMALL = EvalSettings(clip_len=4, stride=2, clips_per_video=2, size=(48, 64), crop=40)


def test_separable_set_is_near_perfect(tmp_path):
    train = coloured_set(tmp_path / "train", 0)
    test = coloured_set(tmp_path / "test", 1)
    metrics = evaluate(ColourFeatures(), train, test, settings=SMALL)
    assert set(metrics) == {
        "linear_top1",
        "linear_confusion",
        "knn_top1",
        "retrieval_r1",
        "retrieval_r5",
        "retrieval_r10",
        "retrieval_r20",
    }
    assert metrics["linear_top1"] >= 0.99 and metrics["knn_top1"] >= 0.99 and metrics["retrieval_r1"] >= 0.99
    table = metrics["linear_confusion"]
    matrix = np.array(table["matrix"])
    assert matrix.sum() == 9 and np.trace(matrix) == 9  # three test videos per class, every one right
    assert all(v == 1.0 for v in table["per_class_top1"].values())


def test_confusion_by_hand():
    """Rows are the true class, columns the prediction; a class with no test video has no top-1."""
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))  # predicts 0 for x, 1 for y
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # predicted a, b, b, b
    y = torch.tensor([0, 0, 0, 1])  # true a, a, a, b
    out = confusion(head, x, y, ["a", "b", "c"])
    assert out["matrix"] == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert out["per_class_top1"] == {"a": pytest.approx(1 / 3), "b": 1.0, "c": None}


def test_knn_and_retrieval_by_hand():
    train = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    test = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9]])
    assert knn(train, labels, test, torch.tensor([0, 2]), k=1) == 1.0
    out = retrieval(train, labels, test, torch.tensor([1, 2]))
    assert out["retrieval_r1"] == 0.5 and out["retrieval_r5"] == 1.0


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    train = coloured_set(tmp_path / "train", 0)
    with pytest.raises(EvalError, match="empty dataset"):
        evaluate(ColourFeatures(), train, str(tmp_path / "empty"), settings=SMALL)
    with pytest.raises(EvalError, match="unknown protocol"):
        evaluate(ColourFeatures(), train, train, protocols=("top5",), settings=SMALL)
    assert main(["eval", str(tmp_path / "missing.pt"), "--train", train, "--test", train]) == 2  # usage


def test_cli_pretrain_eval_plot_heatmap(tmp_path):
    cache = make_cache(tmp_path / "data", n_videos=8, textured=True)
    run = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--cache",
            cache,
            "--out",
            str(run),
            "--backbone",
            "small",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--crop",
            "24",
            "--queue-size",
            "16",
            "--workers",
            "0",
            "--no-fame",
            "--micro",
            "--micro-block",
            "1",
        ]
    )
    assert code == 0 and (run / "checkpoint.pt").exists()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "micro" in records[0] and "contrastive" in records[0]
    assert main(["plot", str(run)]) == 0
    metrics_path = tmp_path / "metrics.json"
    data = str(tmp_path / "data")
    assert (
        main(
            [
                "eval",
                str(run / "checkpoint.pt"),
                "--train",
                data,
                "--test",
                data,
                "--json",
                str(metrics_path),
                "--clip-len",
                "4",
                "--clips-per-video",
                "1",
                "--size",
                "32x40",
                "--protocol",
                "knn,retrieval",
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert metrics.pop("setup")["protocols"] == ["knn", "retrieval"]  # what was measured (test_run_folder.py)
    assert set(metrics) == {"knn_top1", "retrieval_r1", "retrieval_r5", "retrieval_r10", "retrieval_r20"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    video = next((tmp_path / "data").rglob("*.mp4"))
    for name in ("heat.png", "heat.gif"):
        assert (
            main(["heatmap", str(run / "checkpoint.pt"), str(video), "--out", str(tmp_path / name), "--clip-len", "4"])
            == 0
        )
        assert (tmp_path / name).stat().st_size > 1000

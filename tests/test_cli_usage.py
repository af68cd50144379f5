"""The command lines' usage errors exit 2 with one line naming the bad value and what is allowed (never a traceback);
`pretrain` refuses a run folder that holds a run unless --resume, ends with a summary, and timestamps its log."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from helpers import make_cache

from cache_tools.cli import main as cache_main
from pipeline.cli import main as pipeline_main
from trainer.cli import main as train_main

TINY = ["--backbone", "small", "--epochs", "1", "--batch-size", "2", "--queue-size", "4", "--crop", "24"]
TINY += ["--workers", "0", "--warmup-epochs", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, Path]:
    """A cache and a finished two-step run on it (the cache, the run folder)."""
    root = tmp_path_factory.mktemp("usage")
    cache = make_cache(root, n_videos=4, textured=True)
    out = root / "run"
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY, "--max-steps", "2"]) == 0
    return cache, out


def one_line(capsys) -> str:
    """stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_fame_train_usage_errors_exit_2_naming_the_value(run, tmp_path, capsys):
    cache, out = run
    ckpt, video = str(out / "checkpoint.pt"), str(Path(cache).parent / "class_0" / "video 0.mp4")
    fresh = str(tmp_path / "fresh")
    cases = {
        ("pretrain", "--cache", "nope.zarr", "--out", fresh): "--cache nope.zarr: no such file or folder; expected",
        ("pretrain", "--out", fresh): "--cache CACHE is required",
        ("pretrain", "--cache", cache, "--out", fresh, "--init", "nope.pt"): "--init nope.pt: no such file",
        ("pretrain", "--cache", cache, "--out", fresh, "--backbone", "big"): "backbone must be one of r2plus1d18",
        ("heatmap", ckpt, "nope.mp4", "--out", fresh + ".png"): "VIDEO nope.mp4: no such file or folder",
        ("heatmap", "nope.pt", video, "--out", fresh + ".png"): "CHECKPOINT nope.pt: no such file or folder",
        ("eval", ckpt, "--train", "nope", "--test", "nope"): "--train nope: no such file or folder",
        ("eval", ckpt, "--train", cache, "--test", cache, "--protocol", "lin"): "--protocol 'lin': choose a comma",
        ("eval", ckpt, "--train", cache, "--test", cache, "--size", "12x"): "--size: size must be HxW",
        ("export", "nope.pt", "--out", fresh + ".pt"): "CHECKPOINT nope.pt: no such file or folder",
        ("plot", "nope"): "RUN nope: no such file or folder",
    }
    for argv, message in cases.items():
        assert train_main(list(argv)) == 2, argv
        assert message in one_line(capsys), argv
    with pytest.raises(SystemExit) as stop:
        train_main(["heatmap", ckpt, video, "--out", fresh + ".png", "--block", "9"])
    assert stop.value.code == 2 and "invalid choice: 9 (choose from 0, 1, 2, 3, 4)" in capsys.readouterr().err
    # a file that exists but is not a cache is bad input, not bad usage: exit 1, still one line
    assert train_main(["pretrain", "--cache", video, "--out", fresh, *TINY]) == 1
    assert "no cache here" in one_line(capsys)


def test_preview_and_show_usage_errors_exit_2(run, capsys):
    cache, _ = run
    with pytest.raises(SystemExit) as stop:
        pipeline_main(["preview", "nope.zarr", "--out", "x.png"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("CACHE nope.zarr: no such file or folder; expected a cache made by `fame-pipeline build`")
    )
    with pytest.raises(SystemExit) as stop:
        cache_main(["show", cache, "--clip", "9999", "--out", "x.png"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--clip 9999 is out of range" in err and "has clips 0..7 (8 readable)" in err


def test_pretrain_refuses_a_run_folder_without_resume(run, capsys):
    cache, out = run
    before = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt", "log.jsonl")}
    capsys.readouterr()
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY]) == 2
    assert f"--out {out} already holds a run" in (err := one_line(capsys)) and "--resume" in err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    (out / "checkpoint.pt").unlink()  # any one of the run's files is enough to refuse
    (out / "config.json").unlink()
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY]) == 2
    assert "(log.jsonl)" in one_line(capsys)
    (out / "checkpoint.pt").write_bytes(before["checkpoint.pt"])
    (out / "config.json").write_bytes(before["config.json"])


def test_pretrain_summary_and_log_timestamps(run, tmp_path, capsys):
    cache, _ = run
    out = tmp_path / "run"
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY, "--max-steps", "2"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if "final loss" in line]
    assert len(summary) == 1 and summary[0].startswith("pretrain: 2 steps (to step 2 of "), summary
    assert " s, final loss " in summary[0] and summary[0].endswith("clips/s")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all({"step", "loss", "lr", "clips_per_s", "data_wait"} <= set(r) for r in records)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert all(s.utcoffset() is not None for s in stamps) and stamps[0] <= stamps[1]

"""Run folders as a user meets them: `pretrain --resume` needs no repeated flags and refuses changes that would alter
the run, the bar counts to --max-steps, --tensorboard writes events TensorBoard reads, `eval --json` records what it
measured, and the resume command `fame-cache verify --fix` prints works as printed."""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cache

from cache_tools.cli import main as cache_main
from pipeline.cache import Cache
from pipeline.cli import main as pipeline_main
from trainer.cli import main as train_main

# 4 videos, batch 2: 2 steps per epoch
TINY = ["--backbone", "small", "--batch-size", "2", "--queue-size", "4", "--crop", "24", "--workers", "0"]
TINY += ["--warmup-epochs", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("runs"), n_videos=4, textured=True)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_reads_config_json_and_refuses_other_settings(cache, tmp_path, capsys):
    run = tmp_path / "run"
    first = ["pretrain", "--cache", cache, "--out", str(run), *TINY, "--epochs", "2", "--max-steps", "1"]
    assert train_main(first) == 0
    err = capsys.readouterr().err
    assert "1/1 [" in err and "/4 [" not in err  # the bar counts to where the run stops, not to the whole run
    saved = json.loads((run / "config.json").read_text())

    refusals = {
        ("--lr", "0.5"): "--lr 0.5 (the run has 0.01)",
        ("--crop", "32"): "--crop 32 (the run has 24)",
        ("--no-fame",): "--fame False (the run has True)",
        ("--epochs", "1"): "--epochs 1 is fewer than the run's 2",
        ("--cache", str(tmp_path)): f"--cache {tmp_path} (the run has {cache})",
    }
    for flags, message in refusals.items():
        assert train_main(["pretrain", "--out", str(run), "--resume", *flags]) == 2, flags
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (flags, lines)
        assert "may only grow" in lines[0] if flags[0] == "--epochs" else "only --epochs" in lines[0], lines
    assert json.loads((run / "config.json").read_text()) == saved  # a refusal touches nothing
    assert train_main(["pretrain", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "config.json not found" in capsys.readouterr().err

    # no flag repeated; the harmless ones change: more epochs, checkpoints, workers, TensorBoard
    resumed = ["pretrain", "--out", str(run), "--resume", "--epochs", "3", "--checkpoint-every", "1"]
    assert train_main([*resumed, "--workers", "0", "--tensorboard", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "pretrain: 5 steps (to step 6 of 6)" in err and "pretrain:  " not in err  # --quiet: no bar
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["checkpoint_every"], config["tensorboard"]) == (3, 1, True)
    assert {k: v for k, v in config.items() if k not in ("epochs", "checkpoint_every", "tensorboard")} == {
        k: v for k, v in saved.items() if k not in ("epochs", "checkpoint_every", "tensorboard")
    }
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]

    events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_events(events[0])
    losses = {r["step"]: r["loss"] for r in records(run)[1:]}
    assert {step: values["pretrain/loss"] for step, values in scalars.items()} == pytest.approx(losses, rel=1e-6)
    assert {"pretrain/lr", "pretrain/clips_per_s", "pretrain/data_wait"} <= set(scalars[6])


def test_resumed_tensorboard_run_purges_the_steps_it_takes_again(cache, tmp_path):
    """A resumed run's event file opens with TensorBoard's purge mark at the first step it takes: whatever the
    stopped run logged from there on (steps after its last checkpoint) is hidden, as log.jsonl drops it."""
    run = tmp_path / "run"
    first = ["pretrain", "--cache", cache, "--out", str(run), *TINY, "--epochs", "2", "--tensorboard", "--quiet"]
    assert train_main([*first, "--max-steps", "2"]) == 0
    assert train_main(["pretrain", "--out", str(run), "--resume", "--quiet"]) == 0
    old, new = sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert purge_marks(old) == [] and purge_marks(new) == [3]
    assert sorted(read_events(new)) == [3, 4]


# --- reading TensorBoard's files: the TFRecord framing and CRC-32C checked bit by bit, Event parsed by protobuf ------


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def events_in(path: Path) -> list:
    """The Event records of an event file after its version record, every record's length and checksums checked."""
    from tensorboardX.proto.event_pb2 import Event

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == masked(header)
        body = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == masked(body)
        at += 16 + length
        events.append(Event.FromString(body))
    assert events[0].file_version == "brain.Event:2"
    for event in events[1:]:
        assert event.wall_time > 1e9
    return events[1:]


def read_events(path: Path) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} of an event file's scalars."""
    out = {}
    for event in events_in(path):
        if event.summary.value:  # a purge mark (see purge_marks) has none
            out.setdefault(event.step, {}).update({v.tag: v.simple_value for v in event.summary.value})
    return out


def purge_marks(path: Path) -> list[int]:
    """The steps of an event file's purge marks (SessionLog START events: TensorBoard hides earlier files' records
    from that step on)."""
    from tensorboardX.proto.event_pb2 import SessionLog

    return [
        event.step
        for event in events_in(path)
        if event.HasField("session_log") and event.session_log.status == SessionLog.START
    ]


# --- eval's metrics.json, the verify --fix resume command -------------------------------------------------------------


def test_eval_json_records_checkpoint_videos_and_clip_settings(cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["pretrain", "--cache", cache, "--out", str(run), *TINY, "--epochs", "1", "--quiet"]) == 0
    videos = str(Path(cache).parent)
    metrics = tmp_path / "metrics.json"
    argv = ["eval", str(run / "checkpoint.pt"), "--train", videos, "--test", videos, "--protocol", "knn"]
    assert train_main([*argv, "--clips-per-video", "1", "--json", str(metrics), "--quiet", "--device", "cpu"]) == 0
    data = json.loads(metrics.read_text())
    assert 0.0 <= data["knn_top1"] <= 1.0
    assert "linear_confusion" not in data and not (tmp_path / "metrics_confusion.png").exists()  # no probe, no matrix
    setup = data["setup"]
    assert setup["checkpoint"] == str((run / "checkpoint.pt").resolve())
    assert (setup["train"], setup["test"], setup["protocols"]) == (videos, videos, ["knn"])
    # clip length and frame size come from the run's cache (4 frames, 32x40); the crop from its loader
    assert (setup["clip_len"], setup["size"], setup["crop"], setup["clips_per_video"]) == (4, [32, 40], 24, 1)
    capsys.readouterr()
    assert train_main([*argv, "--clips-per-video", "1", "--json", "--quiet", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["knn_top1"] == data["knn_top1"]  # bare --json: stdout
    # the linear probe's confusion matrix: in the JSON, drawn beside it (or where --confusion says)
    linear = ["eval", str(run / "checkpoint.pt"), "--train", videos, "--test", videos, "--protocol", "linear"]
    probe = tmp_path / "probe.json"
    assert train_main([*linear, "--clips-per-video", "1", "--json", str(probe), "--quiet", "--device", "cpu"]) == 0
    table = json.loads(probe.read_text())["linear_confusion"]
    n_videos = len(list(Path(videos).rglob("*.mp4")))
    assert sum(map(sum, table["matrix"])) == n_videos and set(table["per_class_top1"]) == set(table["classes"])
    assert (tmp_path / "probe_confusion.png").stat().st_size > 0
    capsys.readouterr()
    assert train_main([*linear, "--clips-per-video", "1", "--json", "--confusion", str(tmp_path / "c.png")]) == 0
    assert "linear_confusion" in json.loads(capsys.readouterr().out) and (tmp_path / "c.png").exists()
    assert train_main([*argv, "--confusion", str(tmp_path / "k.png")]) == 2  # knn alone fits no probe
    assert "add linear to --protocol" in capsys.readouterr().err


def test_the_resume_command_verify_fix_prints_works_as_printed(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "c.zarr")
    build = ["build", str(tiny_dataset), "--out", out, "--size", "32x40", "--clip-len", "4", "--stride", "3"]
    assert pipeline_main([*build, "--clips-per-video", "2", "--quiet"]) == 0
    reference = {k: Cache.open(out).root[k][:] for k in ("masks", "plates", "clips/checksum")}
    shard = sorted(p for p in (Path(out) / "masks" / "c").rglob("*") if p.is_file())[0]
    shard.unlink()
    capsys.readouterr()
    assert cache_main(["verify", out, "--fix", "--quiet"]) == 1
    printed = [line for line in capsys.readouterr().err.splitlines() if "fame-pipeline build" in line]
    assert len(printed) == 1, printed
    command = shlex.split(printed[0].split("`")[1])
    assert command[0] == "fame-pipeline"
    assert pipeline_main(command[1:]) == 0  # as printed: no SRC, no build options repeated
    repaired = Cache.open(out)
    assert all(np.array_equal(reference[k], repaired.root[k][:]) for k in reference)
    assert cache_main(["verify", out, "--quiet"]) == 0

"""Bad inputs: each is recorded as failed with a specific reason naming the file; the job goes on and exits 3."""

from __future__ import annotations

import json
import re
import struct

import av
import numpy as np
import pytest

from pipeline.cache import DONE, FAILED, Cache
from pipeline.cli import main
from pipeline.video import write_video
from synthetic import Scene, render

SIZE = (48, 64)  # 3072 pixels; the "huge" video is over --max-pixels 5000


def _audio_only(path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _garbage_packets(good: bytes) -> bytes:
    """The same container with its video payload replaced by noise: opens and probes, but nothing decodes."""
    at = good.find(b"mdat")
    size = struct.unpack(">I", good[at - 4 : at])[0]
    noise = np.random.default_rng(0).integers(0, 256, size - 8, dtype=np.uint8).tobytes()
    return good[: at + 4] + noise + good[at - 4 + size :]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A folder of videos good and bad, and a UCF101-style list file (path, space, class index) kept elsewhere."""
    root = tmp_path_factory.mktemp("videos")
    frames, _ = render(Scene(size=SIZE, n_frames=24))
    write_video(root / "walk" / "good clip é.mp4", frames)
    write_video(root / "walk" / "short.mp4", frames[:3])  # shorter than one clip (span 7): looped
    write_video(root / "run" / "one frame.mp4", frames[:1])
    big, _ = render(Scene(size=(96, 128), n_frames=8))
    write_video(root / "run" / "huge.mp4", big)
    good = (root / "walk" / "good clip é.mp4").read_bytes()
    (root / "run" / "empty.mp4").write_bytes(b"")
    (root / "run" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "run" / "text.mp4").write_text("this is not a video\n")
    (root / "run" / "garbage.mp4").write_bytes(_garbage_packets(good))
    _audio_only(root / "run" / "audio.mp4")
    names = [
        "walk/good clip é.mp4",
        "walk/short.mp4",
        "run/one frame.mp4",
        "run/huge.mp4",
        "run/empty.mp4",
        "run/truncated.mp4",
        "run/text.mp4",
        "run/garbage.mp4",
        "run/audio.mp4",
        "run/missing.mp4",
    ]
    lists = tmp_path_factory.mktemp("lists")
    split = lists / "trainlist01.txt"
    split.write_text("".join(f"{name} {1 + name.startswith('run')}\n" for name in names), encoding="utf-8")
    return root, split


EXPECTED = {
    "run/one frame.mp4": r"1 frame\(s\); a clip needs at least 2",
    "run/huge.mp4": r"resolution 128x96 is over --max-pixels 5000",
    "run/empty.mp4": r"empty \(0 bytes\)",
    "run/truncated.mp4": r"not a video container|truncated",
    "run/text.mp4": r"not a video container",
    "run/garbage.mp4": r"decoding failed after 0 frames|no decodable frames",
    "run/audio.mp4": r"has no video stream",
    "run/missing.mp4": r"file not found",
}


def test_bad_inputs_recorded_and_job_goes_on(bad_inputs, tmp_path, capsys):
    root, split = bad_inputs
    out, report_path = tmp_path / "c.zarr", tmp_path / "report.json"
    rc = main(
        [
            "build",
            str(split),
            "--videos-root",
            str(root),
            "--out",
            str(out),
            "--size",
            "32x40",
            "--clip-len",
            "4",
            "--max-pixels",
            "5000",
            "--report",
            str(report_path),
            "--quiet",
        ]
    )
    assert rc == 3
    err = capsys.readouterr().err
    report = json.loads(report_path.read_text())
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == set(EXPECTED)
    for path, pattern in EXPECTED.items():
        assert re.search(pattern, reasons[path]), f"{path}: {reasons[path]!r}"
        assert path in err  # the summary names every failed file
    assert report["n_done"] == 2 and report["n_failed"] == len(EXPECTED)

    cache = Cache.open(str(out))
    assert cache.source_root == str(root)
    table = dict(zip(cache.videos("path"), cache.videos("status"), strict=True))
    assert table["walk/good clip é.mp4"] == DONE and table["walk/short.mp4"] == DONE
    assert all(table[p] == FAILED for p in EXPECTED)
    labels = dict(zip(cache.videos("path"), cache.videos("label"), strict=True))
    assert labels["walk/short.mp4"] == "walk"  # UCF101 class indices give way to the folder name
    # The looped short video: 3 frames, one clip of 4 frames taken every 2 frames, wrapping around.
    clip_video, clip_frames = cache.clip_table()
    short = list(cache.videos("path")).index("walk/short.mp4")
    readable = cache.readable_clips()
    assert set(clip_video[readable]) == {short, list(cache.videos("path")).index("walk/good clip é.mp4")}
    assert clip_frames[clip_video == short].tolist() == [[0, 2, 1, 0]]
    assert all(cache.check_clip(int(c)) for c in readable)


def test_missing_source_and_empty_folder_cannot_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # a path that names nothing is a usage error (tests/test_cli_usage.py)
        main(["build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.zarr"), "--quiet"])
    assert stop.value.code == 2 and "nowhere: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["build", str(tmp_path / "empty"), "--out", str(tmp_path / "c.zarr"), "--quiet"]) == 1
    assert "no videos found" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_reported_and_the_build_goes_on(tiny_dataset, tmp_path, capsys):
    import os
    import shutil

    src = tmp_path / "videos"
    shutil.copytree(tiny_dataset, src)
    first = sorted(src.rglob("*.mp4"))[0]
    shutil.copy(first, os.path.join(os.fsencode(first.parent), b"bad\xff\xfename.mp4"))
    out = tmp_path / "c.zarr"
    report = tmp_path / "report.json"
    code = main(["build", str(src), "--out", str(out), "--size", "32x40", "--clip-len", "4", "--report", str(report)])
    assert code == 3  # the cache is usable; one file was not
    failures = json.loads(report.read_text())["failures"]
    assert [f["path"] for f in failures] == [f"{first.parent.name}/bad\\xff\\xfename.mp4"]
    assert "not valid UTF-8" in failures[0]["reason"] and "bad\\xff\\xfename.mp4" in capsys.readouterr().err
    assert (Cache.open(str(out)).videos("status") == DONE).sum() == 6

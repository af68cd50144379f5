"""`fame-pipeline preview`: a picture of one batch, one row per sample, five panels per row."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_cache
from PIL import Image

from pipeline.cli import main
from pipeline.loader.preview import frame_strip


def test_frame_strip_picks_spread_frames_and_greys_masks():
    clip = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 5, 7, 1), np.uint8)
    strip = frame_strip(clip, 3)
    assert strip.shape == (5, 3 * 7 + 2 * 2, 3)
    assert [int(strip[0, x, 0]) for x in (0, 9, 18)] == [0, 2, 5]  # first, middle, last
    assert (strip[:, 7:9] == 255).all()


def test_preview_writes_a_grid(tmp_path, capsys):
    url = make_cache(tmp_path, n_videos=4, textured=True)
    out = tmp_path / "batch.png"
    code = main(["preview", url, "--out", str(out), "--crop", "24", "--batch-size", "3", "--frames", "2"])
    assert code == 0 and "3 samples" in capsys.readouterr().err
    with Image.open(out) as image:
        width, height = image.size
    assert width > 2 * height  # five panels of two frames side by side, three rows


def test_preview_reports_a_bad_cache(tmp_path, capsys):
    url = make_cache(tmp_path, n_videos=3)
    (tmp_path / "class_1" / "video 1.mp4").unlink()
    assert main(["preview", url, "--out", str(tmp_path / "x.png"), "--crop", "24", "--batch-size", "2"]) == 1
    assert "vanished" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", url, "--mask-mode", "blurry"])
    with pytest.raises(SystemExit):
        main(["preview", url, "--batch-size", "1"])

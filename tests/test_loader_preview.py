"""`fame-pipeline preview`: a picture of one batch, a block per sample, five rows per block."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_cache
from PIL import Image

from pipeline.cli import main
from pipeline.loader import FameLoader, LoaderParams
from pipeline.loader.preview import MAX_WIDTH, ROWS, SampleLabel, batch_labels, batch_sheet, frame_strip, sample_rows


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
    assert 600 < width <= MAX_WIDTH and height > 400  # blocks side by side, not one long strip


def test_preview_reports_a_bad_cache(tmp_path, capsys):
    url = make_cache(tmp_path, n_videos=3)
    (tmp_path / "class_1" / "video 1.mp4").unlink()
    assert main(["preview", url, "--out", str(tmp_path / "x.png"), "--crop", "24", "--batch-size", "2"]) == 1
    assert "vanished" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", url, "--mask-mode", "blurry"])
    with pytest.raises(SystemExit):
        main(["preview", url, "--batch-size", "1"])


def _fake_batch(n: int, crop: int, t: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch = {name: rng.integers(0, 256, (n, t, crop, crop, 3), dtype=np.uint8) for name in ("clip", "background")}
    batch["mask"] = np.zeros((n, t, crop, crop, 1), np.uint8)
    batch["mask"][:, :, : crop // 2] = 255
    batch["merged"] = np.where(batch["mask"] > 0, batch["clip"], batch["background"])
    batch["key"] = batch["clip"][:, ::-1].copy()
    return batch


@pytest.mark.parametrize("n", [1, 4, 8])
def test_sheet_fits_a_screen_at_the_default_crop(n):
    crop = LoaderParams().crop
    labels = [SampleLabel(f"class_{i}/a rather long video name {i}.mp4", f"class_{i}", i, "x.mp4") for i in range(n)]
    sheet = batch_sheet(_fake_batch(n, crop), labels, n_frames=4, title="t" * 400)
    height, width = sheet.shape[:2]
    assert 4 * crop <= width <= MAX_WIDTH  # four frames of the crop, at least full size
    assert height >= len(ROWS) * crop * -(-n // 2)  # two blocks a row at most, at the default crop
    assert height <= 1000 * -(-n // 2)


def test_alpha_row_is_the_alpha_the_query_was_merged_with(tmp_path):
    """The picture's alpha row rebuilds every merged view from its clip and background (to DALI's rounding), for
    merged samples and for ones left as they are (their alpha is all white, not the loader's zeros)."""
    url = make_cache(tmp_path, n_videos=6, textured=True)
    params = LoaderParams(crop=24, fame_p=0.5, num_workers=0)
    loader = FameLoader(url, 6, params=params, seed=3)
    batch = loader.debug_batch()
    merged_flags = []
    for i in range(6):
        rows, merged = sample_rows(batch, i)
        merged_flags.append(merged)
        m = rows["alpha applied"].astype(np.float64) / 255
        rebuilt = m * rows["clip"] + (1 - m) * rows["background"]
        assert np.abs(rebuilt - rows["merged query"]).max() <= 1, i
    assert any(merged_flags) and not all(merged_flags)  # both kinds are in this batch
    labels = batch_labels(loader, batch)
    assert labels[0].video.startswith(labels[0].label + "/") and labels[0].video.endswith(".mp4")

"""What the masks of a cache say, at a glance: `fame-cache info`'s mask statistics and `show --sheet`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import N_FRAMES, SIZE, T, cache_of, square_video
from PIL import Image

from cache_tools import open_cache
from cache_tools.cli import main
from cache_tools.show import sheet_clips
from pipeline.params import BuildParams
from pipeline.plan import clip_frames


@pytest.fixture
def labelled(tmp_path) -> tuple[str, list[np.ndarray]]:
    """Three videos: two of class 'square' with a known mover, one of class 'empty' whose masks are all 0."""
    videos, truths = [], []
    for v in range(3):
        frames, truth = square_video(v)
        if v == 2:
            truth = np.zeros_like(truth)
        label = "empty" if v == 2 else "square"
        videos.append((f"{label}/video {v}.mp4", label, frames, truth))
        truths.append(truth)
    return cache_of(tmp_path, videos), truths


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_info_reports_empty_rate_and_area_quantiles_per_class(labelled, capsys):
    cache, truths = labelled
    rows = clip_frames(N_FRAMES, BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2))
    square = np.array([truths[v][r].mean() for v in (0, 1) for r in rows])  # the truth is what the cache holds
    every = np.concatenate([square, np.zeros(len(rows))])
    code, out = run(capsys, "info", cache, "--json")
    stats = json.loads(out)["masks"]
    assert code == 0 and stats["clips"] == stats["readable"] == stats["sampled"] == 3 * len(rows)
    assert stats["empty_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert stats["mean_area"] == pytest.approx(every.mean(), abs=1e-4)
    for q in ("0.05", "0.5", "0.95"):
        assert stats["area_quantiles"][q] == pytest.approx(np.quantile(every, float(q)), abs=1e-4)
    assert set(stats["by_class"]) == {"empty", "square"}
    assert stats["by_class"]["empty"]["empty_rate"] == 1.0 and stats["by_class"]["empty"]["mean_area"] == 0.0
    assert stats["by_class"]["square"]["empty_rate"] == 0.0
    assert stats["by_class"]["square"]["area_quantiles"]["0.95"] == pytest.approx(np.quantile(square, 0.95), abs=1e-4)
    code, text = run(capsys, "info", cache)
    assert "masks        6 clips: 33.3% empty" in text and "  empty: 2 clips, 100.0% empty" in text


def magenta(image: np.ndarray) -> np.ndarray:
    """Pixels under the sheet's mask tint (TINT is magenta: red and blue well over green)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (r - g > 60) & (b - g > 40)


def test_sheet_spreads_over_videos_and_draws_each_clip(labelled, tmp_path, capsys):
    cache, _ = labelled
    opened = open_cache(cache)
    picked = sheet_clips(opened, 4)
    videos = opened.root["clips/video"][:][picked]
    assert len(picked) == 4 and set(videos) == {0, 1, 2}  # every video before a second clip of any
    out = tmp_path / "sheet.png"
    code, printed = run(capsys, "show", cache, "--sheet", "4", "--out", str(out))
    assert code == 0 and printed.strip() == str(out)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    width = (sheet.shape[1] + 6) // 4  # four cells side by side, 6 px apart
    for i, video in enumerate(videos):
        cell = sheet[28:, i * width : (i + 1) * width - 6]
        assert magenta(cell).any() == (video != 2), (i, video)  # the empty video's clip shows no mask
    with pytest.raises(SystemExit) as stop:
        main(["show", cache, "--sheet", "0", "--out", str(out)])
    assert stop.value.code == 2

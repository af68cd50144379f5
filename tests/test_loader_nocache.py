"""The loader without a cache: `fame` masks computed per sample from the decoded clip, the partner's raw frames as
background, as the original code does. The baseline the cache beats, and a fallback for users with no cache yet."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import N_FRAMES, SIZE, T, square_video

from pipeline.loader import FameLoader, LoaderError, LoaderParams
from pipeline.params import BuildParams
from pipeline.video import write_video

BUILD = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2, method="fame")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("nocache")
    for v in range(4):
        frames, _ = square_video(v)
        write_video(os.path.join(root, f"class_{v % 2}", f"video {v}.mp4"), frames, lossless=True)
    return str(root)


def quick(**overrides) -> LoaderParams:
    base = {"crop": 24, "num_workers": 0, "fame_p": 1.0, "mask_mode": "area", "background": "frames"}
    base.update(overrides)
    return LoaderParams(**base)


def test_no_cache_batches(videos):
    loader = FameLoader.from_videos(videos, 2, params=quick(), build_params=BUILD, seed=1)
    assert not loader.params.use_cache
    assert len(loader) == 2 and loader.classes == ["class_0", "class_1"]
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["query"].shape == batch["key"].shape == (2, 3, T, 24, 24)
        assert (batch["video"] != batch["partner_video"]).all()
    assert sorted(int(v) for b in batches for v in b["video"]) == [0, 1, 2, 3]
    again = next(iter(FameLoader(None, 2, videos=videos, params=quick(), build_params=BUILD, seed=1)))
    assert all(np.array_equal(batches[0][k].numpy(), again[k].numpy()) for k in again)


def test_masks_come_from_the_moving_square(videos):
    """The mask computed from the clip lies on the moving square (brighter inside than outside), after the crop,
    and the area mode keeps about beta of the pixels."""
    loader = FameLoader(None, 4, videos=videos, params=quick(augment=False), build_params=BUILD, seed=2)
    debug = loader.debug_batch()
    mask = debug["mask"][..., 0].astype(np.float32)
    square = debug["clip"].max(axis=-1) >= 130
    assert square.any() and (~square).any()
    assert mask[square].mean() > mask[~square].mean() + 50
    merged_is_clip = np.all(np.abs(debug["merged"].astype(int) - debug["clip"]) <= 1, axis=-1)
    assert 0.2 < merged_is_clip.mean() < 0.95  # a share of the pixels is the clip, the rest the partner


def test_no_cache_refusals(tmp_path, videos):
    with pytest.raises(ValueError, match="give a cache, or videos="):
        FameLoader(None, 2)
    with pytest.raises(ValueError, match="device='cpu'"):
        FameLoader(None, 2, videos=videos, params=quick(), build_params=BUILD, device="gpu")
    lonely = tmp_path / "one"
    frames, _ = square_video(0)
    write_video(lonely / "a" / "only.mp4", frames[:N_FRAMES], lossless=True)
    with pytest.raises(LoaderError, match="at least 2 readable videos"):
        FameLoader(None, 2, videos=str(lonely), params=quick(), build_params=BUILD)

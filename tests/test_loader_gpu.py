"""The loader's GPU path (NVDEC decoding, DALI GPU operators) and its agreement with the CPU path on the same seeds.

The videos here are yuv420p H.264: NVDEC cannot decode the lossless RGB H.264 the CPU tests use, so pixels are
compared with a tolerance for the two decoders' colour conversion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import T, make_cache

from pipeline.loader import FameLoader, LoaderParams
from pipeline.loader.graph import MEAN, STD

pytestmark = pytest.mark.needs_cuda

# Mean absolute difference allowed between CPU (PyAV) and GPU (NVDEC) outputs, in 0..255 levels.
LEVELS = 4.0


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("loader_gpu"), textured=True, lossless=False)


def quick(**overrides) -> LoaderParams:
    base = {"crop": 24, "num_workers": 0, "fame_p": 1.0}
    base.update(overrides)
    return LoaderParams(**base)


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two normalised (B, C, T, H, W) batches, in 0..255 levels."""
    diff = (a.float().cpu() - b.float().cpu()).abs().mean(dim=(0, 2, 3, 4))  # per channel
    return float((diff * torch.tensor(STD)).mean())


def unnormalise(x: torch.Tensor) -> np.ndarray:
    """(B, C, T, H, W) normalised -> (B, T, H, W, C) in 0..255 levels."""
    return x.cpu().numpy().transpose(0, 2, 3, 4, 1) * np.array(STD) + np.array(MEAN)


def test_gpu_batch_on_device_shapes_and_meta(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(return_partner=True), device="gpu", seed=1)
    batch = next(iter(loader))
    for name in ("query", "key", "partner"):
        assert batch[name].is_cuda
        assert batch[name].shape == (2, 3, T, 24, 24)
        assert batch[name].dtype.is_floating_point
    assert (batch["video"] != batch["partner_video"]).all()


@pytest.mark.parametrize("params", [quick(augment=False), quick(), quick(mask_mode="soft", background="frames")])
def test_gpu_matches_cpu_on_the_same_seed(cache_url, params):
    cpu = next(iter(FameLoader(cache_url, 3, params=params, device="cpu", seed=6)))
    gpu = next(iter(FameLoader(cache_url, 3, params=params, device="gpu", seed=6)))
    for name in ("video", "clip_a", "clip_b", "partner_clip"):
        assert np.array_equal(cpu[name].numpy(), gpu[name].cpu().numpy()), name
    for name in ("query", "key"):
        assert levels(cpu[name], gpu[name]) < LEVELS, name


def test_gpu_deterministic_and_resumable(cache_url):
    first = FameLoader(cache_url, 2, params=quick(), device="gpu", seed=3)
    stream = iter(first)
    next(stream)
    state = first.state_dict()
    expected = next(stream)
    resumed = FameLoader(cache_url, 2, params=quick(), device="gpu", seed=3)
    resumed.load_state_dict(state)
    got = next(iter(resumed))
    for name in ("query", "key"):
        assert levels(expected[name], got[name]) < 1e-3


def test_gpu_composition_matches_cpu_debug_batch(cache_url):
    """Without colour augmentation the GPU query is the merged view: the same crop of clip, mask and plate as the
    CPU path's intermediate `merged` (whose mask is checked against the foreground in test_loader.py)."""
    params = quick(augment=False)
    gpu = next(iter(FameLoader(cache_url, 4, params=params, device="gpu", seed=5)))
    debug = FameLoader(cache_url, 4, params=params, seed=5).debug_batch()
    assert np.abs(unnormalise(gpu["query"]) - debug["merged"]).mean() < LEVELS
    assert np.abs(unnormalise(gpu["key"]) - debug["key"]).mean() < LEVELS

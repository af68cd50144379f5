"""The DALI loader on its CPU backend: compose, crops that keep the mask on its foreground, determinism,
sharding, resume, and the refusals. Caches here are written with known masks, so every check is exact."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from pipeline.loader import FameLoader, LoaderError, LoaderParams
from pipeline.loader.graph import MEAN, STD
from pipeline.loader.sampling import ClipIndex, area_threshold, plan_sample, shard_order
from pipeline.params import BuildParams
from pipeline.plan import clip_frames
from pipeline.store import DONE, FAILED, Cache
from pipeline.synthetic import write_video

SIZE = (32, 40)
T = 4
N_FRAMES = 12


def square_video(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright square moving over a dark, flat background: frames and the exact truth."""
    rng = np.random.default_rng(seed)
    frames = np.full((N_FRAMES, *SIZE, 3), 30, np.uint8)
    frames[..., 2] = 40 + 10 * (seed % 4)  # a per-video background tint
    truth = np.zeros((N_FRAMES, *SIZE), bool)
    y, x = int(rng.integers(4, 14)), int(rng.integers(2, 10))
    for t in range(N_FRAMES):
        truth[t, y : y + 12, x + t : x + t + 12] = True
    frames[truth] = 230
    return frames, truth


def make_cache(root, n_videos: int = 6, fail: tuple[int, ...] = ()) -> str:
    """A cache whose masks are the truth and whose plates are each video's first frame with the square removed."""
    params = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2)
    paths, labels, counts, frames_list, videos = [], [], [], [], []
    for v in range(n_videos):
        frames, truth = square_video(v)
        rel = f"class_{v % 3}/video {v}.mp4"
        write_video(os.path.join(root, rel), frames, lossless=True)
        cf = clip_frames(N_FRAMES, params)
        paths.append(rel)
        labels.append(f"class_{v % 3}")
        counts.append(len(cf))
        frames_list.append(cf)
        videos.append((frames, truth))
    stats = [os.stat(os.path.join(root, p)) for p in paths]
    table = {
        "path": np.array(paths, dtype=object),
        "label": np.array(labels, dtype=object),
        "bytes": np.array([s.st_size for s in stats], np.int64),
        "mtime": np.array([s.st_mtime for s in stats]),
    }
    url = os.path.join(root, "cache.zarr")
    cache = Cache.create(url, params, str(root), table, counts, frames_list, videos_per_group=2, clips_per_shard=4)
    clip_video, clip_table = cache.clip_table()
    for group in cache.groups():
        n = len(group.clips)
        masks = np.zeros((n, T, *SIZE), np.uint8)
        plates = np.zeros((n, *SIZE, 3), np.uint8)
        for k, clip in enumerate(group.clips):
            v = clip_video[clip]
            if v < 0:
                continue
            frames, truth = videos[v]
            masks[k] = truth[clip_table[clip]] * 255
            plate = frames[0].copy()
            plate[truth[0]] = frames[0][~truth[0]][0]
            plates[k] = plate
        status = [FAILED if v in fail else DONE for v in group.videos]
        errors = ["broken on purpose" if v in fail else "" for v in group.videos]
        cache.write_group(
            group, masks, plates, clip_table[group.clips.start : group.clips.stop], {"status": status, "error": errors}
        )
    return url


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("loader"))


def quick(**overrides) -> LoaderParams:
    base = {"crop": 24, "num_workers": 0, "fame_p": 1.0}
    base.update(overrides)
    return LoaderParams(**base)


def test_batch_shapes_dtypes_ranges(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(return_partner=True), seed=1)
    assert len(loader) == 3
    batch = next(iter(loader))
    for name in ("query", "key", "partner"):
        assert batch[name].shape == (2, 3, T, 24, 24)
        assert batch[name].dtype.is_floating_point
        low = (0 - max(MEAN)) / min(STD)
        high = (255 - min(MEAN)) / min(STD)
        assert batch[name].min() >= low - 1e-3 and batch[name].max() <= high + 1e-3
    assert (batch["video"] != batch["partner_video"]).all()
    assert loader.classes == ["class_0", "class_1", "class_2"]


def test_compose_matches_numpy_reference(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(augment=False, mask_mode="soft"), seed=3)
    debug = loader.debug_batch()
    m = debug["mask"].astype(np.float64) / 255.0
    expected = m * debug["clip"] + (1.0 - m) * debug["background"]
    np.testing.assert_allclose(debug["merged"], np.floor(expected + 0.5), atol=1)


def test_threshold_mode_binarises(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(augment=False, mask_mode="threshold"), seed=3)
    debug = loader.debug_batch()
    expected = np.where(debug["mask"] >= 128, debug["clip"], debug["background"])
    assert np.mean(np.abs(debug["merged"].astype(int) - expected) <= 1) > 0.999


def test_area_threshold_keeps_top_beta():
    mask = np.arange(1000, dtype=np.uint8).reshape(10, 10, 10) % 250
    for beta in (0.1, 0.5, 0.9):
        kept = np.mean(mask >= area_threshold(mask, beta))
        assert abs(kept - beta) < 0.01


def test_crop_keeps_mask_on_the_foreground(cache_url):
    loader = FameLoader(cache_url, 4, params=quick(augment=False, crop_scale=(0.3, 0.6)), seed=5)
    debug = loader.debug_batch()
    inside = debug["mask"][..., 0] >= 128
    bright = debug["clip"].max(axis=-1) >= 130
    assert inside.any(), "the crops should catch some of the square"
    agreement = np.mean(inside == bright)
    assert agreement > 0.97, f"mask and square disagree on {1 - agreement:.1%} of cropped pixels"


def test_deterministic_for_a_seed(cache_url):
    first = next(iter(FameLoader(cache_url, 2, params=quick(), seed=7)))
    again = next(iter(FameLoader(cache_url, 2, params=quick(), seed=7)))
    other = next(iter(FameLoader(cache_url, 2, params=quick(), seed=8)))
    assert all(np.array_equal(first[k].numpy(), again[k].numpy()) for k in first)
    assert not np.array_equal(first["query"].numpy(), other["query"].numpy())


def test_parallel_workers_match_in_process(cache_url):
    serial = next(iter(FameLoader(cache_url, 2, params=quick(), seed=4)))
    parallel = next(iter(FameLoader(cache_url, 2, params=quick(num_workers=2), seed=4)))
    assert all(np.array_equal(serial[k].numpy(), parallel[k].numpy()) for k in serial)


def test_shards_disjoint_and_complete(cache_url):
    seen = []
    for rank in range(2):
        loader = FameLoader(cache_url, 3, params=quick(), seed=2, shard_id=rank, num_shards=2)
        seen.append({int(v) for batch in loader for v in batch["video"]})
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(6))


def test_epochs_reshuffle_and_resume_mid_epoch(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(), seed=9)
    epoch0 = [b["video"].tolist() for b in loader]
    epoch1 = [b["video"].tolist() for b in loader]
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == sorted(sum(epoch1, []))

    fresh = FameLoader(cache_url, 2, params=quick(), seed=9)
    stream = iter(fresh)
    next(stream)
    state = fresh.state_dict()
    expected = next(stream)
    resumed = FameLoader(cache_url, 2, params=quick(), seed=9)
    resumed.load_state_dict(state)
    got = next(iter(resumed))
    assert all(np.array_equal(expected[k].numpy(), got[k].numpy()) for k in expected)


def test_partner_is_never_the_same_video():
    labels = np.zeros(5, np.int64)
    index = ClipIndex.from_table(np.repeat(np.arange(5, dtype=np.int32), 2), np.arange(10), labels)
    for pos in range(5):
        for epoch in range(20):
            plan = plan_sample(index, quick(), SIZE, 0, epoch, pos)
            assert plan.partner_video != plan.video
    assert sorted(np.concatenate([shard_order(5, 0, 1, r, 2) for r in range(2)])) == list(range(5))


def test_refuses_changed_source(tmp_path):
    url = make_cache(tmp_path, n_videos=3)
    victim = tmp_path / "class_1" / "video 1.mp4"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(LoaderError, match="video 1.mp4: size changed"):
        FameLoader(url, 1, params=quick())
    victim.unlink()
    with pytest.raises(LoaderError, match="vanished"):
        FameLoader(url, 1, params=quick())


def test_refuses_mismatch_and_empty_and_warns_on_failed(tmp_path, cache_url):
    with pytest.raises(LoaderError, match="clip length is 4"):
        FameLoader(cache_url, 2, params=quick(clip_len=16))
    with pytest.raises(LoaderError, match="frame size"):
        FameLoader(cache_url, 2, params=quick(size=(128, 171)))
    with pytest.raises(LoaderError, match="empty selection"):
        FameLoader(cache_url, 64, params=quick())
    url = make_cache(tmp_path, n_videos=4, fail=(1,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = FameLoader(url, 1, params=quick())
    assert any("video 1.mp4 (broken on purpose)" in str(w.message) for w in caught)
    assert 1 not in {int(v) for b in loader for v in b["video"]}

"""The DALI loader on its CPU backend: compose, crops that keep the mask on its foreground, determinism,
sharding, resume, and the refusals. Caches here are written with known masks, so every check is exact."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import cv2
import numpy as np
import pytest
from helpers import SIZE, T, make_cache

from pipeline.cache import Cache
from pipeline.loader import FameLoader, LoaderError, LoaderParams
from pipeline.loader.graph import MEAN, STD, compose
from pipeline.loader.query_mask import _blur_wide
from pipeline.loader.sampling import NO_BLUR, ClipIndex, batch_partners, draw_sample, shard_order
from pipeline.video import decode_clips


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("loader"))


def quick(**overrides) -> LoaderParams:
    base = {"crop": 24, "num_workers": 0, "fame_p": 1.0, "own_floor": 0.0, "own_margin": 0.0, "mask_mode": "threshold"}
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
    np.testing.assert_array_equal(debug["merged"], np.floor(expected + 0.5))  # rounded to nearest, exactly


@pytest.mark.parametrize("background_frames", [1, 4], ids=["plate", "frames"])
def test_binary_compose_equals_the_float_blend(background_frames):
    """The uint8 blend of 0/255 alphas gives the float blend's bytes: own pixels from the clip, the rest from the
    background (a plate broadcast over the frames, or frames), and a sample not merged (fame 0) its clip whole."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    rng = np.random.default_rng(0)
    batch, shape = 4, (4, 6, 5)
    inputs = {
        "clip": [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(batch)],
        "alpha": [np.where(rng.random((*shape, 1)) < 0.4, 255, 0).astype(np.uint8) for _ in range(batch)],
        "background": [rng.integers(0, 256, (background_frames, *shape[1:], 3), np.uint8) for _ in range(batch)],
        "fame": [np.float32(i % 2) for i in range(batch)],
    }

    def run(binary: bool) -> list[np.ndarray]:
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
        def pipe():
            fed = {k: fn.external_source(source=[v]) for k, v in inputs.items()}  # one batch
            return compose(fed["clip"], fed["alpha"], fed["background"], fed["fame"], binary=binary)

        built = pipe()
        built.build()
        (out,) = built.run()
        return [np.asarray(out[i]) for i in range(batch)]

    binary, blended = run(True), run(False)
    for i in range(batch):
        own = inputs["alpha"][i] == 255 if inputs["fame"][i] else np.ones((*shape, 1), bool)
        np.testing.assert_array_equal(binary[i], np.where(own, inputs["clip"][i], inputs["background"][i]))
        np.testing.assert_array_equal(binary[i], blended[i])


def test_plain_query_is_the_cropped_clip(cache_url):
    """Without FAME (fame_p 0) the graph skips the blend: the query is its clip's crop, byte for byte what the
    debug path, which blends with an all-own alpha, gives."""
    loader = FameLoader(cache_url, 2, params=quick(augment=False, fame_p=0.0), seed=3)
    query = next(iter(loader))["query"].numpy()
    clip = loader.debug_batch()["clip"].astype(np.float32)  # (B, T, H, W, C) uint8
    expected = ((clip - np.float32(MEAN)) / np.float32(STD)).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(query, expected, rtol=0, atol=1e-5)


def test_threshold_mode_binarises(cache_url):
    loader = FameLoader(cache_url, 2, params=quick(augment=False, mask_mode="threshold"), seed=3)
    debug = loader.debug_batch()
    assert set(np.unique(debug["mask"])) <= {0, 255}
    np.testing.assert_array_equal(debug["merged"], np.where(debug["mask"] == 255, debug["clip"], debug["background"]))


def test_augmentation_changes_exactly_the_views_that_drew_it(cache_url):
    """Hue/saturation and blur run only for clips that drew them: an identity draw gives the plain view, any other
    draw changes it."""
    # blur_sigma is given at a 224-px crop: these draw 0.5-1 px on the 24-px crop, a blur that shows in uint8.
    params = {"jitter_p": 0.5, "grayscale_p": 0.0, "blur_p": 0.5, "blur_sigma": (4.7, 9.3)}
    plain = FameLoader(cache_url, 6, params=quick(augment=False, fame_p=0.0), seed=4)
    augmented = FameLoader(cache_url, 6, params=quick(fame_p=0.0, **params), seed=4)
    catalog = plain.catalog
    index = ClipIndex.from_table(catalog.clip_video, catalog.readable, catalog.labels, catalog.n_frames)
    key_plain, key_aug = next(iter(plain))["key"].numpy(), next(iter(augmented))["key"].numpy()
    order = shard_order(len(index), 4, 0, 0, 1)
    drew = []
    for i, pos in enumerate(order[:6]):
        colour = draw_sample(index, quick(**params), SIZE, 4, 0, int(pos)).colour[1]
        identity = np.allclose(colour[:4], [1.0, 1.0, 1.0, 0.0]) and colour[4] <= NO_BLUR
        drew.append(not identity)
        assert np.array_equal(key_plain[i], key_aug[i]) == identity
    assert any(drew) and not all(drew), "the seed should give both kinds of draw"


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
    assert epoch0 != epoch1
    assert sorted(np.concatenate(epoch0)) == sorted(np.concatenate(epoch1))

    fresh = FameLoader(cache_url, 2, params=quick(), seed=9)
    stream = iter(fresh)
    next(stream)
    state = fresh.state_dict()
    expected = next(stream)
    resumed = FameLoader(cache_url, 2, params=quick(), seed=9)
    resumed.load_state_dict(state)
    got = next(iter(resumed))
    assert all(np.array_equal(expected[k].numpy(), got[k].numpy()) for k in expected)


def test_partners_are_other_samples_of_the_batch():
    for batch_size in (2, 3, 8):
        for batch in range(20):
            partners = batch_partners(batch_size, 0, 1, 0, batch)
            assert sorted(partners) == list(range(batch_size))  # every sample is someone's partner once
            assert (partners != np.arange(batch_size)).all()  # never itself
            assert np.array_equal(partners, batch_partners(batch_size, 0, 1, 0, batch))
    draws = {tuple(batch_partners(4, 0, 1, 0, b)) for b in range(20)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="batch_size >= 2"):
        batch_partners(1, 0, 0, 0, 0)
    assert sorted(np.concatenate([shard_order(5, 0, 1, r, 2) for r in range(2)])) == list(range(5))


def test_frames_background_is_the_partners_cropped_clip(cache_url):
    """The paper's mode: the background is the partner's clip a as its own sample crops it, taken from the batch,
    and the partner's plate is what the plate mode merges."""
    loader = FameLoader(cache_url, 3, params=quick(augment=False, background="frames"), seed=5)
    debug = loader.debug_batch()
    slots = {int(v): i for i, v in enumerate(debug["video"])}
    for i in range(3):
        j = slots[int(debug["partner_video"][i])]
        assert j != i and debug["partner_clip"][i] == debug["clip_a"][j]
        np.testing.assert_array_equal(debug["background"][i], debug["clip"][j])
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        FameLoader(cache_url, 1, params=quick())
    assert len(FameLoader(cache_url, 1, params=quick(fame_p=0.0))) == 6  # plain clips need no partner


def test_refuses_changed_source(tmp_path):
    url = make_cache(tmp_path, n_videos=3)
    victim = tmp_path / "class_1" / "video 1.mp4"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(LoaderError, match=r"video 1\.mp4: size \d+ bytes, built from \d+"):
        FameLoader(url, 2, params=quick())
    victim.unlink()
    with pytest.raises(LoaderError, match="vanished"):
        FameLoader(url, 2, params=quick())


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
        loader = FameLoader(url, 3, params=quick())
    assert any("video 1.mp4 (failed: broken on purpose)" in str(w.message) for w in caught)
    assert 1 not in {int(v) for b in loader for v in b["video"]}


def test_blur_sigma_scales_with_the_crop():
    """`blur_sigma` is given at a 224-px crop: a 56-px crop draws a quarter of it, so a small crop is not blurred
    past recognition."""
    index = ClipIndex.from_table(np.arange(8) // 2, np.ones(8, bool), np.zeros(4, np.int64), np.full(4, 32))

    def sigmas(crop: int) -> np.ndarray:
        params = LoaderParams(crop=crop, jitter_p=0.0, grayscale_p=0.0, blur_p=1.0, blur_sigma=(1.0, 2.0))
        return np.array([draw_sample(index, params, (64, 80), 0, e, 0).colour[:, 4] for e in range(50)])

    assert sigmas(224).min() >= 1.0 and sigmas(224).max() <= 2.0
    assert sigmas(56).min() >= 0.25 and sigmas(56).max() <= 0.5


def test_each_sample_reads_one_clip_and_merges_its_partners_plate(cache_url, monkeypatch):
    """A sample reads its own clip of the cache (mask and plate) and no other: the partner's plate comes from the
    partner's sample in the batch, and the meta names that sample's video and clip."""
    reads = []
    read_clip = Cache.read_clip

    def counting(self, clip, *args, **kwargs):
        reads.append(int(clip))
        return read_clip(self, clip, *args, **kwargs)

    monkeypatch.setattr(Cache, "read_clip", counting)
    loader = FameLoader(cache_url, 6, params=quick(augment=False), seed=6)  # the whole epoch: nothing prefetched
    debug = loader.debug_batch()
    assert sorted(reads) == sorted(int(c) for c in debug["clip_a"]), "each sample reads its own clip a, once"
    partners = batch_partners(6, 6, 0, 0, 0)
    np.testing.assert_array_equal(debug["partner_video"], debug["video"][partners])
    np.testing.assert_array_equal(debug["partner_clip"], debug["clip_a"][partners])


def test_same_key_start_keys_the_query_clip(cache_url):
    """key_start="same": the key is the query's own clip (its frames decoded again), "cached" another clip of the
    video."""
    same = FameLoader(cache_url, 2, params=quick(fame_p=0.0, key_start="same"), seed=3)
    batch = next(iter(same))
    np.testing.assert_array_equal(batch["clip_b"], batch["clip_a"])
    clips_a, clips_b = (np.array(out.as_tensor()) for out in same.decode_floor().run())
    np.testing.assert_array_equal(clips_a, clips_b)
    cached = next(iter(FameLoader(cache_url, 2, params=quick(fame_p=0.0, key_start="cached"), seed=3)))
    assert (cached["clip_b"] != cached["clip_a"]).all()


def test_merged_key_keeps_its_own_mover_over_its_partners_partner(cache_url):
    """key_merge: the key's own pixels are the plain key's, the rest another video's (its partner's partner's clip
    a, with background="frames"), so the two views share their mover and no background."""
    same = {"augment": False, "key_start": "same", "background": "frames"}
    plain = FameLoader(cache_url, 3, params=quick(**same, key_merge=False), seed=4).debug_batch()
    merged = FameLoader(cache_url, 3, params=quick(**same, key_merge=True), seed=4).debug_batch()
    np.testing.assert_array_equal(merged["merged"], plain["merged"])  # the query as before
    partners = batch_partners(3, 4, 0, 0, 0)
    second = partners[partners]
    assert (second != np.arange(3)).all() and (second != partners).all()
    own = merged["key"] == plain["key"]
    other = merged["key"] == plain["clip"][second]
    assert (own | other).all(), "each key pixel is its own or its partner's partner's"
    assert own.mean() < 0.9 and other.mean() > 0.1, (own.mean(), other.mean())
    assert not LoaderParams(key_merge=True, key_start="any").merges_key, "keys of other clips are never merged"


def test_auto_key_start_is_the_same_clip_for_fame_and_any_start_for_plain_moco(cache_url):
    """The default: with FAME both views are the query's clip and the key is merged; plain MoCo (fame_p 0) keys
    start anywhere, unmerged, as MoCo's two clips of a video do."""
    fame = LoaderParams()
    assert (fame.key_start, fame.resolved_key_start, fame.merges_key) == ("auto", "same", True)
    moco = LoaderParams(fame_p=0.0)
    assert (moco.resolved_key_start, moco.merges_key) == ("any", False)
    batch = next(iter(FameLoader(cache_url, 2, params=quick(), seed=3)))
    np.testing.assert_array_equal(batch["clip_b"], batch["clip_a"])
    plain = next(iter(FameLoader(cache_url, 2, params=quick(fame_p=0.0), seed=3)))
    assert (plain["clip_b"] == -1).all() and (plain["key_start"] >= 0).all()
    anywhere = next(iter(FameLoader(cache_url, 2, params=quick(fame_p=0.0, query_crop="random"), seed=3)))
    assert LoaderParams().query_crop == "mover"
    np.testing.assert_array_equal(plain["query"].numpy(), anywhere["query"].numpy())  # unmerged: never centred


def test_decode_floor_decodes_the_samples_clips_and_nothing_else(cache_url):
    """The benchmark's floor: the loader's own workers decoding each sample's clip a and key clip, as they are."""
    loader = FameLoader(cache_url, 2, params=quick(fame_p=0.0, key_start="cached"), seed=3)
    batch = next(iter(loader))
    clips_a, clips_b = (np.array(out.as_tensor()) for out in loader.decode_floor().run())
    catalog = loader.catalog
    for i in range(2):
        video, a, b = int(batch["video"][i]), int(batch["clip_a"][i]), int(batch["clip_b"][i])
        expected = decode_clips(catalog.video_path(video), [catalog.clip_frames[a], catalog.clip_frames[b]], SIZE)
        np.testing.assert_array_equal(clips_a[i], expected[0])
        np.testing.assert_array_equal(clips_b[i], expected[1])


def test_wide_blur_of_the_tie_break_is_opencvs_blur():
    """The tie-break's wide blur, as matrix products, is OpenCV's Gaussian blur (kernel wider than the crop and its
    reflected border included) to float rounding, on crops square and not."""
    rng = np.random.default_rng(0)
    for h, w in ((112, 112), (24, 40)):
        frames = (rng.random((h, w, 5)) * 255).astype(np.float32)
        frames[h // 3 : h // 2, : w // 4] = 255  # a mover at the border
        sigma = max(h, w) / 6
        full = cv2.GaussianBlur(frames, (0, 0), sigma)
        fast = _blur_wide(frames, sigma)
        assert fast.shape == full.shape and fast.dtype == np.float32
        np.testing.assert_allclose(fast, full, rtol=0, atol=1e-4 * full.max())


def test_samples_are_checked_against_the_checksums_the_catalog_read(cache_url, tmp_path):
    """The catalog reads the clips' checksums once; a sample then reads its mask and plate alone (the checksum
    column is not read again: a third fewer requests per sample on an object store), and is still checked."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_url, copy)
    loader = FameLoader(str(copy), 6, params=quick(augment=False, on_damage="stop"), seed=6)
    np.testing.assert_array_equal(loader.catalog.checksums, Cache.open(str(copy)).root["clips/checksum"][:])
    shutil.rmtree(copy / "clips" / "checksum" / "c")  # read per sample, the column would now give 0 for every clip
    assert len(loader.debug_batch()["clip_a"]) == 6
    loader.catalog = dataclasses.replace(loader.catalog, checksums=loader.catalog.checksums ^ 1)
    with pytest.raises(Exception, match=r"does not match its checksum.*on_damage='stop'"):
        loader.debug_batch()


def test_a_checksum_column_that_does_not_read_whole_leaves_each_clip_to_its_own(cache_url, tmp_path):
    """Damage to the checksum column does not stop the catalog: each clip's checksum is then read with the clip, so
    the damage is that of the clips whose checksums it held."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_url, copy)
    chunk = next(p for p in (copy / "clips" / "checksum" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not a chunk")
    loader = FameLoader(str(copy), 6, params=quick(augment=False, on_damage="stop"), seed=6)
    assert loader.catalog.checksums is None
    with pytest.raises(Exception, match=r"cannot be read.*on_damage='stop'"):
        loader.debug_batch()

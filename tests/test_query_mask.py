"""The merged query's alpha: the paper's top-beta rule inside the crop, the threshold, and the own-pixel floor.

Pure functions first (exact counts on made-up masks), then the loader: what a query is merged with is what these
functions say, and no merged frame falls below the floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import make_cache

from pipeline.loader import FameLoader, LoaderParams
from pipeline.loader.query_mask import at_least, centre_on_mask, crop_mask, query_alpha, top_fraction
from pipeline.loader.sampling import ClipIndex, draw_sample, key_clip_frames

WHOLE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
RIGHT_HALF = np.array([0.0, 0.5, 1.0, 1.0], np.float32)


def params(**overrides) -> LoaderParams:
    base = {"crop": 32, "own_floor": 0.0, "own_margin": 0.0}
    base.update(overrides)
    return LoaderParams(**base)


def own_fraction(alpha: np.ndarray) -> np.ndarray:
    return (alpha == 255).reshape(len(alpha), -1).mean(axis=1)


def test_area_keeps_beta_of_the_crop_not_of_the_clip():
    """All of the clip's mass lies left: the whole-clip rule would keep nothing of a right-half crop's own pixels
    beyond the ties; the per-crop rule keeps beta of every frame of the crop, to a pixel."""
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 40, 60), np.uint8)
    mask[:, :, :30] = rng.integers(100, 256, (4, 40, 30))
    mask[:, :, 30:] = rng.integers(0, 60, (4, 40, 30))
    for beta in (0.1, 0.3, 0.5, 0.8):
        alpha = query_alpha(mask, RIGHT_HALF, params(mask_mode="area", beta=beta))
        assert alpha.shape == (4, 32, 32)
        assert np.all(np.abs(own_fraction(alpha) - beta) <= 1 / (32 * 32))
    # and on the whole frame the kept pixels are the highest ones
    alpha = query_alpha(mask, WHOLE, params(mask_mode="area", beta=0.5))
    cropped = crop_mask(mask, WHOLE, 32).astype(int)
    assert cropped[alpha == 255].min() >= cropped[alpha == 0].max()


def test_area_keeps_beta_whatever_the_margin():
    """The area rule's share is beta, asked for outright: the default margin does not add to it (the floor still
    binds where it is above beta)."""
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 256, (3, 40, 60)).astype(np.uint8)
    alpha = query_alpha(mask, RIGHT_HALF, params(mask_mode="area", beta=0.5, own_margin=0.3))
    assert np.all(np.abs(own_fraction(alpha) - 0.5) <= 1 / (32 * 32))
    alpha = query_alpha(mask, RIGHT_HALF, params(mask_mode="area", beta=0.2, own_margin=0.3, own_floor=0.4))
    assert np.all(own_fraction(alpha) >= 0.4 - 1 / (32 * 32))


def test_area_ties_grow_one_blob_around_the_mask():
    """A quantised mask covering 25% of the crop: beta 0.5 keeps all of it and fills the rest next to it."""
    mask = np.zeros((2, 32, 32), np.uint8)
    mask[:, 4:20, 4:20] = 204
    alpha = query_alpha(mask, WHOLE, params(mask_mode="area", beta=0.5))
    assert np.all(own_fraction(alpha) == 0.5)
    assert np.all(alpha[:, 4:20, 4:20] == 255)
    assert alpha[:, 28:, 28:].sum() == 0  # the far corner stays the partner's


@pytest.mark.parametrize("mode", ["threshold", "soft", "area"])
def test_floor_keeps_own_pixels_even_for_empty_masks(mode):
    empty = np.zeros((3, 40, 60), np.uint8)
    alpha = query_alpha(empty, RIGHT_HALF, params(mask_mode=mode, beta=0.1, own_floor=0.3))
    assert np.all(own_fraction(alpha) >= 0.3 - 1 / (32 * 32))
    tiny = np.zeros((3, 40, 60), np.uint8)
    tiny[:, 10:14, 40:46] = 255  # a small mover: about 4% of the right-half crop
    alpha = query_alpha(tiny, RIGHT_HALF, params(mask_mode=mode, beta=0.1, own_floor=0.3))
    assert np.all(own_fraction(alpha) >= 0.3 - 1 / (32 * 32))
    cropped = crop_mask(tiny, RIGHT_HALF, 32)
    assert np.all(alpha[cropped == 255] == 255), "the mover itself stays"
    none = query_alpha(empty, RIGHT_HALF, params(mask_mode=mode, beta=0.1, own_floor=0.0))
    expected = 0.1 if mode == "area" else 0.0  # without the floor only the area rule keeps anything
    assert np.all(np.abs(own_fraction(none) - expected) <= 1 / (32 * 32))


def test_margin_keeps_each_frames_mask_share_plus_the_margin_around_the_mover():
    """Per frame: a mover of 4% keeps 4% + margin, one of 25% keeps 25% + margin, a still frame the margin; the
    mover itself always stays and the extra pixels lie next to it."""
    mask = np.zeros((3, 40, 40), np.uint8)
    mask[0, 4:12, 4:12] = 255  # 4% of the crop
    mask[1, 10:30, 10:30] = 255  # 25%
    alpha = query_alpha(mask, WHOLE, params(crop=40, mask_mode="threshold", own_margin=0.2))
    share = np.array([0.04, 0.25, 0.0])
    assert np.all(own_fraction(alpha) >= share + 0.2 - 1e-9) and np.all(own_fraction(alpha) <= share + 0.2 + 4 / 1600)
    assert np.all(alpha[mask == 255] == 255), "the mover itself stays"
    assert alpha[0, 30:, 30:].sum() == 0, "the small mover's context is around it, not in the far corner"
    floor_wins = query_alpha(mask, WHOLE, params(crop=40, mask_mode="threshold", own_margin=0.1, own_floor=0.3))
    assert np.all(own_fraction(floor_wins) >= np.maximum(0.3, share + 0.1) - 1e-9)
    assert own_fraction(floor_wins)[1] < 0.36, "above the floor, the margin decides"
    whole = query_alpha(mask, WHOLE, params(crop=40, mask_mode="threshold", own_margin=0.9))
    assert own_fraction(whole)[1] == 1.0, "never more than the whole crop"


def test_threshold_above_the_floor_is_untouched():
    mask = np.zeros((2, 32, 32), np.uint8)
    mask[:, :, :20] = 180
    alpha = query_alpha(mask, WHOLE, params(mask_mode="threshold", own_floor=0.3))
    np.testing.assert_array_equal(alpha, np.where(mask >= 128, 255, 0))


def test_top_fraction_exact_counts():
    rng = np.random.default_rng(1)
    mask = (rng.integers(0, 6, (5, 17, 23)) * 51).astype(np.uint8)
    for fraction in (0.01, 0.37, 0.99):
        kept = top_fraction(mask, fraction)
        assert np.all(kept.reshape(5, -1).sum(axis=1) == round(fraction * 17 * 23))


def test_the_floor_keeps_at_least_its_fraction_in_one_blob_at_a_quarter_of_the_work():
    """at_least ranks 2x2 blocks: never under the fraction, at most 3 pixels over, the same blob a full ranking
    keeps around the mover; an odd-sized crop is ranked whole, exactly."""
    rng = np.random.default_rng(2)
    mask = np.zeros((4, 40, 40), np.uint8)
    mask[:, 12:18, 20:27] = 200  # a small mover
    mask[1] = 0  # a still frame
    mask[2] = (rng.integers(0, 6, (40, 40)) * 51).astype(np.uint8)
    for fraction in (0.05, 0.3, 0.61):
        kept = at_least(mask, fraction).reshape(4, -1).sum(axis=1)
        need = math.ceil(fraction * 40 * 40)
        assert np.all(kept >= need) and np.all(kept <= need + 3), (fraction, kept, need)
    blob = at_least(mask, 0.3)[0]
    assert blob[12:18, 20:27].all(), "the mover itself is kept"
    assert np.abs(blob.astype(int) - top_fraction(mask, 0.3)[0]).sum() < 0.1 * blob.sum(), (
        "where the full ranking keeps"
    )
    odd = mask[:, :39, :39]
    np.testing.assert_array_equal(at_least(odd, 0.3), top_fraction(odd, 0.3))


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("query_mask"))


def test_loader_merges_with_the_alpha_and_the_floor(cache_url):
    """A 12 px square in a 32x40 frame is under a fifth of most crops: every merged frame still keeps the floor,
    and the merged pixels are the clip exactly where the alpha says so."""
    loader = FameLoader(cache_url, 4, params=LoaderParams(crop=24, num_workers=0, augment=False, own_floor=0.4), seed=1)
    debug = loader.debug_batch()
    alpha = debug["mask"][..., 0]
    own = (alpha == 255).reshape(4, alpha.shape[1], -1).mean(axis=2)
    assert own.min() >= 0.4 - 1 / 24**2
    expected = np.where(alpha[..., None] == 255, debug["clip"], debug["background"])
    assert np.mean(np.abs(debug["merged"].astype(int) - expected) <= 1) > 0.999
    only_area = LoaderParams(crop=24, num_workers=0, mask_mode="area", beta=0.5, own_margin=0.0)
    area = FameLoader(cache_url, 4, params=only_area, seed=1)
    alpha = area.debug_batch()["mask"][..., 0]
    own = (alpha == 255).reshape(4, alpha.shape[1], -1).mean(axis=2)
    assert np.all(np.abs(own - 0.5) <= 1 / 24**2)


def test_key_starts_cover_the_whole_video(cache_url):
    loader = FameLoader(cache_url, 2, params=LoaderParams(crop=24, num_workers=0, key_start="any"), seed=3)
    catalog = loader.catalog
    index = ClipIndex.from_table(catalog.clip_video, catalog.readable, catalog.labels, catalog.n_frames)
    span = catalog.span
    n = int(index.n_frames[0])
    starts = {
        draw_sample(index, loader.params, catalog.size, 3, epoch, 0, key_span=span).key_start for epoch in range(200)
    }
    assert starts == set(range(n - span + 1))
    cached = LoaderParams(crop=24, num_workers=0, key_start="cached")
    draw = draw_sample(index, cached, catalog.size, 3, 0, 0, key_span=span)
    assert draw.key_start == -1 and draw.clip_b in index.clips_of(0)
    batch = next(iter(loader))
    assert (batch["clip_b"] == -1).all() and (batch["key_start"] >= 0).all()
    np.testing.assert_array_equal(key_clip_frames(3, 5, 4, 2), [3, 0, 2, 4])  # looped like the build's short clips


def test_background_view_is_the_query_without_its_foreground(cache_url):
    """The background negative: the same crop, flip and colours as the query, and the query's pixels exactly where
    the query shows its background."""
    params = LoaderParams(crop=24, num_workers=0, augment=False, return_background=True)
    loader = FameLoader(cache_url, 3, params=params, seed=2)
    alpha = loader.debug_batch()["mask"][..., 0]  # (B, T, H, W), the first batch of epoch 0
    batch = next(iter(loader))
    query, background = batch["query"].numpy(), batch["background"].numpy()  # (B, C, T, H, W)
    shown = np.broadcast_to((alpha == 0)[:, None], query.shape)
    assert shown.mean() > 0.3
    np.testing.assert_array_equal(query[shown], background[shown])
    assert not np.array_equal(query[~shown], background[~shown])


def test_centre_on_mask_moves_the_window_to_the_mass_and_keeps_its_size():
    mask = np.zeros((2, 40, 40), np.uint8)
    mask[:, 28:34, 4:10] = 255  # mass centre (31, 7) px
    window = np.array([0.0, 0.5, 0.5, 1.0], np.float32)
    moved = centre_on_mask(window, mask)
    assert np.allclose(moved[2:] - moved[:2], window[2:] - window[:2])
    assert np.allclose(moved, [0.5, 0.0, 1.0, 0.5])  # clamped: centred at 31/40 would leave the frame
    small = np.array([0.0, 0.0, 0.2, 0.2], np.float32)
    assert np.allclose((centre_on_mask(small, mask)[:2] + 0.1) * 40, [31, 7])
    assert np.array_equal(centre_on_mask(window, np.zeros_like(mask)), window)


def test_mover_crops_centre_the_query_on_its_mask(cache_url):
    """With query_crop="mover" the query's alpha (its mask inside the crop) is centred in the view."""
    settings = {
        "crop": 24,
        "num_workers": 0,
        "augment": False,
        "own_floor": 0.0,
        "own_margin": 0.0,
        "query_crop_scale": (0.2, 0.3),
    }
    offsets = {}
    for mode in ("random", "mover"):
        loader = FameLoader(cache_url, 4, params=LoaderParams(query_crop=mode, **settings), seed=3)
        alpha = loader.debug_batch()["mask"][..., 0].astype(float)  # (B, T, crop, crop)
        weights = alpha.sum(axis=1)  # (B, crop, crop)
        total = weights.sum(axis=(1, 2))
        has = total > 0
        rows, cols = weights.sum(axis=2), weights.sum(axis=1)
        centre = np.stack([rows @ np.arange(24), cols @ np.arange(24)], 1)[has] / total[has, None]
        offsets[mode] = (np.abs(centre - 11.5).max(axis=1), has.mean())
    assert offsets["mover"][1] == 1.0 and offsets["mover"][0].max() < 3  # every view holds its mover, centred
    assert offsets["random"][1] < 1.0 or offsets["random"][0].max() > 3

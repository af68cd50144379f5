"""Every reader sees only the committed cache (`Cache.committed`): after an append killed as it was about to write
its rows' status (rows and clip slots filled, no status), `fame-cache info` and `ls`, `show`, the swapped-background
set and `is_readable` give exactly what they gave on the cache before the append."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cache, pipeline_killed_at

from cache_tools.api import is_readable, open_cache
from cache_tools.cli import main as cache_main
from cache_tools.diff import source_differences
from cache_tools.find import list_caches
from cache_tools.info import cache_info, format_info
from cache_tools.show import load_view, pick_clip, sheet_clips
from pipeline.cache import Cache
from pipeline.cli import main as pipeline_main
from pipeline.swap import draw_swaps

NEW = ("class_new/new 4.mp4", "class_new/new 5.mp4")  # the videos the killed append was adding
SLOTS = range(-1, 40)  # every clip slot before and after the append, and some past both


def _picks(cache: Cache) -> list[object]:
    """What `show` picks for every --clip N, for --video of an old and of an appended video, and by default: the
    clip, or the error (type and message) it stops with."""
    asked = [{"clip": c} for c in SLOTS] + [{"video": "class_0/video 0.mp4"}, {"video": NEW[0]}, {}]
    out = []
    for kwargs in asked:
        try:
            out.append(pick_clip(cache, **kwargs))
        except Exception as exc:  # ValueError (a usage error) or CacheError
            out.append((type(exc).__name__, str(exc)))
    return out


def _readers(url: str) -> dict[str, object]:
    """What each reader gives on the cache at url."""
    cache = open_cache(url)
    info = cache_info(cache, with_bytes=False)  # bytes on disk grow with any write: not a reader's view
    clip = pick_clip(cache)
    swaps = draw_swaps(url, seed=3)
    return {
        "info": info,
        "info text": format_info(info),
        "ls": [entry.to_dict() for entry in list_caches(str(Path(url).parent))],
        "show picks": _picks(cache),
        "show sheet": sheet_clips(cache, 48).tolist(),
        "show view": {
            k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in asdict(load_view(cache, clip)).items()
        },
        "swaps": swaps,
        "readable": [is_readable(cache, c) for c in SLOTS],
    }


def append_argv(root: Path, url: str) -> list[str]:
    """`fame-pipeline build` adding the videos under root that the cache at url lacks."""
    options = ["--size", "32x40", "--clip-len", "4", "--clips-per-video", "2", "--quiet"]
    return ["build", str(root), "--out", url, "--append", *options]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[str, dict[str, object]]:
    """(a cache of 4 videos grown by an append of 2 that was killed as it was about to write their status, what every
    reader gave on it before the append)."""
    root = tmp_path_factory.mktemp("stopped")
    url = make_cache(root, n_videos=4)
    before = _readers(url)
    (root / "class_new").mkdir()
    for name in NEW:
        shutil.copyfile(root / "class_0" / "video 0.mp4", root / name)
    pipeline_killed_at(url, "videos/status/c/", append_argv(root, url))
    cache = Cache.open(url)
    assert cache.n_videos == 6 and cache.committed_videos() == 4  # the rows are there, without a status
    assert {4, 5} <= set(cache.clip_table()[0].tolist())  # and their clip slots are filled
    return url, before


@pytest.mark.parametrize("reader", ["info", "info text", "ls"])
def test_info_and_ls_see_the_cache_before_the_append(stopped, reader):
    url, before = stopped
    assert _readers(url)[reader] == before[reader]


@pytest.mark.parametrize("reader", ["show picks", "show sheet", "show view"])
def test_show_sees_the_cache_before_the_append(stopped, reader):
    url, before = stopped
    assert _readers(url)[reader] == before[reader]


def test_the_swapped_set_is_drawn_from_the_cache_before_the_append(stopped):
    url, before = stopped
    assert draw_swaps(url, seed=3) == before["swaps"]


def test_is_readable_sees_the_cache_before_the_append(stopped, tmp_path):
    """Also while the append's clip slots are grown but not yet filled: they read as video 0 (the fill value), which
    is done, yet no slot of video 0."""
    url, before = stopped
    assert [is_readable(open_cache(url), c) for c in SLOTS] == before["readable"]
    unfilled = tmp_path / "unfilled.zarr"
    shutil.copytree(url, unfilled)
    per_chunk = Cache.open(str(unfilled)).root["clips/video"].chunks[0]
    old_slots = Cache.open(str(unfilled)).committed().n_slots
    for chunk in (unfilled / "clips" / "video" / "c").iterdir():
        if int(chunk.name) * per_chunk >= old_slots:
            chunk.unlink()
    cache = open_cache(str(unfilled))
    assert (cache.clip_table()[0][old_slots:] == 0).all()
    assert [is_readable(cache, c) for c in SLOTS] == before["readable"]


def test_gc_refuses_a_cache_with_an_unfinished_append_and_points_at_verify_fix(stopped, tmp_path, capsys):
    """As verify checks nothing past an append stopped before it committed (its rows have no status), gc decides
    nothing past it: it does not report those rows as dropped for their status, it refuses (exit 3, as a dry run
    too) naming `verify --fix`, and writes nothing. Once --fix removed the append, gc finds the cache it began from
    sound."""
    url, _ = stopped
    copy = str(tmp_path / "cache.zarr")
    shutil.copytree(url, copy)
    capsys.readouterr()
    for argv in (["gc", copy, "--dry-run"], ["gc", copy]):
        assert cache_main(argv) == 3, argv
        said = capsys.readouterr()
        assert "drop" not in said.out, said.out
        assert f"{copy}: an append" in said.err and "stopped before it committed" in said.err, said.err
        assert f"`fame-cache verify --fix {copy}` removes the unfinished append" in said.err, said.err
    assert Cache.open(copy).n_videos == 6 and not list(tmp_path.glob("*.gc-*"))
    with pytest.warns(UserWarning, match="taking over a stale writer lock"):  # the killed append's
        assert cache_main(["verify", copy, "--fix", "--quiet"]) == 1  # the append is the problem it removes
    assert Cache.open(copy).n_videos == 4
    capsys.readouterr()
    assert cache_main(["gc", copy, "--dry-run"]) == 0
    assert "would keep 4 video(s), drop 0" in capsys.readouterr().out


def test_diff_compares_the_sources_of_the_committed_caches(stopped, tmp_path, capsys):
    """The rows of an append not committed are no source of the cache: another cache of the same source root, whose
    own append of the same paths was finished while one of them was another file, differs from the stopped cache in
    no committed row, so diff compares them without a 'different sources' note (either way round)."""
    url, _ = stopped
    root = Path(url).parent
    other = str(tmp_path / "other.zarr")
    shutil.copytree(url, other)
    new, kept = root / NEW[0], (root / NEW[0]).read_bytes()
    shutil.copyfile(root / "class_1" / "video 1.mp4", new)  # another file under the same path
    try:
        assert new.stat().st_size != len(kept)
        with pytest.warns(UserWarning, match="taking over a stale writer lock"):  # the killed append's
            assert pipeline_main(append_argv(root, other)) == 0  # the append finished there, with that file
    finally:
        new.write_bytes(kept)
    assert open_cache(other).committed_videos() == 6
    a, b = open_cache(url), open_cache(other)
    assert source_differences(a, b) == [] and source_differences(b, a) == []
    capsys.readouterr()
    for first, second in ((url, other), (other, url)):
        assert cache_main(["diff", first, second, "--quiet"]) == 0
        said = capsys.readouterr().out
        assert "note" not in said and "clips       8 matched" in said, said

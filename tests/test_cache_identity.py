"""A cache knows its source videos by content, not by place or time, and one cache root holds several video sets.

Real builds of generated videos: a `touch`, a copy to another folder and a moved root are still the videos a cache was
built from; a same-size edit is not. A train and a test list build into two caches under one root; an append computes
only the new videos and leaves every committed byte as it was; a cache built before fingerprints still loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import SIZE, T, assert_same_cache, make_cache, pipeline_killed_at

from cache_tools import list_caches, open_cache
from cache_tools.cli import main as cache_main
from cache_tools.verify import verify_cache
from pipeline.build import BuildError, _waves, build_cache
from pipeline.cache import Cache, Group, committed_rows
from pipeline.cache.layout import _growing, assign_clip_slots, check_metadata, group_bounds
from pipeline.cli import main as pipeline_main
from pipeline.job import GroupTask
from pipeline.loader.catalog import Catalog, LoaderError, from_cache
from pipeline.loader.params import LoaderParams
from pipeline.params import BuildParams
from pipeline.sources import FINGERPRINT_BYTES

TINY = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2)
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def _videos(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.mp4"))


def _loads(url: str, videos_root: str | None = None) -> int:
    """Videos whose clips the loader's catalog takes from the cache (it refuses changed sources)."""
    catalog = from_cache(url, LoaderParams(crop=16), videos_root=videos_root)
    return len(np.unique(catalog.clip_video[catalog.readable]))


def _file_hashes(url: str, arrays: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every chunk file of the named arrays (metadata files left out)."""
    out = {}
    for name in arrays:
        for path in sorted((Path(url) / name).rglob("*")):
            if path.is_file() and path.name != "zarr.json":
                out[str(path.relative_to(url))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dataset) -> tuple[Path, str]:
    """(videos, cache): the tiny dataset copied and built once; tests work on copies of both."""
    base = tmp_path_factory.mktemp("identity")
    videos = base / "videos"
    shutil.copytree(tiny_dataset, videos)
    url = str(base / "c.zarr")
    report = build_cache(str(videos), url, TINY, progress=False)
    assert report.n_done == 6
    return videos, url


@pytest.fixture
def copy(built, tmp_path) -> tuple[Path, str]:
    videos, url = built
    shutil.copytree(videos, tmp_path / "videos")
    shutil.copytree(url, tmp_path / "c.zarr")
    cache = Cache.open(str(tmp_path / "c.zarr"), mode="r+")
    cache.root.attrs["source_root"] = str(tmp_path / "videos")
    return tmp_path / "videos", str(tmp_path / "c.zarr")


# ---- content, not mtime -----------------------------------------------------------------------------------------


def test_touched_sources_still_match(copy):
    videos, url = copy
    later = 2_000_000_000  # 2033: every video's modification time moves, its bytes do not
    for path in _videos(videos):
        os.utime(path, (later, later))
    assert _loads(url) == 6
    assert verify_cache(open_cache(url)) == []
    report = build_cache(str(videos), url, TINY, resume=True, progress=False)
    assert report.n_computed == 0 and report.n_done == 6


def test_a_copy_and_a_moved_root_still_match(copy, tmp_path):
    videos, url = copy
    elsewhere = tmp_path / "local-disk" / "videos"
    shutil.copytree(videos, elsewhere, copy_function=shutil.copyfile)  # a plain cp -r: new files, new times
    shutil.rmtree(videos)  # and the originals gone: the root moved
    assert all(p.stat().st_mtime > 2_000_000 for p in _videos(elsewhere))
    with pytest.raises(LoaderError, match="vanished"):
        _loads(url)
    assert _loads(url, videos_root=str(elsewhere)) == 6
    report = build_cache(str(elsewhere), url, TINY, resume=True, progress=False)
    assert report.n_computed == 0 and Cache.open(url).source_root == str(elsewhere)
    assert verify_cache(open_cache(url)) == []


def test_a_same_size_edit_is_caught_by_the_fingerprint(copy):
    videos, url = copy
    victim = _videos(videos)[2]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-FINGERPRINT_BYTES // 2] ^= 0xFF  # one byte in the last 4 KiB; the size stays
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the time too
    rel = victim.relative_to(videos).as_posix()
    problems = verify_cache(open_cache(url))
    assert [(p.kind, p.path) for p in problems] == [("source-changed", rel)] and "content changed" in problems[0].detail
    with pytest.raises(LoaderError, match=f"{rel}: content changed"):
        _loads(url)
    with pytest.raises(BuildError, match="changed since they were computed"):
        build_cache(str(videos), url, TINY, resume=True, progress=False)


def test_a_cache_built_before_fingerprints_still_loads(copy, capsys):
    """An older cache: no videos/fingerprint node, mtimes from another time. It loads, verifies and resumes; its
    sources are checked by size alone; an append grows it without the column."""
    videos, url = copy
    shutil.rmtree(Path(url) / "videos" / "fingerprint")
    group = zarr.open_group(url, mode="r+")
    group["videos/mtime"][:] = np.full(6, 1.0e9)  # 2001: nothing like the files' times
    attrs = dict(group.attrs)
    del attrs["sources"]
    group.attrs.clear()
    group.attrs.update(attrs)
    assert "fingerprint" not in Cache.open(url).video_fields
    assert _loads(url) == 6 and verify_cache(open_cache(url)) == []
    assert build_cache(str(videos), url, TINY, resume=True, progress=False).n_computed == 0
    assert cache_main(["info", url]) == 0 and "checked by size alone" in capsys.readouterr().out
    extra = videos / "class_9" / "video_9.mp4"
    extra.parent.mkdir()
    shutil.copyfile(_videos(videos)[0], extra)
    report = build_cache(str(videos), url, TINY, append=True, progress=False)
    assert report.n_computed == 1 and report.n_done == 7 and _loads(url) == 7
    assert not (Path(url) / "videos" / "fingerprint").exists()
    sources = next(e.sources for e in list_caches(str(Path(url).parent)))
    assert [s["videos"] for s in sources] == [6, 1] and sources[0]["source"] == str(videos)
    extra.write_bytes(extra.read_bytes() + b"\0")
    with pytest.raises(LoaderError, match="size"):
        _loads(url)


# ---- several video sets under one root, and appends -------------------------------------------------------------


def _list(path: Path, videos: list[Path], root: Path) -> str:
    path.write_text("".join(f"{v.relative_to(root).as_posix()}\n" for v in videos))
    return str(path)


def test_one_root_holds_a_train_and_a_test_set(copy, tmp_path, capsys):
    videos, _ = copy
    files = _videos(videos)
    train = _list(tmp_path / "trainlist01.txt", files[:4], videos)
    test = _list(tmp_path / "testlist01.txt", files[4:], videos)
    root = tmp_path / "caches"
    base = ["--cache-root", str(root), "--videos-root", str(videos), "--size", "32x40", "--clip-len", "4"]
    base += ["--clips-per-video", "2", "--quiet"]
    assert pipeline_main(["build", train, *base]) == 0
    assert pipeline_main(["build", test, *base]) == 0
    report = tmp_path / "again.json"
    assert pipeline_main(["build", train, *base, "--report", str(report)]) == 0
    assert json.loads(report.read_text())["n_computed"] == 0  # found again by its videos
    capsys.readouterr()
    entries = list_caches(str(root))
    assert len(entries) == 2 and {e.params_hash for e in entries} == {TINY.params_hash()}
    by_list = {Path(e.sources[0]["source"]).name: e for e in entries}
    assert set(by_list) == {"trainlist01.txt", "testlist01.txt"}
    assert by_list["trainlist01.txt"].n_videos == 4 and by_list["testlist01.txt"].n_videos == 2
    assert by_list["trainlist01.txt"].url.endswith(f"{TINY.params_hash()}.zarr")
    assert re.fullmatch(ISO_UTC, by_list["testlist01.txt"].sources[0]["added"])
    assert cache_main(["ls", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"from {re.escape(test)}: 2 videos, added {ISO_UTC}", out), out
    assert cache_main(["ls", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["sources"][0]["videos"] for e in listed) == [2, 4]


def test_append_computes_only_the_new_videos(copy, tmp_path):
    videos, _ = copy
    files = _videos(videos)
    first = _list(tmp_path / "first.txt", files[:4], videos)
    url = str(tmp_path / "grow.zarr")
    assert build_cache(first, url, TINY, videos_root=str(videos), progress=False).n_done == 4
    before = Cache.open(url)
    old_table = before.video_table()
    before.read_clip(0)  # a reader that has opened the clip arrays, as a loader worker has
    old_slots = before.root["masks"].shape[0]
    old_chunks = _file_hashes(url, ("masks", "plates", "clips/checksum", "clips/frames", "clips/video"))
    with pytest.raises(BuildError, match=r"lacks.*--append"):
        build_cache(str(videos), url, TINY, resume=True, progress=False)
    report = build_cache(str(videos), url, TINY, append=True, progress=False)
    assert report.n_computed == 2 and report.n_done == 6 and report.n_clips == 12
    after = Cache.open(url)
    assert _file_hashes(url, ("masks", "plates", "clips/checksum", "clips/frames", "clips/video")).items() >= (
        old_chunks.items()
    )  # every chunk file of the old videos' clips is byte for byte as it was
    table = after.video_table()
    for name, column in old_table.items():
        np.testing.assert_array_equal(table[name][:4], column, err_msg=name)
    assert [str(p) for p in table["path"][4:]] == [f.relative_to(videos).as_posix() for f in files[4:]]
    assert verify_cache(open_cache(url)) == [] and _loads(url) == 6
    # The new videos' clips are what a build of all six computes for them.
    whole = str(tmp_path / "whole.zarr")
    build_cache(str(videos), whole, TINY, progress=False)
    grown, fresh = open_cache(url), open_cache(whole)
    for v in (4, 5):
        a = int(grown.videos("first_clip")[v])
        b = int(fresh.videos("first_clip")[v])
        np.testing.assert_array_equal(grown.root["masks"][a : a + 2], fresh.root["masks"][b : b + 2])
        assert a >= old_slots  # the new videos' slots lie past the arrays the reader opened...
        np.testing.assert_array_equal(before.read_clip(a)[0], grown.root["masks"][a])  # ...which it opens again
    assert [s["videos"] for s in Cache.open(url).attrs["sources"]] == [4, 2]
    assert build_cache(str(videos), url, TINY, append=True, progress=False).n_computed == 0  # nothing new


@pytest.mark.parametrize("fail", [(), (2,)])
def test_append_into_a_shared_table_chunk_leaves_committed_videos_alone(tmp_path, fail):
    """A cache laid out 2 videos per group, of 3 videos: an append of 3 starts mid-chunk of the video table. The done
    videos' masks (the exact truth, which no build computes) stay as they are; a failed one is retried, in a wave of
    its own (its group shares the table chunk with the first new group)."""
    url = make_cache(tmp_path, n_videos=3, fail=fail)
    old = open_cache(url)
    kept = 3 if not fail else 2
    truth = old.root["masks"][: int(old.videos("first_clip")[kept - 1]) + 2]
    for v in range(3, 6):
        shutil.copyfile(
            tmp_path / f"class_{v % 3}" / f"video {v - 3}.mp4", tmp_path / f"class_{v % 3}" / f"new {v}.mp4"
        )
    report = build_cache(str(tmp_path), url, old.params, append=True, progress=False)
    assert report.n_computed == 3 + len(fail) and report.n_done == 6
    grown = open_cache(url)
    assert [g.videos for g in grown.groups()] == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    np.testing.assert_array_equal(grown.root["masks"][: len(truth)], truth)
    assert verify_cache(grown) == []


def test_a_reader_during_an_append_sees_the_cache_as_it_was(tmp_path):
    """An append grows every array before it fills the new rows and slots (fill values: clips/video 0, status '').
    Caught there (or killed there), the cache reads as before; the next append rewrites the unfinished rows."""
    url = make_cache(tmp_path, n_videos=3)
    readable = Cache.open(url).readable_clips().tolist()
    group = zarr.open_group(url, mode="r+")
    group["videos/path"].resize((5,))
    assert {len(c) for c in Cache.open(url).video_table().values()} == {3}  # one column grown, the rows of all
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            node.resize((5 if name.startswith("videos/") else node.shape[0] + 4, *node.shape[1:]))
    cache = Cache.open(url)
    assert cache.n_videos == 5 and cache.committed_videos() == 3
    assert cache.readable_clips().tolist() == readable and _loads(url) == 3
    for v in (3, 4):
        shutil.copyfile(tmp_path / "class_0" / "video 0.mp4", tmp_path / f"class_{v % 3}" / f"new {v}.mp4")
    report = build_cache(str(tmp_path), url, cache.params, append=True, progress=False)
    assert report.n_computed == 2 and report.n_done == 5 and _loads(url) == 5


class Stopped(Exception):
    """Where a test stops a build on purpose."""


def _append_stopped_before_its_status(url: str, src: str, monkeypatch) -> None:
    """An append that grew the arrays and filled the new rows and clip slots, then stopped before their status."""
    write = zarr.Array.__setitem__

    def setitem(self, key, value):
        if self.path == "videos/status":
            raise Stopped
        write(self, key, value)

    with monkeypatch.context() as patch:
        patch.setattr(zarr.Array, "__setitem__", setitem)
        with pytest.raises(Stopped):
            build_cache(src, url, Cache.open(url).params, append=True, progress=False)


def _assert_same_catalog(got: Catalog, want: Catalog) -> None:
    for field in fields(Catalog):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert a == b, field.name


def test_a_garbage_status_is_damage_to_a_row_not_the_end_of_the_cache(tmp_path):
    """Only a status never written (the fill value '') ends the committed rows: a garbage value is a damaged row of
    the cache, which the loader leaves out as not done (and verify reports), not a cut of every row after it."""
    assert committed_rows(np.array(["done", "banana", "failed", "", ""], dtype=object)) == 3
    assert committed_rows(np.array(["done", "pending"], dtype=object)) == 2
    url = make_cache(tmp_path, n_videos=4)
    zarr.open_array(f"{url}/videos/status", mode="r+")[1] = "banana"
    assert Cache.open(url).committed_videos() == 4
    with pytest.warns(UserWarning, match=r"skipping 1 video\(s\) not done: class_1/video 1.mp4 \(banana"):
        catalog = from_cache(url, LoaderParams(crop=16))
    assert len(catalog.paths) == 4 and set(catalog.clip_video[catalog.readable].tolist()) == {0, 2, 3}


def test_a_loader_during_an_append_sees_exactly_the_old_cache(tmp_path, monkeypatch):
    """The loader's catalog counts only the committed rows (those with a status, from the first): an append's rows
    and clip slots, filled but not yet given their status, are not part of the cache, whether the video table was read
    before or after the append grew it (then the clip table read after it points past the table)."""
    url = make_cache(tmp_path, n_videos=3)
    before = from_cache(url, LoaderParams(crop=16))
    old_table = Cache.open(url).video_table()
    (tmp_path / "class_new").mkdir()
    for v in (3, 4):
        shutil.copyfile(tmp_path / "class_0" / "video 0.mp4", tmp_path / "class_new" / f"new {v}.mp4")
    _append_stopped_before_its_status(url, str(tmp_path), monkeypatch)
    cache = Cache.open(url)
    assert cache.n_videos == 5 and set(cache.clip_table()[0].tolist()) >= {3, 4}  # rows and clips written
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        during = from_cache(url, LoaderParams(crop=16))
    assert not [str(w.message) for w in seen if "skipping" in str(w.message)]  # no "2 video(s) not done"
    _assert_same_catalog(during, before)
    monkeypatch.setattr(Cache, "video_table", lambda self: old_table)  # read before the append grew the table
    _assert_same_catalog(from_cache(url, LoaderParams(crop=16)), before)


@pytest.fixture(scope="module")
def appended(built, tmp_path_factory) -> tuple[Path, str, str]:
    """(videos, a cache of the first 4, that cache grown by an uninterrupted append of the other 2)."""
    videos, _ = built
    base = tmp_path_factory.mktemp("appended")
    four, six = str(base / "four.zarr"), str(base / "six.zarr")
    build_cache(
        _list(base / "four.txt", _videos(videos)[:4], videos), four, TINY, videos_root=str(videos), progress=False
    )
    shutil.copytree(four, six)
    assert build_cache(str(videos), six, TINY, append=True, progress=False).n_done == 6
    return videos, four, six


GROWING = r"videos/\w+/zarr\.json"  # a column of the video table growing


@pytest.mark.parametrize(
    "killed_at",
    [
        GROWING,  # while the video table grows (one column grown at least, one not): its columns' lengths disagree
        "videos/path/c/",  # the table grown, the new rows half filled: no path yet
        r"clips/video/zarr\.json",  # the table filled, the clip arrays not grown
    ],
    ids=["table growing", "rows filled", "clips not grown"],
)
def test_verify_fix_of_a_killed_append_lets_the_next_append_finish(appended, tmp_path, killed_at, capsys):
    """`kill -9` of an append before it commits: `verify` reports the unfinished append, `verify --fix` removes it
    (the cache is the one the append began from) instead of marking its half-written rows pending, and the same
    --append then finishes with the bytes of an uninterrupted one."""
    videos, four, six = appended
    url = str(tmp_path / "c.zarr")
    shutil.copytree(four, url)
    append = ["build", str(videos), "--out", url, "--append", "--size", "32x40", "--clip-len", "4", "--quiet"]
    append += ["--clips-per-video", "2"]
    # The table's columns grow side by side: killed at the first, none may have grown (the lengths would agree).
    pipeline_killed_at(url, killed_at, append, after=1 if killed_at == GROWING else 0)
    assert Cache.open(url).committed_videos() == 4
    capsys.readouterr()
    assert cache_main(["verify", url]) == 1
    assert "append" in capsys.readouterr().out
    stale = pytest.warns(UserWarning, match="stale writer lock")  # the killed append left its lock
    if killed_at == GROWING:  # lengths that disagree: an append refuses, naming the repair
        with stale:
            assert pipeline_main(append) == 1
        assert re.search(r"append stopped.*verify --fix.*--append", capsys.readouterr().err)
        stale = contextlib.nullcontext()
    with stale:
        assert cache_main(["verify", url, "--fix"]) == 1
    assert "removed the unfinished append from video 4" in capsys.readouterr().err
    assert cache_main(["verify", url]) == 0
    assert_same_cache(four, url)
    assert Cache.open(url).attrs["layout"] == Cache.open(four).attrs["layout"]
    assert pipeline_main(append) == 0
    assert_same_cache(six, url)
    assert [s["videos"] for s in Cache.open(url).attrs["sources"]] == [4, 2]


def test_lengths_alone_that_disagree_are_looked_at_again(tmp_path):
    url = make_cache(tmp_path, n_videos=3)
    group = zarr.open_group(url, mode="r+")
    group["clips/video"].resize((group["clips/video"].shape[0] + 4,))
    problems = check_metadata(url, dict(group.attrs))
    assert [p.node for p in problems] == ["clips/video"] and _growing(problems)
    doc = json.loads((Path(url) / "masks" / "zarr.json").read_text())
    doc["fill_value"] = 7
    (Path(url) / "masks" / "zarr.json").write_text(json.dumps(doc))
    assert not _growing(check_metadata(url, dict(group.attrs)))


def test_group_layout_after_an_append():
    assert group_bounds(6, 2) == [range(0, 2), range(2, 4), range(4, 6)]
    assert group_bounds(6, 2, [0, 3]) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    first, total = assign_clip_slots([2, 2, 2], 2, 4, first_video=3, first_slot=8)
    assert first.tolist() == [8, 12, 14] and total == 16  # video 4 starts a chunk of the table, so a shard
    assert assign_clip_slots([2, 2, 2], 2, 4)[0].tolist() == assign_clip_slots([2, 2, 2], 2, 4, 0, 0)[0].tolist()


def test_tasks_that_share_a_table_chunk_run_in_separate_waves():
    def task(videos: range) -> GroupTask:
        return GroupTask("", "", TINY, Group(0, videos, range(0)), (), *(np.zeros(0),) * 3, (), (), *(np.zeros(0),) * 2)

    tasks = [task(range(2, 3)), task(range(3, 4)), task(range(4, 6)), task(range(6, 7))]
    waves = _waves(tasks, 2)
    assert [[t.group.videos for t in w] for w in waves] == [[range(2, 3), range(4, 6), range(6, 7)], [range(3, 4)]]

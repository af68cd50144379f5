"""Safety and early checks: no read outside the source root (`..` in a cache, links out of the root), gc deletes only
what it made, and options that cannot work are refused before any video is read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import zarr
from helpers import SIZE, T, make_cache

from cache_tools import list_caches, open_cache
from cache_tools.cli import main as cache_main
from cache_tools.diff import diff_caches
from cache_tools.verify import verify_cache
from pipeline.build import BuildError, build_cache
from pipeline.cli import main as pipeline_main
from pipeline.loader import FameLoader, LoaderError, LoaderParams
from pipeline.params import BuildParams
from pipeline.sources import SourceError, join, list_source

TINY = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2)
QUICK = LoaderParams(crop=24, num_workers=0)


def set_path(url: str, video: int, rel: str) -> None:
    """Edit one entry of a cache's `videos/path`, as a hostile or careless hand would."""
    column = zarr.open_group(url, mode="r+")["videos/path"]
    paths = column[:]
    paths[video] = rel
    column[:] = paths


@pytest.fixture
def cache(tmp_path) -> str:
    return make_cache(tmp_path / "videos", n_videos=3)


@pytest.fixture
def outside(tmp_path, cache) -> Path:
    """A copy of video 0 outside the source root, with its size and mtime: only the path check can tell."""
    target = tmp_path / "private" / "secret.mp4"
    target.parent.mkdir()
    shutil.copy2(Path(cache).parent / "class_0" / "video 0.mp4", target)
    return target


# ---- item 7: reads and builds stay inside the source root --------------------------------------------------------


def test_join_refuses_dotdot_absolute_and_links_out(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "elsewhere.mp4").write_bytes(b"x")
    (root / "a" / "in.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere.mp4", root / "a" / "out.mp4")
    os.symlink(root / "a" / "in.mp4", root / "a" / "alias.mp4")
    assert join(str(root), "a/in.mp4") == str(root / "a" / "in.mp4")
    assert join(str(root), "a/alias.mp4") == str(root / "a" / "alias.mp4")  # a link that stays inside is fine
    for rel in ("../elsewhere.mp4", "a/../../elsewhere.mp4", "/etc/passwd"):
        with pytest.raises(SourceError, match="escapes the source root"):
            join(str(root), rel)
    with pytest.raises(SourceError, match="outside the source root"):
        join(str(root), "a/out.mp4")
    assert join("s3://bucket/videos/", "a/b.mp4") == "s3://bucket/videos/a/b.mp4"
    for rel in ("../other/b.mp4", "a/../../b.mp4", "/b.mp4"):
        with pytest.raises(SourceError, match="escapes"):
            join("s3://bucket/videos", rel)


def test_build_refuses_a_link_out_of_the_source_root(tmp_path):
    src = tmp_path / "src" / "walk"
    src.mkdir(parents=True)
    (src / "ok.mp4").write_bytes(b"x")
    (tmp_path / "private.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "private.mp4", src / "link.mp4")
    with pytest.raises(SourceError, match=r"'walk/link\.mp4' resolves to .*private\.mp4.*outside the source root"):
        list_source(str(tmp_path / "src"))
    listing = tmp_path / "src" / "list.txt"
    listing.write_text("walk/ok.mp4\nwalk/link.mp4\n")
    with pytest.raises(SourceError, match="outside the source root"):
        list_source(str(listing))
    out = tmp_path / "c.zarr"
    with pytest.raises(BuildError, match="outside the source root"):
        build_cache(str(tmp_path / "src"), str(out), TINY, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("how", ["dotdot", "link"])
def test_readers_refuse_a_cache_path_out_of_the_root(cache, outside, tmp_path, capsys, how):
    root = Path(cache).parent
    if how == "dotdot":
        set_path(cache, 0, os.path.relpath(outside, root))
    else:  # the source file swapped for a link to a file elsewhere, after the build
        victim = root / "class_0" / "video 0.mp4"
        victim.unlink()
        os.symlink(outside, victim)
    assert cache_main(["show", cache, "--clip", "0", "--out", str(tmp_path / "x.png")]) == 3
    assert "source root" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(LoaderError, match=r"(outside|escapes) the source root"):
        FameLoader(cache, 2, params=QUICK)
    assert pipeline_main(["preview", cache, "--out", str(tmp_path / "b.png"), "--crop", "24", "--batch-size", "2"]) == 1
    assert "source root" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
    problems = [p for p in verify_cache(open_cache(cache)) if p.kind == "source-escape"]
    assert [p.video for p in problems] == [0]


def test_catalog_video_path_refuses_an_escape(cache):
    import dataclasses

    import numpy as np

    catalog = FameLoader(cache, 2, params=QUICK).catalog
    assert catalog.video_path(1).endswith("video 1.mp4")
    bad = dataclasses.replace(catalog, paths=np.array(["../../x.mp4", *catalog.paths[1:]], dtype=object))
    with pytest.raises(LoaderError, match="escapes the source root"):
        bad.video_path(0)


def test_gc_leaves_folders_it_did_not_make(cache, capsys):
    os.remove(Path(cache).parent / "class_2" / "video 2.mp4")  # something for gc to drop
    mine = [Path(cache + ".gc-old"), Path(cache + ".gc-tmp")]
    for folder in mine:
        folder.mkdir()
        (folder / "keep.txt").write_text("user data")
    assert cache_main(["gc", cache, "--quiet"]) == 0
    assert "dropped 1" in capsys.readouterr().out
    assert [(f / "keep.txt").read_text() for f in mine] == ["user data"] * 2
    assert sorted(p.name for p in Path(cache).parent.iterdir() if ".gc-" in p.name) == sorted(f.name for f in mine)
    assert open_cache(cache).n_videos == 2


def test_gc_removes_its_own_copy_when_it_fails(cache, monkeypatch):
    import cache_tools.gc as gc

    os.remove(Path(cache).parent / "class_2" / "video 2.mp4")
    made = []

    def failing_copy(old, keep, url, progress):
        made.append(url)
        os.makedirs(url)
        raise OSError("disk full")

    monkeypatch.setattr(gc, "_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        gc.gc_cache(cache, dry_run=False)
    assert len(made) == 1 and ".gc-tmp-" in made[0] and not os.path.exists(made[0])
    assert open_cache(cache).n_videos == 3


# ---- item 8: options that cannot work are refused up front -------------------------------------------------------


def test_size_and_clip_len_checked_before_any_video(tmp_path, capsys):
    with pytest.raises(ValueError, match="over max-pixels"):
        BuildParams(size=(100_000, 100_000))
    with pytest.raises(ValueError, match="spans 199999 source frames, over max-frames 100000"):
        BuildParams(clip_len=100_000)
    with pytest.raises(ValueError, match="JPEG"):
        BuildParams(size=(8, 70_000), max_pixels=10**9)
    with pytest.raises(ValueError, match="bytes of masks per clip"):
        BuildParams(size=(256, 256), clip_len=40_000, stride=1)
    BuildParams(size=(2160, 4096), clip_len=64)  # the largest frame accepted is a fine size
    out = tmp_path / "c.zarr"
    for flags in (["--size", "100000x100000"], ["--clip-len", "100000"]):
        with pytest.raises(SystemExit) as exit_info:
            pipeline_main(["build", str(tmp_path), "--out", str(out), "--quiet", *flags])
        assert exit_info.value.code == 2 and "max-" in capsys.readouterr().err
    assert not out.exists()


def test_report_path_checked_before_the_build(cache, tmp_path, capsys):
    src, out = str(Path(cache).parent), tmp_path / "c.zarr"
    for report, message in ((tmp_path, "is a folder"), (tmp_path / "missing" / "r.json", "does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            pipeline_main(["build", src, "--out", str(out), "--quiet", "--report", str(report)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        with pytest.raises(BuildError, match=message):
            build_cache(src, str(out), TINY, progress=False, report_path=str(report))
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(cache, tmp_path, capsys):
    from trainer.cli import main as train_main
    from trainer.evaluate import EvalError, evaluate

    code = train_main(["pretrain", "--cache", cache, "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert code == 1 and "--device cuda: torch finds no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(EvalError, match="no CUDA GPU"):
        evaluate(None, str(tmp_path), str(tmp_path), device="cuda")


def test_plain_moco_trains_with_batch_size_one(tmp_path, capsys):
    from trainer.cli import main as train_main

    url = make_cache(tmp_path / "videos", n_videos=4, textured=True)
    flags = ["--backbone", "small", "--epochs", "1", "--queue-size", "8", "--crop", "24", "--workers", "0"]
    code = train_main(["pretrain", "--cache", url, "--out", str(tmp_path / "run"), *flags, "--batch-size", "1"])
    assert code == 1 and "batch_size must be >= 2 with FAME" in capsys.readouterr().err
    run = tmp_path / "plain"
    args = ["pretrain", "--cache", url, "--out", str(run), *flags, "--batch-size", "1", "--no-fame", "--max-steps", "2"]
    assert train_main(args) == 0
    assert len((run / "log.jsonl").read_text().splitlines()) == 2


def test_diff_refuses_caches_of_different_sources_unless_asked(tmp_path, capsys):
    a = make_cache(tmp_path / "one", n_videos=3)
    b = make_cache(tmp_path / "two", n_videos=3, textured=True)  # the same names, other videos
    with pytest.raises(ValueError, match=r"different sources.*source roots differ.*other size"):
        diff_caches(open_cache(a), open_cache(b))
    with pytest.raises(SystemExit) as exit_info:
        cache_main(["diff", a, b])
    assert exit_info.value.code == 2 and "--any-source" in capsys.readouterr().err
    assert cache_main(["diff", a, b, "--any-source", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["sources"][0].startswith("source roots differ") and d["clips"]["matched"] == 6
    assert cache_main(["diff", a, b, "--any-source"]) == 0
    assert "note: built from different sources" in capsys.readouterr().out
    assert diff_caches(open_cache(a), open_cache(a))["sources"] == []


def test_ls_lists_a_half_made_cache_as_broken_and_goes_on(cache, capsys):
    root = Path(cache).parent
    half = root / "half.zarr"
    shutil.copytree(cache, half)
    shutil.rmtree(half / "videos" / "status")  # killed while creating
    entries = {Path(e.url).name: e for e in list_caches(str(root))}
    assert set(entries) == {"cache.zarr", "half.zarr"}
    assert entries["cache.zarr"].problem == "" and entries["cache.zarr"].n_videos == 3
    assert entries["half.zarr"].problem and entries["half.zarr"].n_videos == 0
    assert cache_main(["ls", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    created = open_cache(cache).attrs["created"]  # a cache made before `sources`: its root, count and creation
    assert lines[1] == f"    from {root}: 3 videos, added {created}"  # what the sound cache covers
    del lines[1]
    assert len(lines) == 2 and lines[1].startswith(f"BROKEN  {half}: ") and lines[0].endswith("cache.zarr")
    assert cache_main(["ls", str(root), "--json"]) == 0
    assert [bool(e["problem"]) for e in json.loads(capsys.readouterr().out)] == [False, True]

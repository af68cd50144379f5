"""The keyframe index from the build (issue 18): each video's packet timestamps and keyframes, stored by the build in
`videos/frame_index`, equal what demuxing the file gives (closed and open GOP, real videos); the loader seeks with it
without demuxing, to the same frames byte for byte; a cache without it still loads and verifies; verify, --fix,
resume and gc keep it sound."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import zarr

import pipeline.video as video
from cache_tools.gc import gc_cache
from cache_tools.verify import fix_cache, verify_and_fix, verify_cache
from pipeline.build import build_cache
from pipeline.cache import DONE, Cache
from pipeline.loader import FameLoader, LoaderParams
from pipeline.loader.catalog import from_cache
from pipeline.params import BuildParams
from pipeline.swap import draw_swaps, read_swapped
from pipeline.video import NO_INDEX, FrameIndex, decode_clips, frame_index, write_video
from synthetic import Scene, render

PARAMS = BuildParams(size=(32, 40), clip_len=4, stride=3, clips_per_video=2)
REAL = ("bikes.mp4", "carphone_pristine.mp4")  # bikes: 6 keyframes; carphone: one


def write_open_gop(path: Path, frames: np.ndarray, keyint: int) -> None:
    """H.264 with open groups: B-frames before each keyframe that reference the group before it."""
    os.makedirs(path.parent, exist_ok=True)
    with av.open(str(path), "w") as out:
        options = {"g": str(keyint), "x264-params": "open-gop=1:bframes=3:scenecut=0"}
        stream = out.add_stream("libx264", rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, real_videos) -> str:
    """A cache built from short-GOP videos (closed and open groups) and real ones, every video with its index."""
    root = tmp_path_factory.mktemp("frame_index")
    src = root / "videos"
    for v in range(2):
        frames, _ = render(Scene(n_frames=40, background_seed=v, object_seed=10 + v))
        write_video(src / "closed" / f"v{v}.mp4", frames, keyint=6)
        write_open_gop(src / "open" / f"v{v}.mp4", frames, keyint=8)
    for name in REAL:
        os.makedirs(src / "real", exist_ok=True)
        shutil.copy(real_videos / name, src / "real" / name)
    out = str(root / "cache.zarr")
    report = build_cache(str(src), out, PARAMS, progress=False)
    assert report.n_done == 6
    return out


def stored_indexes(url: str) -> dict[str, str]:
    cache = Cache.open(url)
    return dict(zip(map(str, cache.videos("path")), map(str, cache.videos("frame_index")), strict=True))


def test_the_stored_index_is_the_one_the_file_demuxes(indexed):
    cache = Cache.open(indexed)
    for rel, text in stored_indexes(indexed).items():
        demuxed = frame_index(os.path.join(cache.source_root, rel))
        assert demuxed is not None and text not in ("", NO_INDEX), rel
        stored = FrameIndex.from_text(text)
        np.testing.assert_array_equal(stored.pts, demuxed.pts, err_msg=rel)
        np.testing.assert_array_equal(stored.keyframes, demuxed.keyframes, err_msg=rel)
    several = [r for r, t in stored_indexes(indexed).items() if len(FrameIndex.from_text(t).keyframes) > 3]
    assert {"closed/v0.mp4", "open/v0.mp4", "real/bikes.mp4"} <= set(several)


def test_text_round_trip_and_refusals():
    index = FrameIndex(pts=np.array([0, 512, 1024, 1600, 2112], np.int64), keyframes=np.array([0, 3]))
    assert index.to_text() == "0 512*2 576*1 512*1 / 0 3*1"
    back = FrameIndex.from_text(index.to_text())
    np.testing.assert_array_equal(back.pts, index.pts)
    np.testing.assert_array_equal(back.keyframes, index.keyframes)
    for bad in ("0 512*2", "0 512*x / 0", "0 512*2 / 1", "0 512*2 / 0 5*1", "0 -5*2 / 0"):
        with pytest.raises(ValueError, match="frame index"):
            FrameIndex.from_text(bad)


def without_index(url: str, dest: Path) -> str:
    """A copy of the cache as a build before the index made it: no videos/frame_index node at all."""
    copy = str(dest / "older.zarr")
    shutil.copytree(url, copy)
    shutil.rmtree(os.path.join(copy, "videos", "frame_index"))
    return copy


def batches(url: str, n: int = 2) -> list[dict[str, np.ndarray]]:
    params = LoaderParams(crop=24, num_workers=0, fame_p=1.0, own_floor=0.0, own_margin=0.0, mask_mode="threshold")
    loader = iter(FameLoader(url, 2, params=params, seed=5))
    return [{k: v.numpy() for k, v in next(loader).items()} for _ in range(n)]


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """Calls of the lazy indexer (demuxing a whole file) and of the seeking decoder."""
    calls = {"demux": 0, "seek": 0}
    lazy, seeking = video.frame_index, video._decode_seeking

    def counting_index(path):
        calls["demux"] += 1
        return lazy(path)

    def counting_seek(*args, **kwargs):
        calls["seek"] += 1
        return seeking(*args, **kwargs)

    monkeypatch.setattr(video, "frame_index", counting_index)
    monkeypatch.setattr(video, "_decode_seeking", counting_seek)
    return calls


def test_loader_seeks_with_the_stored_index_to_the_same_batches(indexed, tmp_path, counted):
    with_index = batches(indexed)
    assert counted["demux"] == 0, "a loader on an indexed cache demuxed a whole file to find where to seek"
    assert counted["seek"] > 0, "the loader never seeked: the test videos do not exercise the index"
    older = without_index(indexed, tmp_path)
    assert verify_cache(Cache.open(older), sources=False) == []  # a cache built before the index is sound
    assert from_cache(older, LoaderParams()).frame_index is None
    without = batches(older)
    assert counted["demux"] > 0, "without a stored index the loader must demux for one"
    for a, b in zip(with_index, without, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_clips_decoded_with_the_stored_index_are_those_of_a_full_pass(indexed, counted):
    catalog = from_cache(indexed, LoaderParams())
    for v in range(len(catalog.paths)):
        frames = catalog.clip_frames[catalog.clip_video == v]
        clips = [frames[-1], frames[0]]  # the late clip first: two seeks, out of order
        path, stored = catalog.video_path(v), catalog.stored_index(v)
        reference = decode_clips(path, clips, catalog.size, seek=False)
        for got, want in zip(decode_clips(path, clips, catalog.size, stored_index=stored), reference, strict=True):
            assert got.tobytes() == want.tobytes(), catalog.paths[v]
    assert counted["demux"] == 0 and counted["seek"] > 0


def test_no_index_means_decoding_from_the_start(indexed, counted):
    catalog = from_cache(indexed, LoaderParams())
    frames = catalog.clip_frames[catalog.clip_video == 0]
    got = decode_clips(catalog.video_path(0), [frames[-1]], catalog.size, stored_index=NO_INDEX)
    assert counted == {"demux": 0, "seek": 0}
    np.testing.assert_array_equal(got[0], decode_clips(catalog.video_path(0), [frames[-1]], catalog.size)[0])


def test_verify_fix_and_resume_restore_a_damaged_index(indexed, tmp_path):
    url = str(tmp_path / "c.zarr")
    shutil.copytree(indexed, url)
    want = stored_indexes(url)
    column = zarr.open_array(os.path.join(url, "videos", "frame_index"), mode="r+")
    column[1] = "0 512*3 / 0"  # four frames: not the video's count
    problems = verify_cache(Cache.open(url), sources=False)
    assert [(p.kind, p.video) for p in problems] == [("frame-index", 1)]
    assert fix_cache(url, problems) == [1] and Cache.open(url).videos("status")[1] != DONE
    src = Cache.open(url).source_root
    report = build_cache(src, url, PARAMS, resume=True, progress=False)
    assert report.n_done == 6 and stored_indexes(url) == want
    assert verify_cache(Cache.open(url), sources=False) == []


def test_verify_fix_rewrites_the_index_metadata(indexed, tmp_path):
    url = str(tmp_path / "c.zarr")
    shutil.copytree(indexed, url)
    want = stored_indexes(url)
    os.remove(os.path.join(url, "videos", "frame_index", "zarr.json"))  # its data stays: damaged, not absent
    repair = verify_and_fix(url)
    assert [p.path for p in repair.problems] == ["videos/frame_index/zarr.json"] and repair.marked == []
    assert stored_indexes(url) == want


def test_gc_keeps_sound_indexes_and_blanks_damaged_ones(indexed, tmp_path):
    url = str(tmp_path / "c.zarr")
    shutil.copytree(indexed, url)
    want = stored_indexes(url)
    zarr.open_array(os.path.join(url, "videos", "frame_index"), mode="r+")[2] = "not an index"
    gc_cache(url, dry_run=False)
    after = stored_indexes(url)
    damaged = str(Cache.open(indexed).videos("path")[2])
    assert after == {**want, damaged: ""}
    assert verify_cache(Cache.open(url), sources=False) == []


def test_gc_of_a_cache_without_the_index_gives_one_that_loads(indexed, tmp_path):
    older = without_index(indexed, tmp_path)
    gc_cache(older, dry_run=False)
    assert set(stored_indexes(older).values()) == {""}  # not recorded: the loader demuxes
    assert len(batches(older, n=1)) == 1


def test_a_video_whose_timestamps_cannot_number_its_frames_is_stored_as_no_index(tmp_path, monkeypatch):
    frames, _ = render(Scene(n_frames=12))
    write_video(tmp_path / "videos" / "a" / "v.mp4", frames, keyint=4)
    write_video(tmp_path / "videos" / "b" / "v.mp4", frames, keyint=4)
    monkeypatch.setattr(video._PacketLog, "index", lambda self: None)
    build_cache(str(tmp_path / "videos"), str(tmp_path / "c.zarr"), PARAMS, progress=False)
    assert set(stored_indexes(str(tmp_path / "c.zarr")).values()) == {NO_INDEX}


def test_swapped_set_seeks_with_the_stored_index(indexed, counted):
    """The swapped test decodes its clips where the cache's index says, demuxing no file, to the same frames as
    without the index."""
    swap_set = draw_swaps(indexed, seed=0)
    assert len(swap_set.frame_index) == len(swap_set.paths)
    with_index = [clip for clips in read_swapped(swap_set) for clip in clips]
    assert counted["demux"] == 0, "the swapped set demuxed a whole file although the cache has its index"
    assert counted["seek"] > 0, "the swapped set never seeked: the test videos do not exercise the index"
    without = [clip for clips in read_swapped(dataclasses.replace(swap_set, frame_index=())) for clip in clips]
    assert counted["demux"] > 0
    assert len(with_index) == len(without) > 0
    for a, b in zip(with_index, without, strict=True):
        np.testing.assert_array_equal(a.original, b.original)
        np.testing.assert_array_equal(a.swapped, b.swapped)

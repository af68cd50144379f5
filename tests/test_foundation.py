"""Parameters, sources, clip planning, decoding and the store's commit protocol."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.cache import DONE, Cache, CacheError
from pipeline.params import BuildParams, parse_clips_per_video, parse_size
from pipeline.plan import clip_count, clip_frames
from pipeline.sources import SourceError, list_source
from pipeline.video import VideoError, _seek_runs, decode, decode_clip, decode_clips, frame_index, probe, write_video
from synthetic import Scene, render, write_dataset


def test_parse_size_names_bad_value():
    assert parse_size("128x171") == (128, 171)
    with pytest.raises(ValueError, match="'12x'"):
        parse_size("12x")
    assert parse_clips_per_video("all") is None
    assert parse_clips_per_video("3") == 3


def test_params_hash_tracks_output_fields_only():
    base = BuildParams()
    assert base.params_hash() == BuildParams(max_pixels=100_000).params_hash()
    assert base.params_hash() != BuildParams(method="fame").params_hash()
    assert base.differences(BuildParams(clip_len=8)) == {"clip_len": (16, 8)}
    assert BuildParams.from_dict(base.to_dict()) == base


def test_clip_plan_even_loop_and_all():
    p = BuildParams(clip_len=4, stride=2, clips_per_video=3)  # span 7
    frames = clip_frames(20, p)
    assert frames.shape == (3, 4)
    assert frames[0, 0] == 0 and frames[-1, -1] == 19
    assert clip_count(5, p) == 1
    assert clip_frames(5, p).tolist() == [[0, 2, 4, 1]]  # looped
    assert clip_count(1, p) == 0
    every = BuildParams(clip_len=4, stride=2, clips_per_video=None)
    assert clip_frames(21, every)[:, 0].tolist() == [0, 7, 14]


def test_decode_lossless_exact_and_selected(tmp_path):
    frames, _ = render(Scene(n_frames=8))
    path = tmp_path / "a b é.mp4"
    write_video(path, frames, lossless=True)
    out, info = decode(str(path))
    assert info.n_frames == 8
    np.testing.assert_array_equal(out, frames)
    some, _ = decode(str(path), size=(32, 40), keep=[1, 3])
    assert some.shape == (2, 32, 40, 3)
    assert probe(str(path)).width == 176


def test_resize_is_a_whole_frame_area_resize(tmp_path):
    frames, _ = render(Scene(size=(96, 128), n_frames=4))
    path = tmp_path / "v.mp4"
    write_video(path, frames, lossless=True)
    small, _ = decode(str(path), size=(48, 64))
    halved = frames.reshape(4, 48, 2, 64, 2, 3).mean(axis=(2, 4))  # exact 2x2 area averages of the whole frame
    assert small.shape == (4, 48, 64, 3) and small.dtype == np.uint8
    error = np.abs(small.astype(float) - halved)
    assert error.mean() < 2 and np.percentile(error, 99) < 8, f"mean {error.mean():.2f}"


def test_two_clips_from_one_pass_match_single_decodes(tmp_path):
    frames, _ = render(Scene(n_frames=20))
    path = str(tmp_path / "v.mp4")
    write_video(path, frames)
    late, early = [12, 14, 16, 18], [0, 2, 2, 4]  # out of order and with a repeat, as looped clips are
    a, b = decode_clips(path, [late, early], (64, 88))
    np.testing.assert_array_equal(a, decode_clip(path, late, (64, 88)))
    np.testing.assert_array_equal(b, decode_clip(path, early, (64, 88)))
    np.testing.assert_array_equal(b[1], b[2])
    with pytest.raises(VideoError, match="do not exist"):
        decode_clips(path, [early, [30]])


@pytest.mark.parametrize("open_gop", [False, True])
def test_seeking_to_keyframes_gives_the_frames_of_a_full_pass(tmp_path, open_gop):
    frames, _ = render(Scene(n_frames=60))
    path = str(tmp_path / "v.mp4")
    write_video(path, frames, keyint=8)
    if open_gop:  # B-frames before a keyframe that reference the previous group: seeking must still be exact
        path = str(tmp_path / "open.mp4")
        with av.open(path, "w") as out:
            stream = out.add_stream("libx264", rate=25, options={"g": "8", "x264-params": "open-gop=1:bframes=3"})
            stream.width, stream.height, stream.pix_fmt = 176, 128, "yuv420p"
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())
    index = frame_index(path)
    assert index is not None and len(index.keyframes) > 3
    late, early = list(range(41, 57, 2)), list(range(3, 11))
    assert len(_seek_runs(np.unique(late + early), index)) == 2, "the clips should be decoded in two seeks"
    everything, _ = decode(path, (64, 88))
    a, b = decode_clips(path, [late, early], (64, 88))
    np.testing.assert_array_equal(a, everything[late])
    np.testing.assert_array_equal(b, everything[early])
    for seeking, from_start in zip((a, b), decode_clips(path, [late, early], (64, 88), seek=False), strict=True):
        np.testing.assert_array_equal(seeking, from_start)


def test_a_rewritten_video_is_indexed_again(tmp_path):
    path = str(tmp_path / "v.mp4")
    for n_frames, keyint, seed in ((40, 8, 0), (60, 5, 1)):  # same path, another video
        frames, _ = render(Scene(n_frames=n_frames, background_seed=seed))
        write_video(path, frames, keyint=keyint)
        wanted = list(range(n_frames - 10, n_frames, 3))
        everything, _ = decode(path, (64, 88))
        np.testing.assert_array_equal(decode_clip(path, wanted, (64, 88)), everything[wanted])
        assert len(frame_index(path).pts) == n_frames


def test_seeking_in_a_real_video(real_videos):
    path = real_videos / "bikes.mp4"
    index = frame_index(str(path))
    assert index is not None and len(index.keyframes) > 2
    wanted = [200, 210, 220, 249]
    clip = decode_clip(str(path), wanted, (68, 160))
    everything, _ = decode(str(path), (68, 160))
    np.testing.assert_array_equal(clip, everything[wanted])


def test_generated_dataset_at_another_size(tmp_path):
    paths = write_dataset(tmp_path, n_classes=2, videos_per_class=1, n_frames=6, size=(64, 96))
    assert paths == ["class_0/video_0.mp4", "class_1/video_0.mp4"]
    info = probe(str(tmp_path / paths[0]))
    assert (info.height, info.width, info.n_frames) == (64, 96, 6)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "file not found"), (b"", "empty"), (b"hello, I am text\n" * 20, "not a video")],
)
def test_decode_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError, match=message) as info:
        decode(str(path))
    assert "bad.mp4" in str(info.value)


def test_sources_folder_list_and_escape(tmp_path):
    for rel in ["walk/a.mp4", "run/b b.avi", "run/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    src = list_source(str(tmp_path))
    assert [(e.path, e.label) for e in src.entries] == [("run/b b.avi", "run"), ("walk/a.mp4", "walk")]
    split = tmp_path / "trainlist01.txt"
    split.write_text("walk/a.mp4 1\nrun/b b.avi 2\n")
    assert {e.label for e in list_source(str(split)).entries} == {"walk", "run"}
    bad = tmp_path / "bad.csv"
    bad.write_text("../outside.mp4,x\n")
    with pytest.raises(SourceError, match="escapes"):
        list_source(str(bad))


def test_store_commit_protocol(tmp_path):
    p = BuildParams(size=(16, 20), clip_len=4, clips_per_video=2)
    counts = [2, 0, 2]
    table = {"path": np.array(["a", "b", "c"], dtype=object), "label": np.array(["x"] * 3, dtype=object)}
    frames = [np.zeros((c, 4), np.int32) for c in counts]
    url = str(tmp_path / "c.zarr")
    cache = Cache.create(url, p, "/src", table, counts, frames, videos_per_group=2, clips_per_shard=4)
    groups = cache.groups()
    assert [(g.videos, g.clips) for g in groups] == [(range(0, 2), range(0, 4)), (range(2, 3), range(4, 8))]
    assert cache.readable_clips().size == 0
    g = groups[1]
    n = len(g.clips)
    masks = np.full((n, 4, 16, 20), 200, np.uint8)
    plates = np.zeros((n, 16, 20, 3), np.uint8)
    cache.write_group(g, masks, plates, np.zeros((n, 4), np.int32), {"status": [DONE], "error": [""]})
    reopened = Cache.open(url)
    assert reopened.readable_clips().tolist() == [4, 5]
    assert reopened.check_clip(4)
    with pytest.raises(CacheError, match="no cache"):
        Cache.open(str(tmp_path / "missing.zarr"))


def test_zarr_adapter_overlaps_reads_and_writes_in_order(tmp_path):
    """The one module that reaches Zarr's event loop: results come back in the order asked, reads and writes land."""
    import asyncio

    import zarr

    from pipeline.cache.zarr_async import read_arrays, together, write_arrays

    async def after(delay: float, value: int) -> int:
        await asyncio.sleep(delay)
        return value

    assert together(after(0.02, 1), after(0.0, 2), after(0.01, 3)) == [1, 2, 3]
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(4,), chunks=(2,), dtype=np.int32, fill_value=0)
    write_arrays(group, [("a", slice(0, 2), np.array([1, 2], np.int32)), ("b", slice(None), np.arange(4))])
    a, b = read_arrays(zarr.open_group(str(tmp_path / "g.zarr"), mode="r"), ["a", "b"])
    assert a.tolist() == [1, 2, 0, 0] and b.tolist() == [0, 1, 2, 3]

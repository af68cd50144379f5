"""The build job end to end: generated and real videos, both mask methods, refusals, Ray workers, kill and resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import assert_same_cache, cache_arrays

from pipeline.build import (
    MAX_VIDEOS_PER_GROUP,
    TABLE_CHUNKS,
    BuildError,
    build_cache,
    runs_on_ray,
    videos_per_group,
)
from pipeline.cache import DONE, Cache
from pipeline.cli import main
from pipeline.masks import get_method
from pipeline.params import RAY_MIN_VIDEOS_PER_WORKER, BuildParams
from pipeline.video import decode_clip
from synthetic import Scene, write_dataset, write_scene

TINY = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["motion", "fame"])
def test_build_generated_both_methods(tiny_dataset, tmp_path, method):
    from pipeline.plates import background_plate

    params = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2, method=method)
    out = str(tmp_path / "c.zarr")
    report = build_cache(str(tiny_dataset), out, params, progress=False)
    assert (report.n_videos, report.n_done, report.n_failed, report.n_clips) == (6, 6, 0, 12)
    cache = Cache.open(out)
    assert cache.params == params and cache.params_hash == params.params_hash()
    paths = cache.videos("path")
    assert all(not os.path.isabs(str(p)) for p in paths)
    assert sorted(set(cache.videos("label"))) == ["class_0", "class_1", "class_2"]
    assert (cache.videos("bytes") == [os.path.getsize(tiny_dataset / str(p)) for p in paths]).all()
    clips = cache.readable_clips()
    assert len(clips) == 12 and all(cache.check_clip(int(c)) for c in clips)
    clip_video, clip_frames = cache.clip_table()
    fn = get_method(method)
    for c in clips[[0, -1]]:  # stored masks are exactly what the method gives on the decoded clip
        path = str(tiny_dataset / str(paths[clip_video[c]]))
        frames = decode_clip(path, clip_frames[c], params.size)
        mask = cache.mask(int(c))
        np.testing.assert_array_equal(mask, fn(frames))
        plate_error = np.abs(cache.plate(int(c)).astype(int) - background_plate(frames, mask)).mean()
        # Plates are JPEG; these generated textures are per-pixel colour noise, JPEG's worst case (real frames: ~1).
        assert plate_error < 10, f"plates are JPEG (quality 90): mean error {plate_error:.1f}"
        assert mask.shape == (4, 32, 40) and 0 < (mask >= 128).mean() < 1


def test_build_real_videos(real_videos, tmp_path):
    params = BuildParams(size=(48, 64), clip_len=8, stride=2, clips_per_video=1)
    out = str(tmp_path / "real.zarr")
    report = build_cache(str(real_videos), out, params, progress=False)
    assert report.n_done == report.n_videos == 3 and report.n_failed == 0
    cache = Cache.open(out)
    assert (cache.videos("height") > 100).all()  # source resolution recorded, frames resized whole
    clip_video, clip_frames = cache.clip_table()
    for c in cache.readable_clips():
        mask, plate = cache.mask(int(c)), cache.plate(int(c))
        fg = (mask >= 128).mean()
        assert 0.005 < fg < 0.95, f"clip {c}: foreground fraction {fg:.3f}"
        frames = decode_clip(
            str(real_videos / str(cache.videos("path")[clip_video[c]])), clip_frames[c], params.size
        ).astype(np.float32)
        # The plate looks like the clip's background: close to the frames where they are background.
        bg = mask < 128
        err = np.abs(frames - plate[None].astype(np.float32)).mean(-1)[bg].mean()
        assert err < 40, f"clip {c}: plate differs from the background by {err:.1f} grey levels"
        assert plate.std() > 5


def test_refuses_other_params_and_existing_cache(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "c.zarr")
    build_cache(str(tiny_dataset), out, TINY, progress=False)
    other = BuildParams(size=(32, 40), clip_len=6, stride=2, clips_per_video=2)
    with pytest.raises(BuildError, match=r"clip_len: asked 6, cache has 4"):
        build_cache(str(tiny_dataset), out, other, resume=True, progress=False)
    with pytest.raises(BuildError, match="--resume"):
        build_cache(str(tiny_dataset), out, TINY, progress=False)
    rc = main(["build", str(tiny_dataset), "--out", out, "--size", "32x40", "--clip-len", "6", "--quiet"])
    assert rc == 1 and "clip_len" in capsys.readouterr().err
    # A finished cache resumed again computes nothing and stays the same.
    before = cache_arrays(out)
    report = build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert report.n_computed == 0 and report.n_done == 6
    after = cache_arrays(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # A folder that is not a cache is not written over; bad options are usage errors.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a FAME cache"):
        build_cache(str(tiny_dataset), str(junk), TINY, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["build", str(tiny_dataset), "--out", out, "--size", "12x"])
    assert exc.value.code == 2


def test_cache_root_finds_and_reuses(tiny_dataset, tmp_path):
    root = tmp_path / "caches"
    args = ["build", str(tiny_dataset), "--cache-root", str(root), "--size", "32x40", "--clip-len", "4", "--quiet"]
    assert main([*args, "--clips-per-video", "2"]) == 0
    made = root / f"{TINY.params_hash()}.zarr"
    assert Cache.open(str(made)).n_videos == 6
    report_path = tmp_path / "r.json"
    assert main([*args, "--clips-per-video", "2", "--report", str(report_path)]) == 0
    import json

    report = json.loads(report_path.read_text())
    assert report["n_computed"] == 0 and report["out"] == str(made) and report["params_hash"] == TINY.params_hash()


def test_two_ray_workers_same_bytes_as_one(tiny_dataset, tmp_path):
    one, two = str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr")
    r1 = build_cache(str(tiny_dataset), one, TINY, workers=1, progress=False)
    r2 = build_cache(str(tiny_dataset), two, TINY, workers=2, progress=False, ray=True)
    assert (r1.mode, r2.mode) == ("in-process", "ray")
    assert r2.n_done == 6
    assert_same_cache(one, two)


def test_writer_groups_grow_with_the_source_so_table_columns_stay_few_chunks():
    """Small sources: many small groups (parallelism); from 32,768 videos on, a column of the video table (one chunk
    per group) stays near TABLE_CHUNKS chunks, up to MAX_VIDEOS_PER_GROUP videos a group."""
    assert [videos_per_group(n) for n in (1, 63, 64, 255, 256, 32_768)] == [1, 1, 2, 7, 8, 8]
    assert videos_per_group(32_769) == 9
    assert videos_per_group(100_000) == 25
    assert videos_per_group(300_000) == MAX_VIDEOS_PER_GROUP  # Kinetics-400
    assert videos_per_group(650_000) == MAX_VIDEOS_PER_GROUP  # Kinetics-700: 10,157 chunks a column, not 81,250
    sizes = [videos_per_group(n) for n in range(1, 400_000, 997)]
    assert sizes == sorted(sizes)  # never smaller for a larger source
    assert all(math.ceil(n / videos_per_group(n)) <= TABLE_CHUNKS for n in range(32_768, 262_145, 4099))


def test_small_local_jobs_run_in_process_and_a_cluster_or_ray_forced_always_on_ray():
    per = RAY_MIN_VIDEOS_PER_WORKER
    assert not runs_on_ray(2 * per - 1, workers=2, address=None)  # Ray's start-up would not pay for itself
    assert runs_on_ray(2 * per, workers=2, address=None)
    assert not runs_on_ray(10**6, workers=1, address=None)
    assert runs_on_ray(1, workers=1, address="auto")
    assert runs_on_ray(1, workers=2, address=None, ray=True)
    assert not runs_on_ray(10**6, workers=8, address=None, ray=False)


def test_kill_then_resume_equals_uninterrupted(tmp_path):
    src = tmp_path / "videos"
    write_dataset(src, n_classes=2, videos_per_class=6, n_frames=24, seed=3)
    ref, out = str(tmp_path / "ref.zarr"), str(tmp_path / "killed.zarr")
    opts = ["--size", "48x64", "--clip-len", "8", "--clips-per-video", "2", "--quiet"]
    params = BuildParams(size=(48, 64), clip_len=8, stride=2, clips_per_video=2)
    build_cache(str(src), ref, params, progress=False)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "build", str(src), "--out", out, *opts],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done_at_kill = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = zarr.open_group(out, mode="r")["videos/status"][:]
            except Exception:  # not created yet
                time.sleep(0.01)
                continue
            if (status == DONE).sum() >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                done_at_kill = int((status == DONE).sum())
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert done_at_kill is not None, "the build ended before it could be killed"
    status = Cache.open(out).videos("status")
    assert (status != DONE).any(), "killed too late: every group was already committed"
    with pytest.raises(BuildError, match="--resume"), pytest.warns(UserWarning, match="stale writer lock"):
        build_cache(str(src), out, params, progress=False)  # the killed build left its lock: this host, pid gone
    report = build_cache(str(src), out, params, resume=True, progress=False)
    assert report.n_done == 12 and 0 < report.n_computed < 12
    assert_same_cache(ref, out)


def test_resume_recomputes_failed_videos_even_when_probe_was_off(tiny_dataset, tmp_path):
    """A video marked failed (as `fame-cache verify --fix` does) is recomputed; one whose probed frame count was
    wrong keeps its planned clip count and, here, gets exactly the clips of a clean build."""
    ref, out = str(tmp_path / "ref.zarr"), str(tmp_path / "c.zarr")
    build_cache(str(tiny_dataset), ref, TINY, progress=False)
    build_cache(str(tiny_dataset), out, TINY, progress=False)
    cache = Cache.open(out, mode="r+")
    cache.set_status([1], "failed", "marked by a test")
    n_frames = cache.root["videos/n_frames"]
    col = n_frames[:]
    col[1] = 25  # the header lied: the video really has 40 frames
    n_frames[:] = col
    cache.root["masks"][cache.videos("first_clip")[1]] = 0
    report = build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert report.n_computed == 1 and report.n_done == 6
    assert_same_cache(ref, out)


# CRC32 of the whole `masks` and `plates` arrays of a fixed-seed build: a refactor of the compute path must leave the
# cache's bytes exactly as they were. Recompute (and say why in the commit) only when the output is meant to change.
GOLDEN_CRC = {
    ("motion", (48, 64)): (2625320326, 2448068680),
    ("motion", (104, 136)): (3357119950, 954972748),
    ("fame", (48, 64)): (2981313678, 3976239880),
    ("fame", (104, 136)): (2819549811, 1345705349),
}


@pytest.fixture(scope="module")
def panning_dataset(tmp_path_factory) -> Path:
    """Two short videos with camera pans, large enough for the half-size path of the `motion` method. Lossless, so
    the decoded frames are the rendered ones exactly (x264's lossy bitstream varies from run to run)."""
    root = tmp_path_factory.mktemp("panning_dataset")
    for c, (pan, velocity) in enumerate([((0.0, 1.2), (0.0, 2.5)), ((0.6, -0.9), (2.0, 0.0))]):
        scene = Scene(
            size=(112, 144),
            n_frames=20,
            pan=pan,
            object_velocity=velocity,
            object_radius=(16.0, 12.0),
            shape_change=0.15,
            background_seed=11 + c,
            object_seed=21 + c,
        )
        write_scene(root / f"class_{c}" / "video_0.mp4", scene, lossless=True)
    return root


@pytest.mark.parametrize(("method", "size"), list(GOLDEN_CRC))
def test_build_bytes_are_pinned(panning_dataset, tmp_path, method, size):
    params = BuildParams(size=size, clip_len=6, stride=2, clips_per_video=2, method=method)
    out = str(tmp_path / "c.zarr")
    report = build_cache(str(panning_dataset), out, params, progress=False)
    assert report.n_done == 2 and report.n_clips == 4
    stored = cache_arrays(out)
    crc = tuple(zlib.crc32(np.ascontiguousarray(stored[name]).tobytes()) for name in ("masks", "plates"))
    assert crc == GOLDEN_CRC[method, size], f"masks, plates CRC32 {crc}"

"""Test data shared by several test files: tiny caches with exactly known masks; a build killed at a chosen write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from pipeline.cache import DONE, FAILED, Cache
from pipeline.params import BuildParams
from pipeline.plan import clip_frames
from pipeline.video import write_video
from synthetic import Scene, render

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


def textured_video(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured object over a textured background, both unique to the seed: easy to tell videos apart."""
    scene = Scene(
        size=SIZE,
        n_frames=N_FRAMES,
        object_radius=(8.0, 7.0),
        object_velocity=(0.0, 1.5),
        background_seed=100 + seed,
        object_seed=200 + seed,
        background_hue=(seed * 47) % 180,
        object_hue=(seed * 47 + 90) % 180,
    )
    return render(scene)


def make_cache(
    root, n_videos: int = 6, fail: tuple[int, ...] = (), textured: bool = False, lossless: bool = True
) -> str:
    """A cache whose masks are the truth and whose plates are each video's first frame with the square removed.

    lossless=False writes yuv420p H.264, which NVDEC can decode (it cannot decode lossless RGB H.264)."""
    videos = []
    for v in range(n_videos):
        frames, truth = textured_video(v) if textured else square_video(v)
        videos.append((f"class_{v % 3}/video {v}.mp4", f"class_{v % 3}", frames, truth))
    return cache_of(root, videos, fail=fail, lossless=lossless)


def cache_of(
    root, videos: list[tuple[str, str, np.ndarray, np.ndarray]], fail: tuple[int, ...] = (), lossless: bool = True
) -> str:
    """A cache of the given videos, (path, label, frames (N_FRAMES, *SIZE, 3), truth (N_FRAMES, *SIZE)) each, written
    under `root`: masks are the truth x 255, plates each video's first frame with its foreground filled by one
    background pixel; videos in `fail` are marked failed."""
    params = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2)
    cf = clip_frames(N_FRAMES, params)
    for rel, _, frames, _ in videos:
        write_video(os.path.join(root, rel), frames, lossless=lossless)
    paths = [rel for rel, *_ in videos]
    stats = [os.stat(os.path.join(root, p)) for p in paths]
    table = {
        "path": np.array(paths, dtype=object),
        "label": np.array([label for _, label, *_ in videos], dtype=object),
        "bytes": np.array([s.st_size for s in stats], np.int64),
        "mtime": np.array([s.st_mtime for s in stats]),
        "n_frames": np.full(len(paths), N_FRAMES, np.int32),
    }
    url = os.path.join(root, "cache.zarr")
    n = len(videos)
    cache = Cache.create(url, params, str(root), table, [len(cf)] * n, [cf] * n, videos_per_group=2, clips_per_shard=4)
    clip_video, clip_table = cache.clip_table()
    for group in cache.groups():
        n = len(group.clips)
        masks = np.zeros((n, T, *SIZE), np.uint8)
        plates = np.zeros((n, *SIZE, 3), np.uint8)
        for k, clip in enumerate(group.clips):
            v = clip_video[clip]
            if v < 0:
                continue
            _, _, frames, truth = videos[v]
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


def cache_arrays(url: str) -> dict[str, np.ndarray]:
    """Every array of a cache, by path."""
    group = zarr.open_group(url, mode="r")
    return {name: node[...] for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def assert_same_cache(a: str, b: str) -> None:
    """Two caches hold the same arrays, byte for byte."""
    left, right = cache_arrays(a), cache_arrays(b)
    assert sorted(left) == sorted(right)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


# A `fame-pipeline` run that kills itself (SIGKILL, as `kill -9` would) as it is about to write a key of the cache at
# argv[1] that matches the regular expression argv[2] from its start: the first argv[3] such writes are made, and the
# next one kills the process once they have completed. The cache is left as a kill at that moment leaves it, writer
# lock and all.
_KILLED_AT = """
import asyncio, os, re, signal, sys
from pathlib import Path
from zarr.storage import LocalStore
from pipeline.cli import main

cache, key, after, write = Path(sys.argv[1]).resolve(), re.compile(sys.argv[2]), int(sys.argv[3]), LocalStore.set
started = completed = 0

async def set_or_die(self, name, value, *args, **kwargs):
    global started, completed
    if not (key.match(name) and Path(self.root).resolve() == cache):
        return await write(self, name, value, *args, **kwargs)
    started += 1
    if started > after:
        while completed < after:  # the writes let through land first
            await asyncio.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
    result = await write(self, name, value, *args, **kwargs)
    completed += 1
    return result

LocalStore.set = set_or_die
sys.exit(main(sys.argv[4:]))
"""


def pipeline_killed_at(cache: str, key: str, argv: list[str], after: int = 0) -> None:
    """Run `fame-pipeline ARGV` in a child process killed as it is about to write a key of `cache` (a local path)
    that `key`, a regular expression, matches from its start (e.g. `videos/path/c/`): the first `after` such writes
    are made, and the next one kills it once they have landed (0: it dies at the first). Fails if it ended any other
    way. Zarr makes writes side by side (asyncio), so `after` is how a test makes sure that exactly some of them
    landed: killed at the first matching write, none may have."""
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_AT, cache, key, str(after), *argv],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, f"not killed at {key!r} (exit {child.returncode}): {child.stderr}"

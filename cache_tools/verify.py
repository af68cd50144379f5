"""`fame-cache verify`: re-check every committed clip and the source files; `--fix` marks bad videos `pending`.

A deleted shard reads back as zeros and flipped bytes either fail to decompress or change the data, so the stored
CRC32 (mask bytes then plate bytes) catches both. Sources are compared by size and modification time with the
values recorded at build time. Fixing only rewrites the status/error columns (in one go), so a later
`fame-pipeline build SRC --out CACHE --resume` recomputes exactly the marked videos' groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import numpy as np
from tqdm import tqdm

from pipeline.sources import is_url, join, stat_source
from pipeline.store import DONE, PENDING, Cache, clip_checksum

REQUIRED = (
    "videos/path",
    "videos/status",
    "videos/error",
    "videos/first_clip",
    "videos/n_clips",
    "videos/n_frames",
    "videos/bytes",
    "videos/mtime",
    "clips/video",
    "clips/frames",
    "clips/checksum",
    "masks",
    "plates",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong. kind: structure, layout, unreadable, checksum, frames, source-missing, source-changed."""

    kind: str
    detail: str
    video: int | None = None
    path: str | None = None
    clip: int | None = None

    def __str__(self) -> str:
        where = self.path or ("cache" if self.video is None else f"video {self.video}")
        clip = f" clip {self.clip}" if self.clip is not None else ""
        return f"{where}{clip}: {self.kind}: {self.detail}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _structure(cache: Cache) -> list[Problem]:
    problems = [Problem("structure", f"missing array {name}") for name in REQUIRED if name not in cache.root]
    if problems:
        return problems
    n, t, (h, w) = cache.n_slots, cache.clip_len, cache.size
    expect = {"masks": (n, t, h, w), "plates": (n, h, w, 3), "clips/frames": (n, t), "clips/checksum": (n,)}
    for name, shape in expect.items():
        arr = cache.root[name]
        if tuple(arr.shape) != shape:
            problems.append(Problem("structure", f"{name} has shape {tuple(arr.shape)}, expected {shape}"))
    for name in ("masks", "plates"):
        if cache.root[name].dtype != np.uint8:
            problems.append(Problem("structure", f"{name} has dtype {cache.root[name].dtype}, expected uint8"))
    nv = cache.n_videos
    for name in ("status", "error", "first_clip", "n_clips", "n_frames", "bytes", "mtime"):
        if cache.root[f"videos/{name}"].shape != (nv,):
            problems.append(
                Problem(
                    "structure", f"videos/{name} has {cache.root[f'videos/{name}'].shape[0]} rows, videos/path {nv}"
                )
            )
    return problems


def _layout(cache: Cache, clip_video: np.ndarray, frames: np.ndarray) -> list[Problem]:
    """Each done video's clip slots point back to it and its frame numbers lie inside the video, increasing."""
    problems = []
    status, paths = cache.videos("status"), cache.videos("path")
    first, count, n_frames = cache.videos("first_clip"), cache.videos("n_clips"), cache.videos("n_frames")
    for v in np.flatnonzero(status == DONE):
        lo, hi = int(first[v]), int(first[v]) + int(count[v])
        path = str(paths[v])
        if lo < 0 or hi > len(clip_video):
            problems.append(Problem("layout", f"clips {lo}..{hi} outside the {len(clip_video)} slots", v, path))
            continue
        if (clip_video[lo:hi] != v).any():
            problems.append(Problem("layout", f"clip slots {lo}..{hi} do not all belong to this video", v, path))
        f = frames[lo:hi]
        limit = int(n_frames[v]) if int(n_frames[v]) > 0 else np.iinfo(np.int32).max  # 0: length not recorded
        bad = (f < 0).any(axis=1) | (f >= limit).any(axis=1) | (np.diff(f, axis=1) < 0).any(axis=1)
        for k in np.flatnonzero(bad):
            detail = f"frame numbers {f[k].tolist()} are not increasing within 0..{int(n_frames[v]) - 1}"
            problems.append(Problem("frames", detail, int(v), path, lo + int(k)))
    return problems


def _read(cache: Cache, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    return cache.root["masks"][lo:hi], cache.root["plates"][lo:hi]


def _clips(
    cache: Cache, clips: np.ndarray, stored: np.ndarray, clip_video: np.ndarray, progress: bool
) -> list[Problem]:
    """Read the readable clips shard by shard (one request per shard); a shard that fails is re-read clip by clip."""
    problems = []
    paths = cache.videos("path")
    per_shard = int(cache.root["masks"].shards[0]) if cache.root["masks"].shards else 1
    shards = np.unique(clips // per_shard)
    wanted = set(clips.tolist())
    for shard in tqdm(shards, desc="verify", unit="shard", disable=not progress, leave=False):
        lo, hi = int(shard) * per_shard, min(int(shard + 1) * per_shard, cache.n_slots)
        try:
            masks, plates = _read(cache, lo, hi)
            data: list[tuple[int, np.ndarray, np.ndarray] | tuple[int, Exception]] = [
                (c, masks[c - lo], plates[c - lo]) for c in range(lo, hi) if c in wanted
            ]
        except Exception:
            data = []
            for c in range(lo, hi):
                if c not in wanted:
                    continue
                try:
                    m, p = _read(cache, c, c + 1)
                    data.append((c, m[0], p[0]))
                except Exception as exc:
                    data.append((c, exc))
        for item in data:
            c = item[0]
            v = int(clip_video[c])
            if len(item) == 2:
                exc = item[1]
                problems.append(Problem("unreadable", f"{type(exc).__name__}: {exc}"[:200], v, str(paths[v]), c))
                continue
            got = clip_checksum(item[1], item[2])
            if got != int(stored[c]):
                problems.append(
                    Problem("checksum", f"stored {int(stored[c]):08x}, bytes give {got:08x}", v, str(paths[v]), c)
                )
    return problems


def _sources(cache: Cache, progress: bool) -> list[Problem]:
    """Done videos whose source file vanished or is no longer the file the cache was built from."""
    problems = []
    status, paths = cache.videos("status"), cache.videos("path")
    sizes, mtimes = cache.videos("bytes"), cache.videos("mtime")
    root = cache.source_root
    if is_url(root):  # listings cached by this process may predate the check: ask the store again
        fsspec.core.url_to_fs(root)[0].invalidate_cache()
    for v in tqdm(np.flatnonzero(status == DONE), desc="sources", unit="video", disable=not progress, leave=False):
        path = str(paths[v])
        try:
            size, mtime = stat_source(join(root, path))
        except FileNotFoundError:
            problems.append(Problem("source-missing", f"not found under {root}", int(v), path))
            continue
        if size != int(sizes[v]):
            problems.append(Problem("source-changed", f"size {size} bytes, built from {int(sizes[v])}", int(v), path))
        elif mtimes[v] and mtime and abs(mtime - float(mtimes[v])) > 1e-3:
            problems.append(
                Problem("source-changed", f"modified at {mtime:.3f}, built from {float(mtimes[v]):.3f}", int(v), path)
            )
    return problems


def verify_cache(cache: Cache, sources: bool = True, progress: bool = False) -> list[Problem]:
    """Every problem found, in the order structure, layout, clip data, sources. [] means the cache is sound."""
    problems = _structure(cache)
    if problems:
        return problems
    clip_video, frames = cache.clip_table()
    stored = cache.root["clips/checksum"][:]
    problems += _layout(cache, clip_video, frames)
    problems += _clips(cache, cache.readable_clips(), stored, clip_video, progress)
    if sources:
        problems += _sources(cache, progress)
    return problems


def fix_cache(url: str, problems: Iterable[Problem]) -> list[int]:
    """Mark the videos behind `problems` pending, with the reason in videos/error; returns the videos marked.

    The whole status and error columns are rewritten in one go (error first, status last), so run it while no build
    writes to the cache. Structural problems cannot be fixed this way: rebuild the cache.
    """
    reasons: dict[int, str] = {}
    for p in problems:
        if p.video is not None and p.video not in reasons:
            clip = f" (clip {p.clip})" if p.clip is not None else ""
            reasons[p.video] = f"verify: {p.kind}{clip}: {p.detail}"
    if not reasons:
        return []
    cache = Cache.open(url, mode="r+")
    status, errors = cache.videos("status"), cache.videos("error")
    for v, reason in reasons.items():
        status[v], errors[v] = PENDING, reason
    cache.root["videos/error"][:] = np.asarray(errors, dtype=object)
    cache.root["videos/status"][:] = np.asarray(status, dtype=object)
    return sorted(reasons)

"""What the loader may read: videos, labels and clips, from a cache (checked) or straight from videos (no cache).

The checks live here so a bad cache is refused before any worker starts: video paths that lead outside the source
root, changed or vanished source videos, a clip length or frame size other than asked, failed videos (skipped with a
warning), nothing left to read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.cache import DONE, Cache
from pipeline.cache.fingerprint import SourceChange, source_changes
from pipeline.cache.layout import metadata_summary
from pipeline.loader.params import LoaderParams
from pipeline.params import BuildParams
from pipeline.plan import clip_frames
from pipeline.sources import SourceError, join, list_source
from pipeline.video import VideoError, probe


class LoaderError(ValueError):
    """A cache or video set the loader cannot use, with what is wrong."""


@dataclass(frozen=True)
class Catalog:
    root: str  # where the videos are
    paths: np.ndarray  # (V,) relative video paths
    labels: np.ndarray  # (V,) int64 class index
    classes: tuple[str, ...]
    clip_video: np.ndarray  # (N,) int32
    clip_frames: np.ndarray  # (N, T) int32
    readable: np.ndarray  # clip indices the loader may use
    size: tuple[int, int]
    clip_len: int
    stride: int  # source frames between a clip's frames
    n_frames: np.ndarray  # (V,) frames a key clip may start in (decoded count when built)
    cache_url: str | None  # None: no cache, masks are computed per sample
    frame_index: np.ndarray | None = None  # (V,) str, each video's stored FrameIndex text; None: no cache has one
    checksums: np.ndarray | None = None  # (N,) uint32 stored clip checksums; None: each read with its clip

    def stored_checksum(self, clip: int) -> int | None:
        """The clip's checksum as the catalog read it, so a sample reads two arrays of the cache (mask and plate),
        not three (on an object store, a third of its requests); None when the catalog has none."""
        return None if self.checksums is None else int(self.checksums[clip])

    @property
    def span(self) -> int:
        """Source frames covered by one clip (as `BuildParams.span`)."""
        return (self.clip_len - 1) * self.stride + 1

    def stored_index(self, video: int) -> str:
        """The video's frame index as the build stored it, so decoding seeks without demuxing the file; '' when the
        cache has none (built before the index, or the video copied without one): the decoder demuxes for it."""
        return "" if self.frame_index is None else str(self.frame_index[video])

    def video_path(self, video: int) -> str:
        """The video's file; refuses a path that leads outside the root (`..`, a link out: see `sources.join`)."""
        try:
            return join(self.root, str(self.paths[video]))
        except SourceError as exc:
            raise LoaderError(f"{self.cache_url or self.root}: video {video}: {exc}") from exc


def _label_index(names: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    classes = tuple(sorted({str(n) for n in names}))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(n)] for n in names], dtype=np.int64), classes


def _check_sources(url: str, root: str, table: dict[str, np.ndarray], done: np.ndarray) -> None:
    """Refuse a cache whose video paths lead outside the source root, or whose source videos vanished or changed
    since the build (not on remote stores: `fame-cache verify` checks those, too slow to stat here per video)."""
    changes = source_changes(root, table, np.flatnonzero(done), stat_remote=False)
    escapes = [str(c) for c in changes if c.kind == "source-escape"]
    if escapes:
        shown = "; ".join(escapes[:3]) + (f"; and {len(escapes) - 3} more" if len(escapes) > 3 else "")
        raise LoaderError(f"{url}: {len(escapes)} video path(s) lead outside the source root, refused: {shown}")
    if changes:
        shown = "; ".join(map(_described, changes[:5], [root] * 5))
        shown += f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
        raise LoaderError(
            f"{url}: {len(changes)} source video(s) under {root} differ from the build: {shown}. "
            "Rebuild with `fame-pipeline build --resume` after `fame-cache verify --fix`, "
            "or point --videos-root at the originals."
        )


def _described(change: SourceChange, root: str) -> str:
    """A change as the error shows it: a missing video with the full path looked for, so a wrong root is seen."""
    if change.kind == "source-missing":
        return f"{change.path}: vanished (not found at {join(root, change.path)})"
    return str(change)


def _key_range(n_frames: np.ndarray, clip_video: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(V,) frames a key clip may use: the decoded count the build recorded, or where a cache has none, up to the
    last frame of the video's cached clips (known to decode)."""
    planned = np.zeros(len(n_frames), np.int64)
    used = clip_video >= 0
    np.maximum.at(planned, clip_video[used], frames[used].max(axis=1).astype(np.int64) + 1)
    return np.where(n_frames > 0, n_frames.astype(np.int64), planned)


def _stored_checksums(cache: Cache, n_slots: int) -> np.ndarray | None:
    """The clips' stored checksums, read once for every worker; None when the column does not read whole (each clip's
    own is then read with it, so a damaged chunk is the damage of its own clips alone)."""
    try:
        checksums = cache.root["clips/checksum"][:n_slots]
    except Exception:  # a codec or a store error: `Cache.read_clip` reports the clips it affects
        return None
    return checksums if len(checksums) == n_slots else None


def _check_metadata(cache: Cache) -> None:
    """Refuse a cache whose metadata was damaged or edited: every read would go through it."""
    problem = metadata_summary(cache.url, cache.attrs)
    if problem:
        raise LoaderError(f"{cache.url}: {problem}; run `fame-cache verify --fix` to rewrite damaged metadata")


def from_cache(url: str, params: LoaderParams, videos_root: str | None = None) -> Catalog:
    cache = Cache.open(url)
    _check_metadata(cache)
    if params.clip_len is not None and params.clip_len != cache.clip_len:
        raise LoaderError(f"{url}: cache clip length is {cache.clip_len}, the loader was asked for {params.clip_len}")
    if params.size is not None and tuple(params.size) != cache.size:
        raise LoaderError(f"{url}: cache frame size is {cache.size}, the loader was asked for {tuple(params.size)}")
    view = cache.committed()  # an append growing the cache meanwhile is not part of it
    table, clip_video, frames = view.table, view.clip_video, view.frames
    status = table["status"]
    skipped = np.flatnonzero(status != DONE)
    if skipped.size:
        names = ", ".join(f"{table['path'][v]} ({status[v]}: {table['error'][v]})" for v in skipped[:5])
        warnings.warn(f"{url}: skipping {skipped.size} video(s) not done: {names}", stacklevel=3)
    root = videos_root or cache.source_root
    _check_sources(url, root, table, status == DONE)
    for slots, why in view.bad_chunks:
        warnings.warn(
            f"{url}: skipping clips {slots.start}..{slots.stop - 1}, their table cannot be read ({why})", stacklevel=3
        )
    readable = view.readable
    if readable.size == 0:
        raise LoaderError(f"{url}: no readable clips (no video is done; is the build finished?)")
    labels, classes = _label_index(table["label"])
    if np.unique(clip_video[readable]).size < 2:
        raise LoaderError(f"{url}: FAME needs clips from at least 2 videos (a partner for every clip)")
    return Catalog(
        root,
        table["path"],
        labels,
        classes,
        clip_video,
        frames,
        readable,
        cache.size,
        cache.clip_len,
        cache.params.stride,
        _key_range(table["n_frames"], clip_video, frames),
        url,
        table.get("frame_index"),
        _stored_checksums(cache, len(clip_video)),
    )


def from_videos(src: str, build: BuildParams) -> Catalog:
    """A catalog planned straight from videos (probe + clip plan), for the no-cache mode."""
    source = list_source(src)
    counts, frames, keep, lengths = [], [], [], []
    for v, entry in enumerate(source.entries):
        try:
            info = probe(source.full_path(entry.path))
        except VideoError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=3)
            continue
        if info.n_frames < 2:
            continue
        f = clip_frames(info.n_frames, build)
        keep.append(v)
        lengths.append(int(f.max()) + 1)  # a probe's frame count is an estimate: the planned clips are known to decode
        counts.append(len(f))
        frames.append(f)
    if len(keep) < 2:
        raise LoaderError(f"{src}: FAME needs at least 2 readable videos, found {len(keep)}")
    paths = np.array([source.entries[v].path for v in keep], dtype=object)
    labels, classes = _label_index(np.array([source.entries[v].label for v in keep], dtype=object))
    clip_video = np.repeat(np.arange(len(keep), dtype=np.int32), counts)
    all_frames = np.concatenate(frames).astype(np.int32)
    return Catalog(
        source.root,
        paths,
        labels,
        classes,
        clip_video,
        all_frames,
        np.arange(len(clip_video)),
        build.size,
        build.clip_len,
        build.stride,
        np.array(lengths, np.int64),
        None,
    )

"""The swapped-background test set, built from any cache: each test clip's foreground over the plate of a clip from
a video of another class. A model that follows the action still names the clip's own class; one that follows the
scene names the class of the video that gave the background. (HAT, Chung, Wu and Russakovsky 2022, builds such
action-swap videos with a segmentation network; here they come from the cache's own masks and plates.)

One set, two users: `fame-train eval --protocol swapped` scores it and `fame-pipeline swap-test` writes it as videos,
so other models can be scored on the same clips. The draw is deterministic for a seed: in video order, each test
video draws one partner video of another class, and its k-th clip goes over the plate of the partner's
(k mod n)-th clip, so every clip of a video shares one background class and a video can be scored as a whole.

The paste binarises the cached soft mask as the loader does by default (`mask >= FOREGROUND_THRESHOLD`). A clip with
no foreground pixel at that threshold would be its partner's plate alone, a clip with no action in it, so it is left
out and counted; so is a clip that fails its checksum. Everything is read through `pipeline.cache.Cache`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from pipeline.cache import DONE, Cache, CacheError, ClipDamaged
from pipeline.cache.fingerprint import source_changes
from pipeline.cache.layout import metadata_summary
from pipeline.params import FOREGROUND_THRESHOLD
from pipeline.sources import Source, SourceError, VideoEntry, join
from pipeline.video import VideoError, decode_clips


class SwapError(ValueError):
    """A cache the swapped set cannot be built from, naming the cache and what is wrong."""


@dataclass(frozen=True)
class SwapPair:
    """One swapped clip: the test clip that gives the foreground and the partner clip that gives the plate."""

    clip: int
    video: int
    label: str  # the test video's class: the answer of a model that follows the action
    frames: tuple[int, ...]  # the clip's source frame numbers
    partner_clip: int
    partner_video: int
    background_label: str  # the partner video's class: the answer of a model that follows the scene


@dataclass(frozen=True)
class SwapSet:
    """The drawn set: which clips are pasted over which plates, and what was left out. Arrays come later."""

    url: str
    root: str  # where the source videos are
    seed: int
    size: tuple[int, int]
    clip_len: int
    stride: int
    clips_per_video: int | None
    paths: tuple[str, ...]  # every video of the cache, by index, relative to `root`
    labels: tuple[str, ...]
    done: tuple[int, ...]  # videos whose clips are readable: the unmodified test set
    pairs: tuple[SwapPair, ...]  # grouped by test video, in video order
    empty_masks: int  # clips left out: no foreground pixel at the threshold
    damaged: int  # clips left out: they fail their checksum or cannot be read
    # Each video's keyframe index as the cache stores it (`videos/frame_index`; '' where it has none), so decoding
    # seeks to the clips without demuxing the file to find them.
    frame_index: tuple[str, ...] = ()

    @property
    def n_videos(self) -> int:
        """Test videos with at least one swapped clip."""
        return len({p.video for p in self.pairs})

    def source(self) -> Source:
        """The cache's done videos, unmodified, as a labelled source (what `linear_top1` is scored on)."""
        return Source(self.root, tuple(VideoEntry(self.paths[v], self.labels[v]) for v in self.done))


@dataclass(frozen=True)
class SwappedClip:
    pair: SwapPair
    original: np.ndarray  # (T, h, w, 3) uint8: the test clip as decoded
    swapped: np.ndarray  # (T, h, w, 3): its foreground over the partner's plate
    background: np.ndarray  # (T, h, w, 3): its own plate alone, every frame


def foreground(mask: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> np.ndarray:
    """The cached soft mask binarised as the loader binarises it by default (`mask_mode="threshold"`)."""
    return mask >= threshold


def paste(frames: np.ndarray, mask: np.ndarray, plate: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> np.ndarray:
    """(T, h, w, 3) frames, (T, h, w) soft mask, (h, w, 3) plate -> the frames' foreground over the plate."""
    return np.where(foreground(mask, threshold)[..., None], frames, plate[None])


def pick_partners(labels: Sequence[str], tests: Sequence[int], candidates: Sequence[int], seed: int) -> dict[int, int]:
    """{test video: partner video}: for each test video in order, one candidate of another class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    partners = {}
    for v in tests:
        others = [u for u in candidates if labels[u] != labels[v]]
        partners[v] = others[int(rng.integers(len(others)))]
    return partners


def _open(url: str) -> Cache:
    try:
        cache = Cache.open(url)
    except CacheError as exc:
        raise SwapError(str(exc)) from exc
    problem = metadata_summary(cache.url, cache.attrs)
    if problem:
        raise SwapError(f"{url}: {problem}; run `fame-cache verify --fix` to rewrite damaged metadata")
    return cache


def _check_labels(url: str, labels: np.ndarray, videos: np.ndarray, paths: np.ndarray) -> None:
    unlabelled = [str(paths[v]) for v in videos if not str(labels[v]).strip()]
    if unlabelled:
        raise SwapError(
            f"{url}: {len(unlabelled)} video(s) have no class label (videos/label is empty), e.g. {unlabelled[:3]}; "
            "build the test cache from a folder per class or a labelled list (path,label)"
        )


def _check_sources(url: str, root: str, table: dict[str, np.ndarray], videos: Sequence[int]) -> None:
    """The foregrounds are decoded from the sources: refuse any that changed since the masks were computed."""
    changes = source_changes(root, table, videos, stat_remote=False)
    if changes:
        shown = "; ".join(map(str, changes[:3])) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise SwapError(f"{url}: {len(changes)} source video(s) under {root} differ from the build: {shown}")


def draw_swaps(url: str, seed: int = 0, videos_root: str | None = None) -> SwapSet:
    """Plan the swapped set of a cache: read every readable clip's mask once (checked), leave out empty and damaged
    clips, and give each remaining test video a partner video of another class. Only the committed cache counts
    (`Cache.committed`: an append growing it, or stopped before its status, is not part of it). Raises SwapError
    naming the cache when it cannot serve: no readable clip, videos without labels, one class only, changed
    sources."""
    cache = _open(url)
    view = cache.committed()  # an unreadable chunk of the clip table: its slots hold no clip
    table, clip_video, clip_frames, readable = view.table, view.clip_video, view.frames, view.readable
    if readable.size == 0:
        raise SwapError(f"{url}: no readable clips (no video is done; is the build finished?)")
    labels = table["label"]
    _check_labels(url, labels, np.unique(clip_video[readable]), table["path"])
    kept: dict[int, list[int]] = {}  # test video -> its clips with a foreground
    usable: set[int] = set()  # videos with a readable plate: possible partners
    plates: dict[int, list[int]] = {}
    empty = damaged = 0
    for clip in readable.tolist():
        video = int(clip_video[clip])
        try:
            mask, _ = cache.read_clip(clip, clip_frames[clip])
        except ClipDamaged:
            damaged += 1
            continue
        usable.add(video)
        plates.setdefault(video, []).append(clip)
        if foreground(mask).any():
            kept.setdefault(video, []).append(clip)
        else:
            empty += 1
    classes = sorted({str(labels[v]) for v in usable})
    if len(classes) < 2:
        raise SwapError(
            f"{url}: one class only ({classes[0] if classes else 'none'}); a swapped test takes each clip's "
            "background from a video of another class: build the test cache from at least 2 classes"
        )
    if not kept:
        raise SwapError(f"{url}: no clip has a foreground at the mask threshold {FOREGROUND_THRESHOLD} ({empty} empty)")
    root = videos_root or cache.source_root
    tests = sorted(kept)
    _check_sources(url, root, table, tests)
    partners = pick_partners([str(x) for x in labels], tests, sorted(usable), seed)
    pairs = []
    for video in tests:
        partner = partners[video]
        backgrounds = plates[partner]
        for k, clip in enumerate(kept[video]):
            pairs.append(
                SwapPair(
                    clip=clip,
                    video=video,
                    label=str(labels[video]),
                    frames=tuple(int(f) for f in clip_frames[clip]),
                    partner_clip=backgrounds[k % len(backgrounds)],
                    partner_video=partner,
                    background_label=str(labels[partner]),
                )
            )
    params = cache.params
    done = np.flatnonzero(table["status"] == DONE)
    return SwapSet(
        url=url,
        root=root,
        seed=seed,
        size=cache.size,
        clip_len=cache.clip_len,
        stride=params.stride,
        clips_per_video=params.clips_per_video,
        paths=tuple(str(p) for p in table["path"]),
        labels=tuple(str(x) for x in labels),
        done=tuple(int(v) for v in done),
        pairs=tuple(pairs),
        empty_masks=empty,
        damaged=damaged,
        frame_index=tuple(str(x) for x in table.get("frame_index", ())),
    )


def read_swapped(swap_set: SwapSet, pairs: Sequence[SwapPair] | None = None) -> Iterator[list[SwappedClip]]:
    """The swapped clips of each test video (all of `swap_set.pairs`, or the given ones), one list per video: its
    clips decoded in one pass, each pasted over its partner's plate, with its own plate alone beside it."""
    cache = _open(swap_set.url)
    for video, group in groupby(swap_set.pairs if pairs is None else pairs, key=lambda p: p.video):
        members = list(group)
        try:
            path = join(swap_set.root, swap_set.paths[video])
            stored = swap_set.frame_index[video] if swap_set.frame_index else ""
            decoded = decode_clips(path, [p.frames for p in members], size=swap_set.size, stored_index=stored)
        except (SourceError, VideoError) as exc:
            raise SwapError(f"{swap_set.url}: video {swap_set.paths[video]}: {exc}") from exc
        out = []
        for pair, frames in zip(members, decoded, strict=True):
            try:
                mask, own_plate = cache.read_clip(pair.clip, np.asarray(pair.frames, np.int32))
                _, partner_plate = cache.read_clip(pair.partner_clip)
            except ClipDamaged as exc:
                raise SwapError(f"{exc} (damaged since the swapped set was drawn)") from exc
            background = np.broadcast_to(own_plate, frames.shape)
            out.append(SwappedClip(pair, frames, paste(frames, mask, partner_plate), background))
        yield out

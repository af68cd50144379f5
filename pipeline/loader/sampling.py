"""Every random choice of the loader, drawn in one place from (seed, epoch, index).

Drawing crops, flips and colour parameters here, rather than inside DALI's random operators, is what makes the
loader deterministic, resumable mid-epoch, and identical on the CPU and GPU paths: both receive the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.loader.params import BLUR_REFERENCE_CROP, LoaderParams

NO_BLUR = 0.01


@dataclass(frozen=True)
class ClipIndex:
    """The readable clips of a cache, grouped by video."""

    videos: np.ndarray  # (V,) cache video index of each eligible video
    labels: np.ndarray  # (V,) int64 class index
    clip_start: np.ndarray  # (V + 1,) offsets into `clips`
    clips: np.ndarray  # cache clip indices, grouped by video
    n_frames: np.ndarray  # (V,) frames a key clip may be drawn from

    @classmethod
    def from_table(
        cls, clip_video: np.ndarray, readable: np.ndarray, labels: np.ndarray, n_frames: np.ndarray
    ) -> ClipIndex:
        """Group the readable clip indices by their video; `labels` and `n_frames` are per cache video."""
        readable = np.sort(readable)
        owners = clip_video[readable]
        order = np.argsort(owners, kind="stable")
        readable, owners = readable[order], owners[order]
        videos, first = np.unique(owners, return_index=True)
        starts = np.append(first, len(readable)).astype(np.int64)
        return cls(
            videos=videos.astype(np.int64),
            labels=labels[videos].astype(np.int64),
            clip_start=starts,
            clips=readable.astype(np.int64),
            n_frames=n_frames[videos].astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.videos)

    def clips_of(self, i: int) -> np.ndarray:
        return self.clips[self.clip_start[i] : self.clip_start[i + 1]]


def shard_order(n_videos: int, seed: int, epoch: int, shard_id: int, num_shards: int) -> np.ndarray:
    """This shard's eligible-video positions for an epoch: one shuffle shared by all ranks, dealt round-robin."""
    perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_videos)
    return perm[shard_id::num_shards]


def batches_per_epoch(n_videos: int, batch_size: int, num_shards: int) -> int:
    """Full batches per rank; every rank runs the same count (DDP needs it), the remainder is dropped."""
    return (n_videos // num_shards) // batch_size


def _crop_window(
    rng: np.random.Generator, params: LoaderParams, h: int, w: int, scale: tuple[float, float] | None = None
) -> np.ndarray:
    """A random resized crop (torchvision's rule), as relative [y0, x0, y1, x1]."""
    area = h * w
    log_ratio = (math.log(params.crop_ratio[0]), math.log(params.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*(scale or params.crop_scale))
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            return np.array([y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w], np.float32)
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.array([y0 / h, x0 / w, (y0 + side) / h, (x0 + side) / w], np.float32)


def _colour(rng: np.random.Generator, params: LoaderParams) -> np.ndarray:
    """[brightness, contrast, saturation, hue_degrees, blur_sigma] for one view; identity when not augmenting.
    The blur's sigma is in px of this crop: `blur_sigma` scaled from its reference crop, as the blur of a 224-px
    MoCo v2 crop is to the whole crop.
    A sigma of NO_BLUR means no blur was drawn: the graph skips the operator."""
    out = np.array([1.0, 1.0, 1.0, 0.0, NO_BLUR], np.float32)
    if not params.augment:
        return out
    b, c, s, hue = params.jitter
    if rng.random() < params.jitter_p:
        out[0] = rng.uniform(1 - b, 1 + b)
        out[1] = rng.uniform(1 - c, 1 + c)
        out[2] = rng.uniform(1 - s, 1 + s)
        out[3] = rng.uniform(-hue, hue) * 360.0
    if rng.random() < params.grayscale_p:
        out[2] = 0.0
    if rng.random() < params.blur_p:
        out[4] = rng.uniform(*params.blur_sigma) * params.crop / BLUR_REFERENCE_CROP
    return out


@dataclass(frozen=True)
class SampleDraw:
    """One training sample's random draws (clips, crops, flips, colours, FAME or not), made by `draw_sample` from
    (seed, epoch, video) alone, so every worker and both decode paths make the same sample."""

    video: int  # cache video index
    label: int
    clip_a: int  # cache clip index of the query
    clip_b: int  # cache clip index of the key, -1 when the key starts anywhere (key_start="any")
    key_start: int  # first source frame of the key clip (key_start="any"; -1 otherwise)
    fame: bool
    crop_a: np.ndarray  # relative [y0, x0, y1, x1]
    crop_b: np.ndarray
    flip: np.ndarray  # (2,) int32: query, key
    colour: np.ndarray  # (3, 5) float32: query, key, partner


def key_clip_frames(start: int, n_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """(clip_len,) int32 source frames of a clip starting at `start`, looped over a video shorter than the clip
    (as the build loops it)."""
    return ((start + np.arange(clip_len, dtype=np.int64) * stride) % max(1, n_frames)).astype(np.int32)


def draw_sample(
    index: ClipIndex,
    params: LoaderParams,
    size: tuple[int, int],
    seed: int,
    epoch: int,
    video_pos: int,
    key_span: int = 1,
) -> SampleDraw:
    """The sample of eligible video `video_pos` in `epoch`: each video is drawn once per epoch, so
    (seed, epoch, video) names the sample whichever rank or worker makes it. `key_span` is the source frames a
    clip covers; with key_start="any" the key clip starts anywhere it fits."""
    rng = np.random.default_rng([seed, epoch, video_pos, 0xFA3E])
    clips = index.clips_of(int(video_pos))
    if len(clips) > 1:
        a, b = rng.choice(len(clips), size=2, replace=False)
    else:
        a = b = 0
    key_start = params.resolved_key_start
    if key_start == "same":
        b = a
    h, w = size
    fame = bool(rng.random() < params.fame_p)
    crop_a, crop_b = _crop_window(rng, params, h, w, params.query_crop_scale), _crop_window(rng, params, h, w)
    flip = (rng.random(2) < 0.5).astype(np.int32)
    colour = np.stack([_colour(rng, params) for _ in range(3)])
    anywhere = key_start == "any"
    start = -1
    if anywhere:  # a stream of its own: the other draws (some conditional on options) do not move it
        key_rng = np.random.default_rng([seed, epoch, video_pos, 0x4E7])
        start = int(key_rng.integers(0, max(0, int(index.n_frames[video_pos]) - key_span) + 1))
    return SampleDraw(
        video=int(index.videos[video_pos]),
        label=int(index.labels[video_pos]),
        clip_a=int(clips[a]),
        clip_b=-1 if anywhere else int(clips[b]),
        key_start=start,
        fame=fame,
        crop_a=crop_a,
        crop_b=crop_b,
        flip=flip,
        colour=colour,
    )


def batch_partners(batch_size: int, seed: int, epoch: int, shard_id: int, batch: int) -> np.ndarray:
    """(batch_size,) slot of each sample's partner in its batch, as the original code pairs clips (a shuffle of the
    batch) but never a sample with itself: the batch in a random cycle, each slot paired with the next.

    A batch holds distinct videos (each video is drawn once per epoch), so every partner is another video, and its
    clip a is already decoded and cropped: the partner's frames cost nothing more to read."""
    if batch_size < 2:
        raise ValueError("a partner from the batch needs batch_size >= 2")
    cycle = np.random.default_rng([seed, epoch, shard_id, batch, 0xBA7C]).permutation(batch_size)
    partners = np.empty(batch_size, np.int64)
    partners[cycle] = np.roll(cycle, -1)
    return partners

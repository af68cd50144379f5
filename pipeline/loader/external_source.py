"""The per-sample callable behind DALI's parallel external source.

It runs in DALI's worker processes, so it is picklable and opens the cache lazily in each worker. On the CPU path it
decodes clips with PyAV (DALI's CPU decoder cannot read H.264); on the GPU path it hands over the encoded file and
the frame numbers, and DALI's NVDEC decoder does the rest. A sample's partner is another sample of its batch
(`batch_partners`): its plate and its frames are taken from the batch by the graph, so no sample decodes more than
its own two clips or reads more than its own clip of the cache.

Nothing is read unchecked: every mask and plate is checked against its clip's checksum, and a clip that fails (or a
video that no longer decodes) is either left out, the sample taken from the next video of the epoch's order, and
reported in the sample's `skipped_video`/`skipped_clip`, or it stops the loader
(`on_damage`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

import cv2
import fsspec
import numpy as np

from pipeline.cache import Cache, ClipDamaged
from pipeline.loader.catalog import Catalog, LoaderError
from pipeline.loader.params import LoaderParams
from pipeline.loader.query_mask import centre_on_mask, query_alpha
from pipeline.loader.sampling import (
    ClipIndex,
    SampleDraw,
    batch_partners,
    batches_per_epoch,
    draw_sample,
    key_clip_frames,
    shard_order,
)
from pipeline.signals import exit_with_parent
from pipeline.video import VideoError, decode_clips

# Output order of the callable; the pipeline definition reads the same list.
CPU_OUTPUTS = ("clip_a", "alpha", "plate", "clip_b", "alpha_b")
GPU_OUTPUTS = ("enc_a", "frames_a", "alpha", "plate", "enc_b", "frames_b", "alpha_b")
PARAM_OUTPUTS = ("rois", "flips", "colour", "fame", "partner_slot", "meta")
PLACEHOLDER_PLATE = np.zeros((1, 1, 3), np.uint8)  # shapes the plate output of samples that merge no plate
PLACEHOLDER_ALPHA = np.zeros((1, 1, 1, 1), np.uint8)  # the key's alpha output when keys are not merged
MAX_SUBSTITUTES = 8  # unusable samples in a row before the loader gives up on the cache


def stand_ins(position: int, batch_size: int, n: int) -> Iterator[int]:
    """Positions in an epoch's order of `n` samples that may take the place of the one at `position`, in turn: itself,
    then the same slot of the following batches (wrapping), then any other position outside its batch, and only when
    the epoch has no other batch, the others of its own. A stand-in from another batch brings a video that none of
    this batch's samples has, so no sample is merged over a plate of its own video (any of the batch may be its
    partner, or take it as theirs)."""
    yield position % n
    first = position - position % batch_size
    seen = {(first + slot) % n for slot in range(batch_size)}  # this batch's positions
    if len(seen) == n:  # the epoch is this one batch
        yield from ((position + k) % n for k in range(1, n))
        return
    same_slot = ((position + k * batch_size) % n for k in range(1, n))
    anywhere = ((position + k) % n for k in range(1, n))
    for candidate in chain(same_slot, anywhere):  # drawn lazily: a damaged sample needs only the first few
        if candidate not in seen:
            seen.add(candidate)
            yield candidate


class UnusableClip(LoaderError):
    """A sample's clip that cannot be used: damaged in the cache (clip >= 0) or its video does not decode (-1)."""

    def __init__(self, video: int, clip: int, reason: str) -> None:
        super().__init__(reason)
        self.video, self.clip = video, clip


@dataclass
class SampleSource:
    catalog: Catalog
    params: LoaderParams
    batch_size: int
    seed: int
    shard_id: int
    num_shards: int
    first_epoch: int
    skip_samples: int  # samples of the first epoch already consumed (resume)
    gpu: bool = False
    decode_only: bool = False  # the decoding floor (benchmarks): each sample's two clips decoded, nothing else
    _cache: Any = field(default=None, repr=False)
    _index: ClipIndex | None = field(default=None, repr=False)
    _orders: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _in_worker: bool = field(default=False, repr=False)

    @property
    def index(self) -> ClipIndex:
        if self._index is None:
            catalog = self.catalog
            self._index = ClipIndex.from_table(catalog.clip_video, catalog.readable, catalog.labels, catalog.n_frames)
        return self._index

    @property
    def samples_per_epoch(self) -> int:
        return batches_per_epoch(len(self.index), self.batch_size, self.num_shards) * self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: shard_order(len(self.index), self.seed, epoch, self.shard_id, self.num_shards)}
        return self._orders[epoch]

    def _store(self) -> Cache:
        """The cache, opened once per worker (not once per sample)."""
        if self._cache is None:
            self._cache = Cache.open(self.catalog.cache_url)
        return self._cache

    def _read_clip(self, draw: SampleDraw) -> tuple[np.ndarray, np.ndarray]:
        """(mask, plate) of the draw's clip a, checked against its checksum and the frame numbers the loader uses."""
        try:
            catalog = self.catalog
            frames, stored = catalog.clip_frames[draw.clip_a], catalog.stored_checksum(draw.clip_a)
            return self._store().read_clip(draw.clip_a, frames, stored)
        except ClipDamaged as exc:
            raise UnusableClip(draw.video, draw.clip_a, str(exc)) from exc

    def _clip_frames(self, draw: SampleDraw) -> list[np.ndarray]:
        """Source frame numbers of the query's clip a and of the key clip."""
        catalog = self.catalog
        if draw.key_start >= 0:
            key = key_clip_frames(draw.key_start, int(catalog.n_frames[draw.video]), catalog.clip_len, catalog.stride)
        else:
            key = catalog.clip_frames[draw.clip_b]
        return [catalog.clip_frames[draw.clip_a].astype(np.int32), key.astype(np.int32)]

    def _decode(self, draw: SampleDraw) -> list[np.ndarray]:
        """Clips a and b of a sample's video, from one decoding pass."""
        threads = 1 if self.params.num_workers > 0 else 0  # parallel workers: one decoding thread each
        path = self.catalog.video_path(draw.video)
        stored = self.catalog.stored_index(draw.video)
        try:
            return decode_clips(path, self._clip_frames(draw), self.catalog.size, threads=threads, stored_index=stored)
        except VideoError as exc:
            raise UnusableClip(draw.video, -1, str(exc)) from exc

    def _encoded(self, draw: SampleDraw) -> tuple[np.ndarray, list[np.ndarray]]:
        """The encoded file of the sample's video (read once for clips a and b) and each clip's frame numbers."""
        path = self.catalog.video_path(draw.video)
        try:
            with fsspec.open(path, "rb") as handle:
                data = np.frombuffer(handle.read(), dtype=np.uint8)
        except OSError as exc:
            raise UnusableClip(draw.video, -1, f"{path}: {exc}") from exc
        return data, self._clip_frames(draw)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        """One sample; raises StopIteration at the end of this shard's epoch (DALI's end-of-epoch signal)."""
        if self.params.num_workers > 0 and not self._in_worker:  # a worker process of its own: one OpenCV thread
            cv2.setNumThreads(1)  # (as its decoder and BLAS have), not a pool per worker fighting for the cores
            exit_with_parent()  # deaf to SIGTERM: it ends with the process it decodes for, however that ends
            self._in_worker = True
        epoch = self.first_epoch + info.epoch_idx
        position = info.idx_in_epoch + (self.skip_samples if info.epoch_idx == 0 else 0)
        if position >= self.samples_per_epoch:
            raise StopIteration
        order = self._order(epoch)
        batch, slot = divmod(position, self.batch_size)
        # A batch of one merges nothing (FameLoader refuses it with FAME): the sample stands in as its own partner.
        single = self.batch_size == 1
        partners = [0] if single else batch_partners(self.batch_size, self.seed, epoch, self.shard_id, batch)
        skipped = None
        for own in islice(stand_ins(position, self.batch_size, len(order)), MAX_SUBSTITUTES + 1):
            draw = self._draw(epoch, int(order[own]))
            try:
                if self.decode_only:
                    return tuple(self._decode(draw))
                data = self._gpu_outputs(draw) if self.gpu else self._cpu_outputs(draw)
                break
            except UnusableClip as exc:
                if self.params.on_damage == "stop":
                    raise UnusableClip(exc.video, exc.clip, f"{exc} (on_damage='stop')") from exc
                skipped = skipped or exc  # the next of `stand_ins` stands in
        else:
            raise UnusableClip(
                skipped.video,
                skipped.clip,
                f"{MAX_SUBSTITUTES + 1} unusable samples in a row at position {position} of epoch {epoch}, first: "
                f"{skipped}; run `fame-cache verify --fix` on {self.catalog.cache_url}",
            )
        lost = (skipped.video, skipped.clip) if skipped else (-1, -1)
        # partner_video and partner_clip: the graph fills them from the partner's own sample (`graph.partner_meta`).
        meta = np.array(
            [draw.video, draw.label, draw.clip_a, draw.clip_b, -1, -1, draw.key_start, *lost],
            np.int64,
        )
        return (
            *data,
            np.stack([draw.crop_a, draw.crop_b]).astype(np.float32),
            draw.flip,
            draw.colour,
            np.array(draw.fame, np.float32),
            np.array(partners[slot], np.int32),
            meta,
        )

    def _draw(self, epoch: int, video_pos: int) -> SampleDraw:
        """The random draws of eligible video `video_pos`'s sample in `epoch`."""
        catalog = self.catalog
        return draw_sample(self.index, self.params, catalog.size, self.seed, epoch, video_pos, key_span=catalog.span)

    @property
    def merges_plates(self) -> bool:
        """Whether the background is the partner's cached plate (otherwise its frames, taken from the batch)."""
        return self.params.use_cache and self.params.background == "plate"

    def _alpha(self, draw: SampleDraw, mask: np.ndarray | None, view: int = 0) -> np.ndarray:
        """(T, crop, crop, 1) uint8 alpha of the clip's own pixels inside the crop of `view` (0: the query, 1: a
        merged key), flipped as that view is (zeros when not merged: the graph then keeps the clip whole). Flipped
        here, a copy of a small array, rather than by an operator of the graph."""
        crop = self.params.crop
        if not draw.fame or mask is None:
            return np.zeros((self.catalog.clip_len, crop, crop, 1), np.uint8)
        alpha = query_alpha(mask, draw.crop_b if view else draw.crop_a, self.params)
        return np.ascontiguousarray(alpha[:, :, ::-1] if draw.flip[view] else alpha)[..., None]

    def _alphas(self, draw: SampleDraw, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The query's alpha (its window first centred on the mover, with `query_crop="mover"`) and the key's
        (`merges_key`: the same clip's mask inside the key's window; a placeholder otherwise)."""
        if mask is not None and self.params.query_crop == "mover":
            draw.crop_a[:] = centre_on_mask(draw.crop_a, mask)  # the draw's window: the graph crops the clip there
        key = self._alpha(draw, mask, view=1) if self.params.merges_key else PLACEHOLDER_ALPHA
        return self._alpha(draw, mask), key

    def _cached_alphas_and_plate(self, draw: SampleDraw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clip a's alphas from its cached mask (`_alphas`), and its own plate: the sample whose partner this one is
        merges that plate (the graph takes it from the batch), so each sample reads one clip of the cache, checked,
        not two. Nothing is read when no sample merges a plate or this one is not merged."""
        plates = self.merges_plates and self.params.fame_p > 0
        mask, plate = self._read_clip(draw) if draw.fame or plates else (None, None)
        if not draw.fame:
            mask = None
        return *self._alphas(draw, mask), (plate if plates else PLACEHOLDER_PLATE)[None]

    def _cpu_outputs(self, draw: SampleDraw) -> tuple[np.ndarray, ...]:
        clip_a, clip_b = self._decode(draw)
        if self.params.use_cache:
            alpha, alpha_b, plate = self._cached_alphas_and_plate(draw)
        else:  # the original code's way: the mask from the decoded clip, every time
            from pipeline.masks import get_method

            alpha, alpha_b = self._alphas(draw, get_method("fame")(clip_a) if draw.fame else None)
            plate = PLACEHOLDER_PLATE[None]
        return clip_a, alpha, plate, clip_b, alpha_b

    def _gpu_outputs(self, draw: SampleDraw) -> tuple[np.ndarray, ...]:
        if not self.params.use_cache:
            raise ValueError("the GPU path reads masks from a cache; use device='cpu' for use_cache=False")
        encoded, (frames_a, frames_b) = self._encoded(draw)
        alpha, alpha_b, plate = self._cached_alphas_and_plate(draw)
        return encoded, frames_a, alpha, plate, encoded, frames_b, alpha_b

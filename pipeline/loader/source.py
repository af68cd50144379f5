"""The per-sample callable behind DALI's parallel external source.

It runs in DALI's worker processes, so it is picklable and opens the cache lazily in each worker. On the CPU path it
decodes clips with PyAV (DALI's CPU decoder cannot read H.264); on the GPU path it hands over the encoded file and
the frame numbers, and DALI's NVDEC decoder does the rest. A sample's partner is another sample of its batch
(`batch_partners`): its plate is read from the cache, its frames are taken from the batch by the graph, so no sample
decodes more than its own two clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from pipeline.loader.catalog import Catalog
from pipeline.loader.params import LoaderParams
from pipeline.loader.query_mask import query_alpha
from pipeline.loader.sampling import (
    ClipIndex,
    SamplePlan,
    batch_partners,
    batches_per_epoch,
    key_clip_frames,
    plan_sample,
    shard_order,
)
from pipeline.video import decode_clips

# Output order of the callable; the pipeline definition reads the same list.
CPU_OUTPUTS = ("clip_a", "alpha", "plate", "clip_b")
GPU_OUTPUTS = ("enc_a", "frames_a", "alpha", "plate", "enc_b", "frames_b")
PARAM_OUTPUTS = ("rois", "flips", "colour", "fame", "partner_slot", "meta")
PLACEHOLDER_PLATE = np.zeros((1, 1, 3), np.uint8)  # shapes the plate output of samples that merge no plate


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
    _cache: Any = field(default=None, repr=False)
    _index: ClipIndex | None = field(default=None, repr=False)
    _orders: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

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

    def _store(self) -> dict[str, Any]:
        """The cache's `masks` and `plates` arrays, opened once per worker (not once per sample)."""
        if self._cache is None:
            import zarr

            group = zarr.open_group(self.catalog.cache_url, mode="r")
            self._cache = {name: group[name] for name in ("masks", "plates")}
        return self._cache

    def _clip_frames(self, plan: SamplePlan) -> list[np.ndarray]:
        """Source frame numbers of the query's clip a and of the key clip."""
        catalog = self.catalog
        if plan.key_start >= 0:
            key = key_clip_frames(plan.key_start, int(catalog.n_frames[plan.video]), catalog.clip_len, catalog.stride)
        else:
            key = catalog.clip_frames[plan.clip_b]
        return [catalog.clip_frames[plan.clip_a].astype(np.int32), key.astype(np.int32)]

    def _decode(self, plan: SamplePlan) -> list[np.ndarray]:
        """Clips a and b of a sample's video, from one decoding pass."""
        threads = 1 if self.params.num_workers > 0 else 0  # parallel workers: one decoding thread each
        path = self.catalog.video_path(plan.video)
        return decode_clips(path, self._clip_frames(plan), self.catalog.size, threads=threads)

    def _encoded(self, plan: SamplePlan) -> tuple[np.ndarray, list[np.ndarray]]:
        """The encoded file of the sample's video (read once for clips a and b) and each clip's frame numbers."""
        with fsspec.open(self.catalog.video_path(plan.video), "rb") as handle:
            data = np.frombuffer(handle.read(), dtype=np.uint8)
        return data, self._clip_frames(plan)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        """One sample; raises StopIteration at the end of this shard's epoch (DALI's end-of-epoch signal)."""
        epoch = self.first_epoch + info.epoch_idx
        position = info.idx_in_epoch + (self.skip_samples if info.epoch_idx == 0 else 0)
        if position >= self.samples_per_epoch:
            raise StopIteration
        order = self._order(epoch)
        plan = self._plan(epoch, int(order[position]))
        batch, slot = divmod(position, self.batch_size)
        partner_slot = int(batch_partners(self.batch_size, self.seed, epoch, self.shard_id, batch)[slot])
        partner = self._plan(epoch, int(order[batch * self.batch_size + partner_slot]))
        data = self._gpu_outputs(plan, partner) if self.gpu else self._cpu_outputs(plan, partner)
        meta = np.array(
            [plan.video, plan.label, plan.clip_a, plan.clip_b, partner.video, partner.clip_a, plan.key_start], np.int64
        )
        return (
            *data,
            np.stack([plan.crop_a, plan.crop_b]).astype(np.float32),
            plan.flip,
            plan.colour,
            np.array(plan.fame, np.float32),
            np.array(partner_slot, np.int32),
            meta,
        )

    def _plan(self, epoch: int, video_pos: int) -> SamplePlan:
        catalog = self.catalog
        return plan_sample(self.index, self.params, catalog.size, self.seed, epoch, video_pos, key_span=catalog.span)

    @property
    def merges_plates(self) -> bool:
        """Whether the background is the partner's cached plate (otherwise its frames, taken from the batch)."""
        return self.params.use_cache and self.params.background == "plate"

    def _alpha(self, plan: SamplePlan, mask: np.ndarray | None) -> np.ndarray:
        """(T, crop, crop, 1) uint8 alpha of the query's own clip inside its crop (zeros when not merged: the graph
        then keeps the clip whole)."""
        crop = self.params.crop
        if not plan.fame or mask is None:
            return np.zeros((self.catalog.clip_len, crop, crop, 1), np.uint8)
        return query_alpha(mask, plan.crop_a, self.params)[..., None]

    def _cached_alpha_and_plate(self, plan: SamplePlan, partner: SamplePlan) -> tuple[np.ndarray, np.ndarray]:
        """Clip a's alpha from its cached mask and the partner's plate, read only when this sample is merged."""
        mask = self._store()["masks"][plan.clip_a] if plan.fame else None
        plate = self._store()["plates"][partner.clip_a] if plan.fame and self.merges_plates else PLACEHOLDER_PLATE
        return self._alpha(plan, mask), plate[None]

    def _cpu_outputs(self, plan: SamplePlan, partner: SamplePlan) -> tuple[np.ndarray, ...]:
        clip_a, clip_b = self._decode(plan)
        if self.params.use_cache:
            alpha, plate = self._cached_alpha_and_plate(plan, partner)
        else:  # the original code's way: the mask from the decoded clip, every time
            from pipeline.masks import get_method

            alpha = self._alpha(plan, get_method("fame")(clip_a) if plan.fame else None)
            plate = PLACEHOLDER_PLATE[None]
        return clip_a, alpha, plate, clip_b

    def _gpu_outputs(self, plan: SamplePlan, partner: SamplePlan) -> tuple[np.ndarray, ...]:
        if not self.params.use_cache:
            raise ValueError("the GPU path reads masks from a cache; use device='cpu' for use_cache=False")
        encoded, (frames_a, frames_b) = self._encoded(plan)
        alpha, plate = self._cached_alpha_and_plate(plan, partner)
        return encoded, frames_a, alpha, plate, encoded, frames_b

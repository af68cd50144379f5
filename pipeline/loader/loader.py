"""FameLoader: batches of FAME-merged query views and plain key views, as torch tensors, from a DALI pipeline."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

from pipeline.loader import catalog as catalogs
from pipeline.loader.external_source import SampleSource
from pipeline.loader.graph import build_pipeline
from pipeline.loader.params import LoaderParams
from pipeline.params import BuildParams

# clip_b is -1 and key_start the key clip's first source frame when keys start anywhere (key_start="any").
# skipped_video/skipped_clip: what the sample left out (on_damage="skip"): a damaged cache clip (clip >= 0) or a
# video that does not decode (clip -1); -1 when nothing was.
META_FIELDS = (
    "video",
    "label",
    "clip_a",
    "clip_b",
    "partner_video",
    "partner_clip",
    "key_start",
    "skipped_video",
    "skipped_clip",
)


class FameLoader:
    """Iterate one epoch at a time; `set_epoch` (or the next `iter`) moves on, `state_dict` saves the position.

    Each rank of a DDP job makes its own loader with `shard_id=rank, num_shards=world_size`: the ranks share one
    shuffle per epoch and take disjoint parts of it.
    """

    def __init__(
        self,
        cache: str | None,
        batch_size: int,
        *,
        videos: str | None = None,
        params: LoaderParams | None = None,
        device: str = "cpu",
        shard_id: int = 0,
        num_shards: int = 1,
        seed: int = 0,
        build_params: BuildParams | None = None,
    ) -> None:
        self.params = params or LoaderParams()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size < 2 and (self.params.fame_p > 0 or self.params.extra_views):
            raise ValueError(
                f"batch_size must be >= 2 with FAME (fame_p > 0), return_partner or return_background, "
                f"got {batch_size}: each clip's partner is another clip of its batch"
            )
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        if device not in ("cpu", "gpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.gpu = device in ("gpu", "cuda")
        if cache is not None:
            self.catalog = catalogs.from_cache(cache, self.params, videos)
        elif videos is not None:
            self.catalog = catalogs.from_videos(videos, build_params or BuildParams(method="fame"))
            self.params = LoaderParams.from_dict({**self.params.to_dict(), "use_cache": False})
        else:
            raise ValueError("give a cache, or videos= for the no-cache mode")
        if self.gpu and not self.params.use_cache:
            raise ValueError("the no-cache mode computes masks on the CPU; use device='cpu'")
        self.batch_size = batch_size
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, seed
        self.epoch = 0
        self.position = 0  # samples of the current epoch already handed out
        self.skipped: Counter[tuple[int, int]] = Counter()  # (video, clip) left out -> samples (on_damage="skip")
        self._pipe = None
        self._pipe_key: tuple[int, int] | None = None
        self._batches_seen_by_pipe = 0
        probe = self._source(0, 0)
        self._samples_per_epoch = probe.samples_per_epoch
        if self._samples_per_epoch == 0:
            raise catalogs.LoaderError(
                f"{cache or videos}: {len(probe.index)} usable videos are too few for batch size {batch_size} "
                f"on {num_shards} shard(s) (empty selection)"
            )

    @classmethod
    def from_videos(cls, videos: str, batch_size: int, **kwargs: Any) -> FameLoader:
        """The no-cache mode: clips planned from `videos` with `build_params` (default: BuildParams(method="fame")),
        `fame` masks computed per sample from the decoded clip, background the partner's raw frames."""
        return cls(None, batch_size, videos=videos, **kwargs)

    @property
    def classes(self) -> list[str]:
        return list(self.catalog.classes)

    def __len__(self) -> int:
        return self._samples_per_epoch // self.batch_size

    def _source(self, epoch: int, skip: int) -> SampleSource:
        return SampleSource(
            catalog=self.catalog,
            params=self.params,
            batch_size=self.batch_size,
            seed=self.seed,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            first_epoch=epoch,
            skip_samples=skip,
            gpu=self.gpu,
        )

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iteration."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.close()

    def close(self) -> None:
        """Let the DALI pipeline go, and with it its worker processes (DALI stops them when the pipeline is freed,
        or at exit); an iteration in progress ends. The next iteration builds a new one."""
        self._pipe = None
        self._pipe_key = None

    def _pipeline(self):
        """Reuse the running pipeline when it is where we are; rebuild it after a jump (resume, set_epoch)."""
        expected = (self.epoch, self.position)
        if self._pipe is None or self._pipe_key != expected:
            self.close()
            device_id = torch.cuda.current_device() if self.gpu else None
            pipe = build_pipeline(self._source(self.epoch, self.position), self.batch_size, device_id)
            self._pipe = pipe
            self._pipe_key = expected
        return self._pipe

    def decode_floor(self):
        """A DALI pipeline whose workers decode this loader's samples' two clips (as its own do, from the start of
        the epoch) and output them, nothing else: the floor a loader cannot go below (`benchmarks/loader.py`)."""
        source = self._source(self.epoch, 0)
        source.decode_only = True
        return build_pipeline(source, self.batch_size, None)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.position >= self._samples_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        self._pipeline()
        while self._pipe is not None:  # no reference kept here: `close` frees the pipeline and its workers
            try:
                batch = self._to_torch(self._pipe.run())
            except StopIteration:
                self._pipe.reset()
                self.epoch, self.position = self.epoch + 1, 0
                self._pipe_key = (self.epoch, 0)
                return
            self.position += self.batch_size
            self._pipe_key = (self.epoch, self.position)
            yield batch

    def debug_batch(self, epoch: int = 0) -> dict[str, np.ndarray]:
        """The first batch of `epoch` with its intermediate steps, as uint8 (B, T, H, W, C) arrays: the cropped clip
        `clip`, `mask` (the alpha the query was merged with, 255 = own pixel; zeros for a sample not merged),
        `background`, the merged view `merged` and the key clip `key` (before colour augmentation).
        Made in-process on the CPU, for pictures and tests; it leaves the training iteration where it was."""
        source = self._source(epoch, 0)
        source.gpu = False
        params = LoaderParams.from_dict({**self.params.to_dict(), "num_workers": 0})
        source.params = params
        pipe = build_pipeline(source, self.batch_size, None, debug_outputs=True)
        outputs = pipe.run()
        n_main = 3 + len(params.extra_views)
        names = ("clip", "mask", "background", "merged", "key")
        batch = {name: _as_array(out) for name, out in zip(names, outputs[n_main:], strict=True)}
        meta = _as_array(outputs[2])
        batch.update({field: meta[:, i] for i, field in enumerate(META_FIELDS)})
        return batch

    def _to_torch(self, outputs) -> dict[str, torch.Tensor]:
        names = ["query", "key", "meta", *self.params.extra_views]
        batch: dict[str, torch.Tensor] = {}
        for name, out in zip(names, outputs, strict=False):
            # A copy on the device the output lives on (GPU outputs stay on the GPU, on torch's current stream).
            tensor = to_torch_tensor(out.as_tensor(), copy=True)
            if name == "meta":
                for i, field in enumerate(META_FIELDS):
                    batch[field] = tensor[:, i].to(torch.int64)
                self._count_skipped(batch["skipped_video"].tolist(), batch["skipped_clip"].tolist())
            else:
                batch[name] = tensor
        return batch

    def _count_skipped(self, videos: list[int], clips: list[int]) -> None:
        """Count what samples left out; warn once per damaged clip or undecodable video, naming the file."""
        for video, clip in zip(videos, clips, strict=True):
            if video < 0:
                continue
            if (video, clip) not in self.skipped:
                what = f"its cached clip {clip} is damaged" if clip >= 0 else "it does not decode"
                warnings.warn(
                    f"{self.catalog.video_path(video)}: {what}; left out, other samples stand in "
                    f"(`fame-cache verify --fix` then `fame-pipeline build --resume` repairs a cache)",
                    stacklevel=3,
                )
            self.skipped[(video, clip)] += 1


def _as_array(out) -> np.ndarray:
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return np.array(out.as_tensor())

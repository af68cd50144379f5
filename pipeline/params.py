"""Build parameters: the one place their defaults live.

`BuildParams` is what the command line fills, what a cache's attrs store and what a mismatch check compares.
Only the fields in `output_fields()` change the cache's bytes; they make up `params_hash`, by which a cache is found
again. Limits (max pixels/frames) decide which videos are refused, not what a good clip looks like, so they are not
part of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

METHODS = ("motion", "fame", "video")
JPEG_MAX_SIDE = 65_500  # the largest side a JPEG (the plates' codec) can hold
MAX_CHUNK_BYTES = 2**31 - 17  # the largest buffer Blosc compresses: one clip's masks, T x h x w bytes
FORMAT_VERSION = 2  # 2: the clip checksum covers the frame numbers too (format 1 caches still read)
# Cached masks are the foreground probability x 255 (uint8); a pixel at or above this value is foreground, unless a
# loader option binarises them otherwise.
FOREGROUND_THRESHOLD = 128


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' into (h, w); the error names the bad value and the form expected."""
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"size must be HxW with positive ints, got {text!r}")


def parse_clips_per_video(text: str | int | None) -> int | None:
    """'all' (or None) means every non-overlapping clip; otherwise a positive count of evenly spaced clips."""
    if text is None or (isinstance(text, str) and text.lower() == "all"):
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"clips-per-video must be a positive int or 'all', got {text!r}")
    return value


@dataclass(frozen=True)
class BuildParams:
    size: tuple[int, int] = (128, 171)
    clip_len: int = 16
    stride: int = 2
    clips_per_video: int | None = 4
    method: str = "motion"
    max_pixels: int = 4096 * 2160
    max_frames: int = 100_000

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 8 or w < 8:
            raise ValueError(f"size must be at least 8x8, got {h}x{w}")
        if self.clip_len < 2:
            raise ValueError(f"clip-len must be >= 2, got {self.clip_len}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.clips_per_video is not None and self.clips_per_video < 1:
            raise ValueError(f"clips-per-video must be >= 1 or 'all', got {self.clips_per_video}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.max_pixels < 1 or self.max_frames < 1:
            raise ValueError("max-pixels and max-frames must be positive")
        # Found here, before any video is read, rather than as the same failure on every video.
        if h * w > self.max_pixels:
            raise ValueError(
                f"size {h}x{w} is {h * w} pixels per frame, over max-pixels {self.max_pixels}; "
                "choose a smaller size (or raise max-pixels)"
            )
        if max(h, w) > JPEG_MAX_SIDE:
            raise ValueError(f"size {h}x{w}: plates are JPEG, whose sides are at most {JPEG_MAX_SIDE}")
        if self.span > self.max_frames:
            raise ValueError(
                f"clip-len {self.clip_len} at stride {self.stride} spans {self.span} source frames, over max-frames "
                f"{self.max_frames}: no video accepted could hold one clip"
            )
        if self.clip_len * h * w > MAX_CHUNK_BYTES:
            raise ValueError(
                f"clip-len {self.clip_len} at size {h}x{w} makes {self.clip_len * h * w} bytes of masks per clip, "
                f"over the {MAX_CHUNK_BYTES} one chunk can hold; choose a shorter clip or a smaller size"
            )

    @property
    def span(self) -> int:
        """Source frames covered by one clip."""
        return (self.clip_len - 1) * self.stride + 1

    @staticmethod
    def output_fields() -> tuple[str, ...]:
        return ("size", "clip_len", "stride", "clips_per_video", "method")

    def output_params(self) -> dict[str, Any]:
        """The parameters that change the cache's bytes, JSON-ready."""
        out = {k: getattr(self, k) for k in self.output_fields()}
        out["size"] = list(self.size)
        out["format_version"] = FORMAT_VERSION
        return out

    def params_hash(self) -> str:
        blob = json.dumps(self.output_params(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["size"] = list(self.size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildParams:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "size" in kwargs:
            kwargs["size"] = tuple(kwargs["size"])
        return cls(**kwargs)

    def differences(self, other: BuildParams) -> dict[str, tuple[Any, Any]]:
        """Output-changing fields that differ, as {field: (self, other)}."""
        mine, theirs = self.output_params(), other.output_params()
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


# A local job (no `address`) with fewer videos than this per worker runs in this process, in `workers` threads: Ray's
# start-up (its processes, each worker importing the package) would cost more than processes gain over threads, which
# PyAV, OpenCV and NumPy mostly leave free of the GIL (see README, "Small jobs").
RAY_MIN_VIDEOS_PER_WORKER = 100

"""A JPEG serializer for Zarr v3 chunks of RGB images, used for background plates.

Plates are natural images that lossless codecs barely shrink (about 1.1x), and they would make a cache larger than
its source videos. JPEG at quality 90 (4:4:4) shrinks a real 128x171 plate about 15x, to a mean error of about one
grey level; plates only ever serve as backgrounds for augmented training views. Masks stay lossless. The codec is
"fame.jpeg": declared under the `zarr.codecs` entry point (pyproject.toml), so plain `zarr.open_group` reads plates
wherever this package is installed, and registered again when this module is imported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

CODEC_NAME = "fame.jpeg"
SAMPLING_444 = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444  # full-resolution colour: textures keep their hues


def encode_jpeg(images: np.ndarray, quality: int) -> bytes:
    """(..., H, W, 3) uint8 RGB -> one JPEG of the images stacked vertically."""
    _, w, c = images.shape[-3:]
    if c != 3:
        raise ValueError(f"the JPEG codec stores RGB images (..., H, W, 3), got shape {images.shape}")
    tall = np.ascontiguousarray(images.reshape(-1, w, 3)[..., ::-1])
    ok, encoded = cv2.imencode(
        ".jpg", tall, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING_444]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()


def decode_jpeg(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a plate chunk is not a readable JPEG image (corrupt chunk)")
    return np.ascontiguousarray(bgr[..., ::-1]).reshape(shape)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """What a reader gets back for one stored chunk: lets a writer checksum plates without reading them back."""
    return decode_jpeg(encode_jpeg(image, quality), image.shape)


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Chunks of shape (..., H, W, 3) uint8 RGB, each (H, W, 3) image JPEG-encoded; frames of a chunk are stacked
    as one tall image (one encoder call per chunk)."""

    is_fixed_size = False
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict) -> JpegCodec:
        return cls(quality=int(data.get("configuration", {}).get("quality", 90)))

    def to_dict(self) -> dict:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        rgb = decode_jpeg(chunk_bytes.to_bytes(), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(rgb)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # In a worker thread, as Zarr's own compressors do: inline, it would stall Zarr's one event loop, which
        # every other array read or write of the process waits on.
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        images = np.asarray(chunk_array.as_ndarray_like(), dtype=np.uint8)
        return chunk_spec.prototype.buffer.from_bytes(encode_jpeg(images, self.quality))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG sizes depend on the content")


register_codec(CODEC_NAME, JpegCodec)

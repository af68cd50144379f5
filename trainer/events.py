"""TensorBoard scalars without TensorBoard: `pretrain --tensorboard` writes RUN/tensorboard/events.out.tfevents.*,
which `tensorboard --logdir runs/` reads. The `tensorboard` package (what torch.utils.tensorboard needs) pulls in
grpcio and a compiled data server; a scalar event is a few bytes of protobuf in a TFRecord, written here directly.

File format: TFRecords (uint64 length, masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes), each an
`Event` protobuf: wall_time (1, double), step (2, int64), file_version (3, string) or summary (5, message), a
`Summary` holding `Value`s of tag (1, string) and simple_value (2, float).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 as protobuf writes it
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, scalars: dict[str, float] | None = None, file_version: str = "") -> bytes:
    """One `Event` message: the file's version header, or the scalars of one step."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v))) for tag, v in scalars.items()
        )
        out += _field(5, values)
    return out


def record(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Appends scalar events to a new event file in `folder`, flushed after every step, so TensorBoard shows a live
    run; a resumed run starts another file in the same folder."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
        self._file.write(record(event(0, now, file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._file.write(record(event(step, time.time(), values)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

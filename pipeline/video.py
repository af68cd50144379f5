"""Decoding with PyAV, frames resized whole by FFmpeg's scaler in the same pass as the conversion to RGB; and the
one encoder (`write_video`) for what the project writes as video: test and demo data, heat map animations.

Every failure becomes a `VideoError` whose message names the file and says what is wrong, so a job can record it
and go on. Local paths go straight to FFmpeg; fsspec URLs (s3://, memory://, ...) are opened as file objects.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import av
import fsspec
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.sources import is_remote


class VideoError(Exception):
    """A video that cannot be used, with the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    height: int
    width: int


@contextlib.contextmanager
def open_container(path: str) -> Iterator[av.container.InputContainer]:
    """Open a video container, turning every way it can fail into a specific VideoError."""
    local = path.removeprefix("file://")
    if is_remote(path):
        fs, inner = fsspec.core.url_to_fs(path)
        if not fs.exists(inner):
            raise VideoError(path, "file not found")
        size = fs.size(inner)
        handle = fs.open(inner, "rb")
    else:
        if not os.path.exists(local):
            raise VideoError(path, "file not found")
        if os.path.isdir(local):
            raise VideoError(path, "is a directory, not a video file")
        size = os.path.getsize(local)
        handle = None
    if size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        try:
            container = av.open(handle if handle is not None else local, mode="r", metadata_errors="ignore")
        except av.error.InvalidDataError as exc:
            raise VideoError(path, f"not a video container FFmpeg can read ({exc.strerror or exc})") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError(path, f"cannot open: {exc}") from exc
        try:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            yield container
        finally:
            container.close()
    finally:
        if handle is not None:
            handle.close()


def _stream_info(path: str, container: av.container.InputContainer) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or ctx.name is None:
        raise VideoError(path, "video stream has an unsupported codec")
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    n_frames = int(stream.frames or 0)
    if n_frames <= 0 and stream.duration and stream.time_base:
        n_frames = round(float(stream.duration * stream.time_base) * fps)
    if n_frames <= 0 and container.duration:
        n_frames = round(container.duration / av.time_base * fps)
    return VideoInfo(n_frames=n_frames, fps=fps, height=int(ctx.height or 0), width=int(ctx.width or 0))


def probe(path: str) -> VideoInfo:
    """Container metadata only (no decoding): frame count estimate, fps and resolution."""
    with open_container(path) as container:
        return _stream_info(path, container)


class FrameConverter:
    """Decoded frames -> (h, w, 3) uint8 RGB arrays, resized whole to `size` (h, w) when given.

    One swscale pass does the colour conversion and the area-filtered resize together, from the frame's YUV planes:
    three to four times cheaper than converting at full resolution and resizing after. The scaler is kept across
    frames, so its filters are set up once per video.
    """

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None or (frame.height, frame.width) == self.size:
            # Through the kept scaler too: `to_ndarray(format=...)` sets a new one up for every frame.
            return self.reformatter.reformat(frame, format="rgb24").to_ndarray()
        h, w = self.size
        return self.reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def _set_threads(container, threads: int) -> None:
    """FFmpeg's decoding threads: 0 lets it choose (one per core), 1 suits one of several parallel workers."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads


def decode(
    path: str,
    size: tuple[int, int] | None = None,
    keep: Iterable[int] | None = None,
    max_pixels: int | None = None,
    max_frames: int | None = None,
    threads: int = 0,
) -> tuple[np.ndarray, VideoInfo]:
    """Decode a video once and return (frames, info).

    frames is (n, h, w, 3) uint8 RGB holding, in frame order, every frame whose index is in `keep` (all when None),
    each resized whole to `size` (h, w) when given. info.n_frames is the number of frames actually decoded, which
    for a healthy file is the whole video. A file that stops decoding early (truncated, corrupt) is an error: a
    cache must not silently hold clips of a broken video. `threads` caps FFmpeg's decoding threads (0: one per
    core), so that parallel workers do not oversubscribe the cores.
    """
    frames, info, _ = decode_indexed(path, size, keep, max_pixels, max_frames, threads)
    return frames, info


def decode_indexed(
    path: str,
    size: tuple[int, int] | None = None,
    keep: Iterable[int] | None = None,
    max_pixels: int | None = None,
    max_frames: int | None = None,
    threads: int = 0,
) -> tuple[np.ndarray, VideoInfo, FrameIndex | None]:
    """`decode`, and the video's FrameIndex from the packets that pass demuxed (the build stores it, so loaders need
    not demux the file again); None where `frame_index` would give None, or where the packets do not number the
    frames decoded (a packet that gives no frame)."""
    wanted = None if keep is None else {int(i) for i in keep}
    frames: list[np.ndarray] = []
    packets = _PacketLog()
    to_rgb = FrameConverter(size)
    with open_container(path) as container:
        meta = _stream_info(path, container)
        if max_pixels and meta.height * meta.width > max_pixels:
            raise VideoError(path, f"resolution {meta.width}x{meta.height} is over --max-pixels {max_pixels}")
        if max_frames and meta.n_frames > max_frames:
            raise VideoError(path, f"has {meta.n_frames} frames, over --max-frames {max_frames}")
        _set_threads(container, threads)
        stream = container.streams.video[0]
        count = 0
        try:
            for packet in container.demux(stream):  # what `container.decode` does, with each packet seen
                packets.add(packet)
                for frame in packet.decode():
                    if max_frames and count >= max_frames:
                        raise VideoError(path, f"has more than --max-frames {max_frames} frames")
                    if wanted is None or count in wanted:
                        frames.append(to_rgb(frame))
                    count += 1
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"decoding failed after {count} frames (truncated or corrupt?): {exc}") from exc
    if count == 0:
        raise VideoError(path, "video stream has no decodable frames (truncated or corrupt?)")
    expected = meta.n_frames
    if expected > 0 and count < expected - max(2, expected // 20):
        raise VideoError(path, f"only {count} of {expected} frames decode (truncated file?)")
    info = VideoInfo(n_frames=count, fps=meta.fps, height=meta.height, width=meta.width)
    if not frames:
        raise VideoError(path, f"none of the requested frames exist (video has {count} frames)")
    index = packets.index()
    return np.stack(frames), info, index if index is not None and len(index.pts) == count else None


def decode_all(path: str, size: tuple[int, int] | None = None, **kwargs) -> np.ndarray:
    """All frames of a video, resized to `size` when given."""
    frames, _ = decode(path, size, keep=None, **kwargs)
    return frames


NO_INDEX = "-"  # a stored frame index saying the video's timestamps cannot number its frames: decode from the start


@dataclass(frozen=True)
class FrameIndex:
    """Where a video's frames are, without decoding them: what seeking to a clip needs.

    Frame i is the frame with the i-th smallest presentation timestamp, which is the i-th frame the decoder outputs
    (how clips number their frames); keyframes are where decoding can start.
    """

    pts: np.ndarray  # (n,) int64, sorted: frame number -> presentation timestamp
    keyframes: np.ndarray  # sorted frame numbers of the keyframes

    def frame_of(self, pts: int | None) -> int | None:
        """The frame number of a decoded frame's timestamp; None when the index does not know it."""
        if pts is None:
            return None
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def keyframe_before(self, frame: int) -> int:
        """The last keyframe at or before `frame`."""
        return int(self.keyframes[np.searchsorted(self.keyframes, frame, side="right") - 1])

    def to_text(self) -> str:
        """The index as a cache stores it: 'PTS / KEYFRAMES', each its first value then runs of equal steps
        ('0 512*299 / 0 48*6'), a few bytes for a constant frame rate and a fixed keyframe interval."""
        return f"{_to_runs(self.pts)} / {_to_runs(self.keyframes)}"

    @classmethod
    def from_text(cls, text: str) -> FrameIndex:
        """The index `to_text` wrote; ValueError (naming the text) when it is not one a seek can trust."""
        try:
            pts_text, key_text = text.split(" / ")
            pts, keyframes = _from_runs(pts_text), _from_runs(key_text)
        except ValueError as exc:
            raise ValueError(f"frame index {text[:60]!r} is not 'PTS / KEYFRAMES' runs ({exc})") from exc
        if np.any(np.diff(pts) <= 0) or np.any(np.diff(keyframes) <= 0):
            raise ValueError(f"frame index {text[:60]!r}: timestamps and keyframes must increase")
        if keyframes[0] != 0 or keyframes[-1] >= len(pts):
            raise ValueError(f"frame index {text[:60]!r}: keyframes must start at 0 and lie within {len(pts)} frames")
        return cls(pts=pts, keyframes=keyframes)


def _to_runs(values: np.ndarray) -> str:
    """'first step*count ...': the first value, then each run of equal steps between neighbours."""
    steps = np.diff(np.asarray(values, np.int64))
    starts = np.flatnonzero(np.diff(steps, prepend=np.int64(steps[0] + 1) if len(steps) else 0))
    counts = np.diff(np.append(starts, len(steps)))
    return " ".join([str(int(values[0]))] + [f"{int(steps[s])}*{int(c)}" for s, c in zip(starts, counts, strict=True)])


def _from_runs(text: str) -> np.ndarray:
    """The values `_to_runs` wrote (ValueError when the text is not such runs)."""
    first, *runs = text.split(" ")
    steps = [np.full(int(count), int(step), np.int64) for step, count in (run.split("*") for run in runs)]
    return np.cumsum(np.concatenate([[np.int64(first)], *steps]))


class _PacketLog:
    """The timestamps and keyframe flags of a video's packets as they are demuxed."""

    def __init__(self) -> None:
        self.pts: list[int | None] = []
        self.keyframes: list[bool] = []

    def add(self, packet: av.Packet) -> None:
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            return
        self.pts.append(packet.pts)
        self.keyframes.append(packet.is_keyframe)

    def index(self) -> FrameIndex | None:
        """The FrameIndex of the packets seen, or None when their timestamps cannot number the frames (missing or
        repeated, no keyframe at the start)."""
        if not self.pts or any(p is None for p in self.pts):
            return None
        order = np.argsort(self.pts, kind="stable")
        sorted_pts = np.asarray(self.pts, np.int64)[order]
        if np.any(np.diff(sorted_pts) == 0):
            return None
        key_frames = np.flatnonzero(np.asarray(self.keyframes)[order])
        if len(key_frames) == 0 or key_frames[0] != 0:
            return None
        return FrameIndex(pts=sorted_pts, keyframes=key_frames)


def frame_index(path: str) -> FrameIndex | None:
    """The FrameIndex of a video from its packets (demuxed, not decoded: a few ms), or None when its timestamps
    cannot number the frames (missing or repeated, no keyframe at the start): such videos are decoded from the
    start. Kept per process and per file version (size and mtime of a local file), so a loader worker reads each
    video's packets once and a rewritten file is indexed again. A cache built by this version stores the index
    (`decode_indexed`), so a loader reading it demuxes nothing."""
    local = path.removeprefix("file://")
    stamp = None
    if not is_remote(path) and os.path.isfile(local):
        stat = os.stat(local)
        stamp = (stat.st_size, stat.st_mtime_ns)
    return _frame_index(path, stamp)


@functools.lru_cache(maxsize=4096)
def _frame_index(path: str, stamp: tuple[int, int] | None) -> FrameIndex | None:
    packets = _PacketLog()
    with open_container(path) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                packets.add(packet)
        except av.error.FFmpegError:  # a damaged file: decoding from the start reports what is wrong
            return None
    return packets.index()


@functools.lru_cache(maxsize=4096)
def _stored_index(text: str) -> FrameIndex | None:
    """A cache's stored index, parsed once per process; None for a malformed one (verify reports it)."""
    try:
        return FrameIndex.from_text(text)
    except ValueError:
        return None


def _index_for(path: str, seek: bool, stored: str) -> FrameIndex | None:
    """The index to seek with: none without seeking or when the build found the video unindexable, the stored one
    when there is one, else the file's packets demuxed here (a cache without the index, or a malformed one)."""
    if not seek or stored == NO_INDEX:
        return None
    index = _stored_index(stored) if stored else None
    return index if index is not None else frame_index(path)


class _SeekFailed(Exception):
    """Seeking did not land where the index said: decode from the start instead."""


def _seek_runs(wanted: np.ndarray, index: FrameIndex) -> list[tuple[int, int]]:
    """(keyframe, last wanted frame) of each stretch to decode: a new stretch starts wherever a keyframe lies after
    the previous wanted frame with frames between them, which seeking then skips rather than decodes."""
    runs: list[tuple[int, int]] = []
    for frame in wanted.tolist():
        key = index.keyframe_before(frame)
        if runs and key <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], frame)
        else:
            runs.append((key, frame))
    return runs


def _decode_from_start(container, keep: frozenset[int], last: int, to_rgb: FrameConverter) -> dict[int, np.ndarray]:
    found: dict[int, np.ndarray] = {}
    for count, frame in enumerate(container.decode(container.streams.video[0])):
        if count in keep:
            found[count] = to_rgb(frame)
        if count >= last:
            break
    return found


def _decode_seeking(
    container, runs: list[tuple[int, int]], index: FrameIndex, keep: frozenset[int], to_rgb: FrameConverter
) -> dict[int, np.ndarray]:
    stream = container.streams.video[0]
    found: dict[int, np.ndarray] = {}
    for key, last in runs:
        container.seek(int(index.pts[key]), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            number = index.frame_of(frame.pts)
            if number is None:
                raise _SeekFailed
            if number < key:  # an open group's leading frames, shown before its keyframe: not decodable from here
                continue
            if number in keep:
                found[number] = to_rgb(frame)
            if number >= last:
                break
    if len(found) != len(keep):
        raise _SeekFailed
    return found


def decode_clips(
    path: str,
    clips: Sequence[Sequence[int]],
    size: tuple[int, int] | None = None,
    threads: int = 0,
    seek: bool = True,
    stored_index: str = "",
) -> list[np.ndarray]:
    """The frames of several clips of one video, each (T, h, w, 3) uint8 in the order given (repeats allowed, as in
    looped clips), from one decoding pass.

    A loader reads clips, not whole videos: decoding seeks to the keyframe before each clip (`FrameIndex`) and
    stops after the last frame any clip needs. Two clips of one video cost one pass, from the keyframe before the
    first to the end of the last, skipping to the second clip's keyframe when there is one between them. `threads`
    caps FFmpeg's decoding threads (0: its choice); parallel loader workers decode one thread each. `seek=False`
    decodes from the first frame (the reference the seeking path is tested and measured against). `stored_index`:
    the video's index as its cache stores it (`FrameIndex.to_text`, or `NO_INDEX`); empty: demux the file for it.
    """
    orders = [np.asarray(frames, dtype=np.int64) for frames in clips]
    wanted = np.unique(np.concatenate(orders))
    last = int(wanted[-1])
    keep = frozenset(int(i) for i in wanted)
    to_rgb = FrameConverter(size)
    index = _index_for(path, seek, stored_index)
    runs = _seek_runs(wanted, index) if index is not None and last < len(index.pts) else [(0, last)]
    found: dict[int, np.ndarray] | None = None
    if runs != [(0, last)] and index is not None:
        with contextlib.suppress(_SeekFailed, av.error.FFmpegError), open_container(path) as container:
            _set_threads(container, threads)
            found = _decode_seeking(container, runs, index, keep, to_rgb)
    if found is None:
        with open_container(path) as container:
            _set_threads(container, threads)
            try:
                found = _decode_from_start(container, keep, last, to_rgb)
            except av.error.FFmpegError as exc:
                raise VideoError(path, f"decoding failed before frame {last}: {exc}") from exc
    missing = [int(i) for i in wanted if int(i) not in found]
    if missing:
        raise VideoError(path, f"frames {missing[:5]} do not exist (the video is shorter than the cache recorded)")
    return [np.stack([found[int(i)] for i in order]) for order in orders]


def decode_clip(path: str, frame_indices: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The frames of one clip, (T, h, w, 3) uint8, in the order given; see `decode_clips`."""
    return decode_clips(path, [frame_indices], size)[0]


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 25,
    lossless: bool = False,
    crf: int = 18,
    keyint: int | None = None,
    bit_rate: int | None = None,
) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as an H.264 MP4 (even H and W for the default yuv420p); `keyint` sets
    the keyframe interval (x264's default of 250 puts one keyframe in a short clip); `bit_rate` (bits/s) encodes at
    that average rate instead of the constant quality `crf`, as web video datasets are encoded."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _t, h, w, _ = frames.shape
    with av.open(path, mode="w") as container:
        if lossless:
            stream = container.add_stream("libx264rgb", rate=fps, options={"qp": "0", "preset": "ultrafast"})
            stream.pix_fmt = "rgb24"
        else:
            options = {"preset": "fast"} | ({"g": str(keyint)} if keyint else {})
            options |= {"b": str(bit_rate)} if bit_rate else {"crf": str(crf)}
            stream = container.add_stream("libx264", rate=fps, options=options)
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = w, h
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

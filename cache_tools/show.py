"""`fame-cache show`: pictures of one clip, the way a person checks that a cache is right.

Rows: the source frames, the mask over them (a colour tint weighted by the soft mask and the contour at 128), and a
merged example (this clip's foreground over another video's plate, as the loader's FAME view does). The last column
holds the plates. The pure parts (`overlay`, `merge`, `strip_frame`) work on arrays; the rest is drawing and I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from cache_tools.api import is_readable, source_path, video_clips, video_index
from pipeline.cache import Cache, CacheError, Committed
from pipeline.params import FOREGROUND_THRESHOLD
from pipeline.video import VideoError, decode_clip

TINT = np.array([255, 60, 200], np.float32)  # magenta: rare in natural video, visible on green and on skin
CONTOUR = (255, 255, 0)  # yellow


@dataclass
class ClipView:
    """Everything a picture of one clip needs, as arrays."""

    clip: int
    video_path: str
    frames: np.ndarray  # (T,h,w,3) uint8; grey with a note when the source is unavailable
    masks: np.ndarray  # (T,h,w) uint8
    plate: np.ndarray  # (h,w,3)
    partner_path: str
    partner_plate: np.ndarray  # (h,w,3)
    frame_numbers: list[int]
    source_ok: bool


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.55, thickness: int = 1) -> np.ndarray:
    """The frame with the soft mask as a colour tint and the >= 128 region outlined."""
    m = (mask.astype(np.float32) / 255.0)[..., None] * alpha
    out = (frame.astype(np.float32) * (1 - m) + TINT * m).round().astype(np.uint8)
    binary = (mask >= FOREGROUND_THRESHOLD).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, CONTOUR, thickness)
    return out


def merge(frame: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Soft alpha blend of the frame's foreground over a background: the FAME view of one frame."""
    m = (mask.astype(np.float32) / 255.0)[..., None]
    return (frame.astype(np.float32) * m + background.astype(np.float32) * (1 - m)).round().astype(np.uint8)


def pick_clip(
    cache: Cache, clip: int | None = None, video: str | None = None, committed: Committed | None = None
) -> int:
    """The clip to show: --clip N, the first clip of --video PATH, or the first readable clip, of the committed
    cache (`Cache.committed`, if not given: an append growing it, or stopped before its status, is not part of it)."""
    view = committed or cache.committed()
    if clip is not None:
        if not 0 <= clip < view.n_slots:  # a bad value, not a damaged cache: a usage error (exit 2)
            raise ValueError(
                f"--clip {clip} is out of range: {cache.url} has clips 0..{view.n_slots - 1} "
                f"({len(view.readable)} readable)"
            )
        if not is_readable(cache, clip, view):
            raise CacheError(f"{cache.url}: clip {clip} is not readable (out of range, padding, or its video not done)")
        return clip
    if video is not None:
        v = video_index(cache, video, view)
        clips = [c for c in video_clips(cache, v) if is_readable(cache, int(c), view)]
        if not clips:
            raise CacheError(f"{cache.url}: video {video!r} has no readable clip (status {view.table['status'][v]})")
        return int(clips[0])
    if len(view.readable) == 0:
        raise CacheError(f"{cache.url}: no readable clip (no video is done)")
    return int(view.readable[0])


def _partner(view: Committed, clip: int) -> int:
    """A readable clip of another video (the next one around the table), or the clip itself when there is none."""
    readable = view.readable
    others = readable[view.clip_video[readable] != view.clip_video[clip]]
    if len(others) == 0:
        return clip
    after = others[others > clip]
    return int(after[0] if len(after) else others[0])


def load_view(cache: Cache, clip: int, committed: Committed | None = None) -> ClipView:
    """What the picture of a readable clip shows, its partner drawn from the committed cache's readable clips
    (`Cache.committed`, if not given)."""
    v = int(cache.root["clips/video"][clip])
    frame_numbers = [int(f) for f in cache.root["clips/frames"][clip]]
    masks = cache.mask(clip)
    try:
        frames = decode_clip(source_path(cache, v), frame_numbers, cache.size)
        ok = True
    except (VideoError, OSError):
        frames = np.full((*masks.shape, 3), 96, np.uint8)
        ok = False
    partner = _partner(committed or cache.committed(), clip)
    pv = int(cache.root["clips/video"][partner])
    return ClipView(
        clip=clip,
        video_path=str(cache.root["videos/path"][v]),
        frames=frames,
        masks=masks,
        plate=cache.plate(clip),
        partner_path=str(cache.root["videos/path"][pv]),
        partner_plate=cache.plate(partner),
        frame_numbers=frame_numbers,
        source_ok=ok,
    )


def _columns(t: int, max_frames: int) -> np.ndarray:
    return np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))


def _wrap(parts: list[str], width: int) -> str:
    """The parts joined by ' | ', a new line wherever the next part would pass `width` characters."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 5 + len(part) <= width:
            lines[-1] += "  |  " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def clip_figure(cache: Cache, view: ClipView, max_frames: int = 8):
    """The --clip picture as a matplotlib figure: rows frames / mask overlay / merged, one column per shown frame,
    plates in the last column. Axes are placed in inches, each under a band kept for its title and right of a band
    kept for its row name, so no label can run into a picture or another label whatever the frame's shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(len(view.frame_numbers), max_frames)
    h, w = cache.size
    cw = max(1.9 * w / h, 1.3)  # in: a picture's width, 1.9 in high unless so narrow its title would not fit
    ch = cw * h / w
    left, gap, plate_gap, title_band, bottom = 0.75, 0.08, 0.3, 0.42, 0.35
    n_cols = len(cols) + 1
    fig_w = left + n_cols * cw + (n_cols - 1) * gap + plate_gap + 0.1
    fg = float((view.masks >= FOREGROUND_THRESHOLD).mean())
    parts = [
        view.video_path,
        f"clip {view.clip}",
        f"method {cache.attrs.get('method')}",
        f"foreground {100 * fg:.0f}%",
        f"partner {view.partner_path}",
    ]
    heading = _wrap(parts, int(fig_w / 0.095))  # ~0.085 in per character at 10 pt, with a margin
    top = 0.3 + 0.2 * (heading.count("\n") + 1)
    fig_h = top + 3 * (title_band + ch) + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    rows = [
        ("frames" if view.source_ok else "frames\n(source unavailable)", [view.frames[t] for t in cols]),
        ("mask overlay", [overlay(view.frames[t], view.masks[t]) for t in cols]),
        ("merged\n(FAME view)", [merge(view.frames[t], view.masks[t], view.partner_plate) for t in cols]),
    ]
    side = [("plate", view.plate), ("soft mask,\nmean over time", None), ("partner plate", view.partner_plate)]
    for r, (label, images) in enumerate(rows):
        y = fig_h - top - (r + 1) * (title_band + ch)  # the picture's bottom edge, in inches
        for c in range(n_cols):
            x = left + c * (cw + gap) + (plate_gap if c == n_cols - 1 else 0)
            ax = fig.add_axes((x / fig_w, y / fig_h, cw / fig_w, ch / fig_h))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest", aspect="auto")
                if r == 0:
                    ax.set_title(f"frame {view.frame_numbers[cols[c]]}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(label, fontsize=10, fontweight="bold")
            else:
                name, image = side[r]
                if image is None:
                    mean = view.masks.mean(axis=0)
                    ax.imshow(mean, cmap="magma", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
                else:
                    ax.imshow(image, interpolation="nearest", aspect="auto")
                ax.set_title(name, fontsize=9)
    fig.suptitle(heading, fontsize=10, y=1 - 0.15 / fig_h, va="top")
    footnote = _wrap([str(cache.url), f"params {cache.params_hash}"], int(fig_w / 0.065))
    fig.text(0.5, 0.05 / fig_h, footnote, ha="center", va="bottom", fontsize=7, color="0.4")
    return fig


def render_png(cache: Cache, view: ClipView, out: str, max_frames: int = 8) -> None:
    """Write `clip_figure` to `out`."""
    import matplotlib.pyplot as plt

    fig = clip_figure(cache, view, max_frames)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="white")
    plt.close(fig)


def _label(image: np.ndarray, text: str, band: int) -> np.ndarray:
    """The image with a white band above it holding the text."""
    top = np.full((band, image.shape[1], 3), 255, np.uint8)
    scale = band / 40
    cv2.putText(top, text, (4, int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (30, 30, 30), 1, cv2.LINE_AA)
    return np.concatenate([top, image])


def strip_frame(view: ClipView, t: int, scale: int) -> np.ndarray:
    """One animation frame: frame | mask overlay | merged | plate, each scaled up and titled, with a gap."""
    panels = [
        (f"frame {view.frame_numbers[t]}", view.frames[t]),
        ("mask", overlay(view.frames[t], view.masks[t])),
        ("merged", merge(view.frames[t], view.masks[t], view.partner_plate)),
        ("plate", view.plate),
    ]
    band = max(16, 8 * scale)
    out = []
    for name, image in panels:
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        out.append(_label(big, name, band))
        out.append(np.full((band + big.shape[0], 4, 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=1)


def render_animation(view: ClipView, out: str, fps: float = 4.0, scale: int | None = None) -> None:
    """An animated strip (GIF or MP4, by the file's extension) of frame | overlay | merged | plate over time."""
    h = view.frames.shape[1]
    scale = scale or max(1, round(160 / h))
    frames = [strip_frame(view, t, scale) for t in range(len(view.frame_numbers))]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.lower().endswith(".gif"):
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return
    import av

    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    with av.open(out, "w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.height, stream.width = even[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in even:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


SHEET_CLIPS = 48  # clips on a contact sheet by default
SHEET_COLUMNS = 8
SHEET_CELL = 220  # px: the width each clip's picture is scaled to (at least), so its label fits


def sheet_clips(cache: Cache, n: int = SHEET_CLIPS) -> np.ndarray:
    """Up to n readable clips spread over the cache: one per video first (videos evenly spaced), then more per
    video, so a sheet of a large cache samples many videos rather than the first few."""
    view = cache.committed()  # an append growing the cache, or stopped before its status, is not part of it
    clip_video, readable = view.clip_video, view.readable
    if len(readable) == 0:
        raise CacheError(f"{cache.url}: no readable clip (no video is done)")
    videos, first = np.unique(clip_video[readable], return_index=True)
    if len(videos) >= n:
        return np.sort(readable[first[np.unique(np.linspace(0, len(videos) - 1, n).astype(int))]])
    rest = np.setdiff1d(readable, readable[first])
    extra = rest[np.unique(np.linspace(0, len(rest) - 1, min(len(rest), n - len(videos))).astype(int))]
    return np.sort(np.concatenate([readable[first], extra if len(rest) else rest]))


def sheet_cell(cache: Cache, clip: int, width: int = SHEET_CELL) -> np.ndarray:
    """One clip on the sheet: its middle frame with the mask overlay (tint and contour at 128), scaled to `width`,
    under a label with the video's name, the clip index and its foreground share; grey where the source is gone."""
    v = int(cache.root["clips/video"][clip])
    numbers = [int(f) for f in cache.root["clips/frames"][clip]]
    masks = cache.mask(clip)
    t = len(numbers) // 2
    try:
        frame = decode_clip(source_path(cache, v), [numbers[t]], cache.size)[0]
        note = ""
    except (VideoError, OSError, CacheError):
        frame = np.full((*masks.shape[1:], 3), 96, np.uint8)
        note = " (no source)"
    h, w = masks.shape[1:]
    scale = max(1, -(-width // w))
    big = cv2.resize(overlay(frame, masks[t]), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    name = os.path.basename(str(cache.root["videos/path"][v]))
    fg = float((masks >= FOREGROUND_THRESHOLD).mean())
    band = 34
    top = np.full((band, big.shape[1], 3), 255, np.uint8)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    fits = max(4, int(big.shape[1] / cv2.getTextSize("M", font, size, 1)[0][0]))
    label = name if len(name) <= fits else name[: fits - 3] + "..."
    cv2.putText(top, label, (3, 13), font, size, (20, 20, 20), 1, cv2.LINE_AA)
    detail = f"clip {clip}, frame {numbers[t]}, fg {100 * fg:.0f}%{note}"
    cv2.putText(top, detail, (3, 28), font, size, (90, 90, 90), 1, cv2.LINE_AA)
    return np.concatenate([top, big])


def render_sheet(cache: Cache, out: str, clips: np.ndarray, columns: int = SHEET_COLUMNS) -> None:
    """A contact sheet: `clips` in a grid of `columns`, each its middle frame with the mask overlay and a label, so
    a person spots failed masks (empty, full, on the wrong thing) over many videos at a glance."""
    cells = [sheet_cell(cache, int(c)) for c in clips]
    ch, cw = cells[0].shape[:2]
    gap = 6
    rows = -(-len(cells) // columns)
    cols = min(columns, len(cells))
    title = 28
    sheet = np.full((title + rows * (ch + gap), cols * (cw + gap) - gap, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        y, x = title + r * (ch + gap), c * (cw + gap)
        sheet[y : y + ch, x : x + cw] = cell
    heading = (
        f"{cache.url}  |  method {cache.attrs.get('method')}  |  {len(cells)} clips  |  magenta: mask, yellow: 128"
    )
    cv2.putText(sheet, heading, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    from PIL import Image

    Image.fromarray(sheet).save(out)

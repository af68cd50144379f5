"""`fame-pipeline preview CACHE --out batch.png`: a picture of one loader batch, to see what the trainer will get.

A block per sample, a row per step: the cropped clip, the alpha the query was actually merged with (white = own
pixel; all white for a sample that was not merged), the background it was merged over, the merged (FAME) query and
the key view, each a few frames side by side, before colour augmentation (so what is seen is the composition itself).
Blocks sit side by side as far as a screen's width allows. Drawn with OpenCV on an array, so every pixel is testable.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import cv2
import numpy as np

ROWS = ("clip", "alpha applied", "background", "merged query", "key")
MAX_WIDTH = 1800  # px: blocks are placed side by side up to about a screen's width
CELL = 140  # px: each frame is scaled (nearest neighbour) to about this size, so small crops stay visible
GAP = 3  # px between frames
BLOCK_GAP = 24  # px between sample blocks
LABEL_W = 112  # px: the row names' column
HEADER_H = 40  # px: two lines naming the sample above its block
TITLE_H = 30  # px: the sheet's title line
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GREY = (20, 20, 20), (90, 90, 90)


@dataclass(frozen=True)
class SampleLabel:
    """What names a sample in the picture: its video, class and clip, and the video its background came from."""

    video: str
    label: str
    clip: int
    partner: str


def frame_strip(clip: np.ndarray, n_frames: int) -> np.ndarray:
    """(T, H, W, C) uint8 -> (H, n*W + gaps, 3): `n_frames` evenly spaced frames side by side, 2 px white apart."""
    t, h = clip.shape[0], clip.shape[1]
    picks = np.linspace(0, t - 1, num=min(n_frames, t)).round().astype(int)
    frames = clip[picks]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    gap = np.full((len(picks), h, 2, 3), 255, np.uint8)
    return np.concatenate(np.concatenate([frames, gap], axis=2), axis=1)[:, :-2]


def applied_alpha(batch: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, bool]:
    """Sample i's alpha as the graph applied it, (T, H, W, 1) uint8, and whether the sample was merged.

    The loader hands a sample that was not merged an all-zero alpha and the graph then keeps every own pixel
    (`graph.compose`: m = 1); its merged view is its clip, byte for byte. A merged sample with an empty alpha
    (possible only with no own-pixel floor) shows the background instead, so the two cases stay apart."""
    alpha = batch["mask"][i]
    if not alpha.any() and np.array_equal(batch["merged"][i], batch["clip"][i]):
        return np.full_like(alpha, 255), False
    return alpha, True


def _put(image: np.ndarray, text: str, x: int, y: int, colour=INK, scale: float = 0.45) -> None:
    """Text at (x, baseline y), cut with '...' to what fits in the image's width, so labels never run over."""
    room = image.shape[1] - x - 4
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > room:
        text = text[: max(0, len(text) - 4)] + "..." if len(text) > 4 else ""
    cv2.putText(image, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def sample_rows(batch: dict[str, np.ndarray], i: int) -> tuple[dict[str, np.ndarray], bool]:
    """Sample i's five clips under their row names, (T, H, W, C) each, and whether it was merged."""
    alpha, merged = applied_alpha(batch, i)
    clips = (batch["clip"][i], alpha, batch["background"][i], batch["merged"][i], batch["key"][i])
    return dict(zip(ROWS, clips, strict=True)), merged


def _scale(crop: int) -> float:
    return max(1.0, CELL / crop)


def sample_block(batch: dict[str, np.ndarray], i: int, label: SampleLabel, n_frames: int) -> np.ndarray:
    """Sample i as a (H, W, 3) picture: two header lines naming it, then a labelled row per step."""
    rows, merged = sample_rows(batch, i)
    s = _scale(batch["clip"].shape[2])
    strips = []
    for clip in rows.values():
        strip = frame_strip(clip, n_frames)
        size = (round(strip.shape[1] * s), round(strip.shape[0] * s))
        strips.append(cv2.resize(strip, size, interpolation=cv2.INTER_NEAREST))
    row_h, strip_w = strips[0].shape[:2]
    block = np.full((HEADER_H + len(strips) * (row_h + GAP), LABEL_W + strip_w, 3), 255, np.uint8)
    _put(block, f"{label.video}  ({label.label}, clip {label.clip})", 2, 15)
    if merged:
        own = float((rows["alpha applied"] >= 128).mean())
        detail = f"merged over {label.partner}, own pixels {100 * own:.0f}%"
    else:
        detail = "not merged: the query is the clip itself"
    _put(block, detail, 2, 33, GREY)
    for r, (name, strip) in enumerate(zip(rows, strips, strict=True)):
        y = HEADER_H + r * (row_h + GAP)
        block[y : y + row_h, LABEL_W:] = strip
        _put(block[:, :LABEL_W], name, 2, y + row_h // 2 + 5)
    return block


def batch_sheet(
    batch: dict[str, np.ndarray], labels: list[SampleLabel], n_frames: int = 4, title: str = ""
) -> np.ndarray:
    """The whole batch as one (H, W, 3) uint8 picture: sample blocks side by side, as many as fit in `MAX_WIDTH`
    (at least one), under a title line."""
    blocks = [sample_block(batch, i, labels[i], n_frames) for i in range(len(labels))]
    bh, bw = blocks[0].shape[:2]
    per_row = max(1, min(len(blocks), (MAX_WIDTH + BLOCK_GAP) // (bw + BLOCK_GAP)))
    n_rows = -(-len(blocks) // per_row)
    sheet = np.full(
        (TITLE_H + n_rows * (bh + BLOCK_GAP) - BLOCK_GAP, per_row * (bw + BLOCK_GAP) - BLOCK_GAP, 3), 255, np.uint8
    )
    for k, block in enumerate(blocks):
        r, c = divmod(k, per_row)
        y, x = TITLE_H + r * (bh + BLOCK_GAP), c * (bw + BLOCK_GAP)
        sheet[y : y + bh, x : x + bw] = block
    _put(sheet, title, 2, 20, INK, 0.5)
    return sheet


def render_batch(
    batch: dict[str, np.ndarray], labels: list[SampleLabel], out: str, n_frames: int = 4, title: str = ""
) -> np.ndarray:
    """Write `batch_sheet` of `FameLoader.debug_batch()` output to `out` (any format Pillow writes); returns it."""
    from PIL import Image

    sheet = batch_sheet(batch, labels, n_frames, title)
    Image.fromarray(sheet).save(out)
    return sheet


def batch_labels(loader, batch: dict[str, np.ndarray]) -> list[SampleLabel]:
    """Each sample's video path, class name, clip and partner video, from the loader's catalog."""
    catalog = loader.catalog
    return [
        SampleLabel(
            video=str(catalog.paths[int(v)]),
            label=str(catalog.classes[int(catalog.labels[int(v)])]),
            clip=int(c),
            partner=str(catalog.paths[int(p)]),
        )
        for v, c, p in zip(batch["video"], batch["clip_a"], batch["partner_video"], strict=True)
    ]


def add_preview_parser(subparsers: argparse._SubParsersAction) -> None:
    """The `preview` subcommand; `pipeline.cli` calls this, so the loader owns its own options."""
    from pipeline.loader.params import BACKGROUNDS, MASK_MODES, LoaderParams
    from pipeline.usage import add_hidden_alias

    d = LoaderParams()
    p = subparsers.add_parser(
        "preview",
        help="write a picture of one loader batch: clip, alpha applied, background, merged query, key view",
        description="Run the loader's CPU pipeline for one batch and draw a block per sample (its video, class and "
        "clip above it): the cropped clip, the alpha the query was merged with, the partner background, the "
        "FAME-merged query and the key view, a few frames each, before colour augmentation.",
    )
    p.add_argument("cache", help="cache made by `fame-pipeline build` (local path or fsspec URL)")
    p.add_argument("--out", default="batch.png", help="picture to write (%(default)s)")
    p.add_argument(
        "--videos-root",
        dest="videos",
        metavar="DIR",
        help="where the source videos are, when not at the cache's recorded source root",
    )
    add_hidden_alias(p, "--videos", "videos")  # the option's name before --videos-root
    p.add_argument("--batch-size", type=int, default=4, help="samples in the batch, one block each (%(default)s)")
    p.add_argument("--frames", type=int, default=4, help="frames shown per clip (%(default)s)")
    p.add_argument("--epoch", type=int, default=0, help="which epoch's first batch (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the loader's draws, as pretrain's --seed (%(default)s)")
    p.add_argument("--crop", type=int, default=d.crop, help="output size of the views (%(default)s)")
    p.add_argument(
        "--background",
        choices=BACKGROUNDS,
        default=d.background,
        help="what the foreground is pasted over (%(default)s)",
    )
    p.add_argument(
        "--mask-mode", choices=MASK_MODES, default=d.mask_mode, help="how the mask becomes alpha (%(default)s)"
    )
    p.add_argument("--threshold", type=int, default=d.threshold, help="for --mask-mode threshold (%(default)s)")
    p.add_argument("--beta", type=float, default=d.beta, help="own-pixel fraction for --mask-mode area (%(default)s)")
    p.add_argument(
        "--own-floor", type=float, default=d.own_floor, help="least own-pixel fraction of a merged frame (%(default)s)"
    )
    p.add_argument(
        "--own-margin",
        type=float,
        default=d.own_margin,
        help="a merged frame keeps at least its mask's share plus this fraction (%(default)s)",
    )
    p.add_argument("--fame-p", type=float, default=1.0, help="probability a query is merged (%(default)s here)")
    p.set_defaults(func=run_preview, subparser=p)


def run_preview(args: argparse.Namespace) -> int:
    from pipeline.cache import CacheError
    from pipeline.loader import FameLoader, LoaderError, LoaderParams
    from pipeline.usage import UsageError, require_path

    try:
        require_path(args.cache, "CACHE", "a cache made by `fame-pipeline build`")
        require_path(args.videos, "--videos-root", "the folder of the cache's videos")
    except UsageError as exc:
        args.subparser.error(str(exc))
    if args.batch_size < 1 or args.frames < 1:
        p = args.subparser
        p.error(f"--batch-size and --frames must be >= 1, got {args.batch_size} and {args.frames}")
    if args.batch_size < 2 and args.fame_p > 0:
        args.subparser.error("--batch-size must be >= 2 with FAME: each clip's partner is another clip of the batch")
    try:
        params = LoaderParams(
            crop=args.crop,
            background=args.background,
            mask_mode=args.mask_mode,
            threshold=args.threshold,
            beta=args.beta,
            own_floor=args.own_floor,
            own_margin=args.own_margin,
            fame_p=args.fame_p,
            num_workers=0,
        )
    except ValueError as exc:
        args.subparser.error(str(exc))
    try:
        loader = FameLoader(args.cache, args.batch_size, videos=args.videos, params=params, seed=args.seed)
        batch = loader.debug_batch(epoch=args.epoch)
    except (LoaderError, CacheError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    title = (
        f"{args.cache}  |  background {args.background}, mask {args.mask_mode}, epoch {args.epoch}, "
        f"seed {args.seed}  |  before colour augmentation"
    )
    render_batch(batch, batch_labels(loader, batch), args.out, n_frames=args.frames, title=title)
    print(f"wrote {args.out} ({args.batch_size} samples)", file=sys.stderr)
    return 0

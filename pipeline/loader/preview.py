"""`fame-pipeline preview CACHE --out batch.png`: a picture of one loader batch, to see what the trainer will get.

One row per sample; columns are the cropped clip, its mask, the partner background, the merged (FAME) view and the
key view, each a strip of a few frames, before colour augmentation (so what is seen is the composition itself).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

PANELS = ("clip", "mask", "background", "merged", "key")


def frame_strip(clip: np.ndarray, n_frames: int) -> np.ndarray:
    """(T, H, W, C) uint8 -> (H, n*W + gaps, 3): `n_frames` evenly spaced frames side by side, 2 px white apart."""
    t, h = clip.shape[0], clip.shape[1]
    picks = np.linspace(0, t - 1, num=min(n_frames, t)).round().astype(int)
    frames = clip[picks]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    gap = np.full((len(picks), h, 2, 3), 255, np.uint8)
    return np.concatenate(np.concatenate([frames, gap], axis=2), axis=1)[:, :-2]


def render_batch(batch: dict[str, np.ndarray], out: str, n_frames: int = 4, title: str = "") -> None:
    """Write the grid of `FameLoader.debug_batch()` output to `out` (any format matplotlib writes: png, jpg, pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(batch["clip"])
    strips = [[frame_strip(batch[name][i], n_frames) for name in PANELS] for i in range(n)]
    h, w = strips[0][0].shape[:2]
    scale = 2.4 / max(h, 1)  # inches per pixel row, so small crops are still visible
    fig, axes = plt.subplots(
        n, len(PANELS), figsize=(len(PANELS) * w * scale + 0.5, n * h * scale + 0.8), squeeze=False
    )
    for i in range(n):
        for j, name in enumerate(PANELS):
            ax = axes[i, j]
            ax.imshow(strips[i][j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=10)
            if j == 0:
                ax.set_ylabel(
                    f"video {int(batch['video'][i])}\nclip {int(batch['clip_a'][i])}\n"
                    f"partner {int(batch['partner_video'][i])}",
                    fontsize=8,
                )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def add_preview_parser(subparsers: argparse._SubParsersAction) -> None:
    """The `preview` subcommand; `pipeline.cli` calls this, so the loader owns its own options."""
    from pipeline.loader.params import BACKGROUNDS, MASK_MODES, LoaderParams

    d = LoaderParams()
    p = subparsers.add_parser(
        "preview",
        help="write a picture of one loader batch: clip, mask, background, merged view, key view",
        description="Run the loader's CPU pipeline for one batch and draw, per sample, the cropped clip, its mask, "
        "the partner background, the FAME-merged query view and the key view (before colour augmentation).",
    )
    p.add_argument("cache", help="cache made by `fame-pipeline build` (local path or fsspec URL)")
    p.add_argument("--out", default="batch.png", help="picture to write (%(default)s)")
    p.add_argument(
        "--videos-root",
        "--videos",
        dest="videos",
        help="where the source videos are, when not at the cache's recorded source root",
    )
    p.add_argument("--batch-size", type=int, default=4, help="samples in the batch, one row each (%(default)s)")
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
    title = f"{args.cache} - background {args.background}, mask {args.mask_mode}, epoch {args.epoch}"
    render_batch(batch, args.out, n_frames=args.frames, title=title)
    print(f"wrote {args.out} ({args.batch_size} samples)", file=sys.stderr)
    return 0

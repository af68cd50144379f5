"""`fame-pipeline swap-test CACHE --out DIR`: the swapped-background test set (`pipeline.swap`) written as videos, so
other tools and other models are scored on the very clips `fame-train eval --protocol swapped` scores; and the
picture of a few of them (`--preview`, also drawn by `fame-train eval`).

DIR/swapped/clipNNNNNN.mp4 holds a test clip's foreground over another class's plate, DIR/background/clipNNNNNN.mp4
the clip's own plate alone, and DIR/labels.csv one row per clip. Its first two columns are `path,label` (the own
class), so `fame-train eval --test DIR/labels.csv` reads it as a labelled list. Videos are lossless RGB H.264: the
exported pixels are the ones scored here (and odd frame sizes encode).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

from pipeline.report import EXIT_FAILED_JOB, EXIT_OK
from pipeline.swap import SwapError, SwapPair, SwapSet, draw_swaps, read_swapped
from pipeline.video import write_video

LABEL_COLUMNS = (
    "path",
    "label",
    "background_label",
    "background_path",
    "source_video",
    "source_clip",
    "background_video",
    "background_clip",
)
PANELS = ("original", "swapped", "background only")


def export_swapped(swap_set: SwapSet, out_dir: str) -> str:
    """Write every swapped clip and its background-only clip under `out_dir`, then labels.csv (last, so a
    labels.csv is only there when the set is whole); returns its path."""
    labels_path = os.path.join(out_dir, "labels.csv")
    if os.path.exists(labels_path):
        raise SwapError(f"{labels_path}: an exported set is already there; choose another --out or remove it")
    rows = []
    for clips in read_swapped(swap_set):
        for item in clips:
            pair = item.pair
            name = f"clip{pair.clip:06d}.mp4"
            swapped, background = f"swapped/{name}", f"background/{name}"
            write_video(os.path.join(out_dir, swapped), item.swapped, lossless=True)
            write_video(os.path.join(out_dir, background), np.ascontiguousarray(item.background), lossless=True)
            rows.append(
                (
                    swapped,
                    pair.label,
                    pair.background_label,
                    background,
                    swap_set.paths[pair.video],
                    pair.clip,
                    swap_set.paths[pair.partner_video],
                    pair.partner_clip,
                )
            )
    tmp = labels_path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, labels_path)
    return labels_path


def preview_pairs(swap_set: SwapSet, n_classes: int = 4) -> list[SwapPair]:
    """The first swapped clip of the first test video of each of the first `n_classes` classes (sorted)."""
    first = {}
    for pair in swap_set.pairs:
        first.setdefault(pair.label, pair)
    return [first[label] for label in sorted(first)[:n_classes]]


def render_preview(swap_set: SwapSet, out: str, n_classes: int = 4, n_frames: int = 4) -> str:
    """A grid, one row per class: the original clip, the swapped clip and the background-only clip, a few frames
    each, so a person sees what the three numbers are measured on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.loader.preview import frame_strip

    items = [clip for clips in read_swapped(swap_set, preview_pairs(swap_set, n_classes)) for clip in clips]
    strips = [[frame_strip(a, n_frames) for a in (i.original, i.swapped, i.background)] for i in items]
    h, w = strips[0][0].shape[:2]
    scale = 2.0 / max(h, 1)
    fig, axes = plt.subplots(
        len(items), len(PANELS), figsize=(len(PANELS) * w * scale + 0.8, len(items) * h * scale + 0.9), squeeze=False
    )
    for r, item in enumerate(items):
        for c, name in enumerate(PANELS):
            ax = axes[r, c]
            ax.imshow(strips[r][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
        pair = item.pair
        axes[r, 0].set_ylabel(f"class {pair.label}\nclip {pair.clip}", fontsize=8)
        axes[r, 1].set_xlabel(f"background: {pair.background_label} (clip {pair.partner_clip})", fontsize=8)
    fig.suptitle(f"{swap_set.url} - swapped test, seed {swap_set.seed}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def add_swap_test_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "swap-test",
        help="write a cache's swapped-background test set as videos and labels.csv",
        description="Paste each test clip's foreground (its cached mask, binarised as the loader does) over the plate "
        "of a clip from a video of another class; write the swapped clips, the background-only clips and labels.csv "
        "(own class, background class).",
    )
    p.add_argument("cache", help="cache of the test videos (local path or fsspec URL)")
    p.add_argument("--out", required=True, help="folder to write the set to (required)")
    p.add_argument("--seed", type=int, default=0, help="picks each test video's background partner (%(default)s)")
    p.add_argument(
        "--videos-root",
        dest="videos",
        metavar="DIR",
        help="where the source videos are, when not at the cache's recorded source root",
    )
    p.add_argument("--videos", dest="videos", help=argparse.SUPPRESS)  # the option's name before --videos-root
    p.add_argument("--preview", help="also draw original / swapped / background-only clips of a few classes here")
    p.set_defaults(func=run_swap_test, subparser=p)


def run_swap_test(args: argparse.Namespace) -> int:
    from pipeline.usage import require_path

    require_path(args.cache, "CACHE", "a cache made by `fame-pipeline build` of the test videos")
    require_path(args.videos, "--videos-root", "the folder of the cache's videos")
    try:
        swap_set = draw_swaps(args.cache, seed=args.seed, videos_root=args.videos)
        labels = export_swapped(swap_set, args.out)
        if args.preview:
            print(f"preview: {render_preview(swap_set, args.preview)}", file=sys.stderr)
    except (SwapError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED_JOB
    print(
        f"wrote {len(swap_set.pairs)} swapped clips of {swap_set.n_videos} videos to {args.out} ({labels}); left out "
        f"{swap_set.empty_masks} clip(s) with an empty mask and {swap_set.damaged} damaged",
        file=sys.stderr,
    )
    return EXIT_OK

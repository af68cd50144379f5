"""`fame-pipeline` (also `python -m pipeline`): build a cache, write a generated dataset, preview a loader, write a
cache's swapped-background test set.

Exit codes: 0 every video done, 3 some videos failed (the cache is still usable), 2 usage error, 1 the job could not
run (bad source, a cache it must not touch, a store error), 130 / 143 stopped by Ctrl-C / SIGTERM (`--resume` goes on).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from pipeline.params import METHODS, RAY_MIN_VIDEOS_PER_WORKER, BuildParams, parse_clips_per_video, parse_size
from pipeline.report import EXIT_FAILED_JOB, EXIT_OK, EXIT_USAGE, check_report_path
from pipeline.signals import handle_signals, interrupted
from pipeline.sources import SPLITS, Source, VideoEntry, is_url
from pipeline.usage import (  # a bad option value, found after parsing: exits 2 with one line
    STDOUT,
    CommandParser,
    UsageError,
    add_hidden_alias,
    add_json,
    add_quiet,
    require_path,
    require_source,
    write_json,
)

BUILD_FLAGS = ("size", "clip_len", "stride", "clips_per_video", "method", "max_pixels", "max_frames")


def _add_build_parser(sub: argparse._SubParsersAction) -> None:
    d = BuildParams()
    p = sub.add_parser(
        "build",
        help="precompute foreground masks and background plates into a Zarr cache",
        description="Decode every video of SRC once, compute per-clip soft foreground masks and background plates, "
        "and store them in a Zarr v3 cache. With --resume and --out, SRC and the build options may be left out: "
        "they are the cache's own.",
    )
    p.add_argument(
        "src",
        nargs="?",
        help="folder (class = parent folder), list file (.txt/.csv: path[,label], UCF101 split files; .jsonl), "
        "HMDB51 split files ('DIR/*_test_split1.txt', quoted, with --split), Kinetics CSV, or a URL of any; "
        "optional with --resume --out CACHE (the cache's own videos, under its source root or --videos-root)",
    )
    p.add_argument("--out", help="cache to create or finish (local path or fsspec URL, e.g. s3://bucket/c.zarr)")
    p.add_argument(
        "--cache-root",
        metavar="ROOT",
        help="instead of --out: find the cache with the same parameter hash under ROOT, or make ROOT/<hash>.zarr",
    )
    p.add_argument(
        "--videos-root",
        metavar="DIR",
        help="folder the list file's paths are relative to (default: the list's folder); with --resume and no SRC, "
        "where the cache's videos are now",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="which part of HMDB51 split files to build: train (id 1) or test (id 2); required for them, "
        "other sources have no parts and ignore it",
    )
    p.add_argument(
        "--size",
        metavar="HxW",
        help=f"frame size the videos are resized to, whole, before masks and plates (default {d.size[0]}x{d.size[1]}"
        "; with --resume: the cache's)",
    )
    p.add_argument(
        "--clip-len", type=int, metavar="T", help=f"frames per clip (default {d.clip_len}; with --resume: the cache's)"
    )
    p.add_argument(
        "--stride",
        type=int,
        metavar="S",
        help=f"source frames between a clip's frames (default {d.stride}; with --resume: the cache's)",
    )
    p.add_argument(
        "--clips-per-video",
        metavar="K",
        help=f"K evenly spaced clips per video, or 'all' (non-overlapping) (default {d.clips_per_video or 'all'}; "
        "with --resume: the cache's)",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        help=f"foreground mask method (default {d.method}; with --resume: the cache's)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help=f"record videos with more pixels per frame as failed (default {d.max_pixels})",
    )
    p.add_argument(
        "--max-frames", type=int, metavar="N", help=f"record videos with more frames as failed (default {d.max_frames})"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="Ray tasks run at once, each decoding and computing one group of videos; 1, or a small local job "
        "(see --ray), runs in this process without Ray (default %(default)s)",
    )
    p.add_argument(
        "--ray",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the tasks on a local Ray whatever the job's size (--no-ray: in this process, in N threads); default: "
        f"Ray with at least {RAY_MIN_VIDEOS_PER_WORKER} videos per worker, below that Ray's start-up costs more than "
        "it saves",
    )
    p.add_argument(
        "--address", help="join an existing Ray cluster (e.g. 'auto', ray://host:10001); default starts a local Ray"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an existing cache (after a kill, or `fame-cache verify --fix`): recompute videos not 'done'",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add SRC's videos that the cache (--out, or under --cache-root the one holding the most of them and no "
        "others) lacks, computing only those, then finish it as --resume does",
    )
    add_json(p, "the build report")
    add_hidden_alias(p, "--report", "json")  # the option's name before --json
    add_quiet(p)
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="remove the cache's writer lock first: only when the process it names is known to be dead",
    )
    p.set_defaults(func=_run_build, subparser=p)


def _build_params(args: argparse.Namespace, base: BuildParams) -> BuildParams:
    """The build options given on the command line over `base` (the defaults, or a resumed cache's own)."""
    given = {name: getattr(args, name) for name in BUILD_FLAGS if getattr(args, name) is not None}
    if "size" in given:
        given["size"] = parse_size(given["size"])
    if "clips_per_video" in given:
        given["clips_per_video"] = parse_clips_per_video(given["clips_per_video"])
    return dataclasses.replace(base, **given)


def _resumed_cache(args: argparse.Namespace):
    """The cache --resume --out names, when there is one: its options are the defaults of a resumed build."""
    from pipeline.cache import Cache, CacheError

    if not (args.resume and args.out):
        return None
    try:
        return Cache.open(args.out) if Cache.exists(args.out) else None
    except (CacheError, OSError):
        return None  # the build itself names what is wrong with it


def _cache_source(cache, videos_root: str | None) -> Source:
    """A resumed cache's own videos, as a source: the same list, under its recorded root or `videos_root`."""
    columns = zip(cache.videos("path"), cache.videos("label"), strict=True)
    entries = tuple(VideoEntry(str(path), str(label)) for path, label in columns)
    root = videos_root or cache.source_root
    return Source(root if is_url(root) else os.path.abspath(root), entries)


def _run_build(args: argparse.Namespace) -> int:
    from pipeline.build import BuildError, build_cache, resolve_out

    try:
        if args.out and args.cache_root:
            raise ValueError("give either --out or --cache-root, not both")
        if not args.out and not args.cache_root:
            raise ValueError("give --out CACHE.zarr or --cache-root ROOT")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        cache = _resumed_cache(args)
        if args.src is None and cache is None:
            raise ValueError(
                "SRC is required (a folder, list file or URL of videos); only `--resume --out CACHE` of an existing "
                "cache may leave it out"
            )
        require_source(args.src, "SRC", "a folder of videos, a list or split file, or a URL")
        require_path(args.videos_root, "--videos-root", "the folder of the videos")
        params = _build_params(args, cache.params if cache is not None else BuildParams())
        if args.json and args.json != STDOUT:
            check_report_path(args.json)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    src = args.src if args.src is not None else _cache_source(cache, args.videos_root)
    try:
        where = {"src": src, "videos_root": args.videos_root, "split": args.split, "append": args.append}
        out = resolve_out(args.out, args.cache_root, params, **where)
        report = build_cache(
            src,
            out,
            params,
            workers=args.workers,
            address=args.address,
            ray=args.ray,
            resume=args.resume or bool(args.cache_root),
            videos_root=args.videos_root,
            progress=not args.quiet,
            report_path=args.json if args.json != STDOUT else None,
            force_unlock=args.force_unlock,
            split=args.split,
            append=args.append,
        )
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED_JOB
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (see pipeline.signals)
        stop = interrupted(exc)
        print(
            f"fame-pipeline build: {stop}; the groups written so far are kept: "
            "run the same command with --resume to finish the cache",
            file=sys.stderr,
        )
        return stop.exit_code
    if args.json == STDOUT:
        write_json(report.to_dict(), STDOUT)
    print(report.summary(), file=sys.stderr)
    return report.exit_code


def _add_synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a generated folder-per-class video dataset (for demos and tests)",
        description="Write OUT_DIR/class_<k>/video_<i>.mp4: generated scenes whose moving foreground is known, one "
        "class per folder, as `fame-pipeline build` reads them.",
    )
    p.add_argument("out_dir", help="folder to write the dataset into (made if missing)")
    p.add_argument("--classes", type=int, default=3, metavar="N", help="number of classes (default %(default)s)")
    p.add_argument(
        "--videos-per-class", type=int, default=3, metavar="N", help="videos written per class (default %(default)s)"
    )
    p.add_argument("--frames", type=int, default=40, metavar="N", help="frames per video (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the scenes: the same seed writes the same videos")
    p.add_argument(
        "--size",
        metavar="HxW",
        help="frame size, even numbers for H.264's yuv420p (default: the generator's Scene.size)",
    )
    p.set_defaults(func=_run_synth, subparser=p)


def _run_synth(args: argparse.Namespace) -> int:
    from synthetic import Scene, write_dataset

    if args.classes < 1 or args.videos_per_class < 1 or args.frames < 2:
        raise UsageError("--classes and --videos-per-class must be >= 1 and --frames >= 2")
    try:
        size = Scene.size if args.size is None else parse_size(args.size)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if size[0] % 2 or size[1] % 2:
        raise UsageError(f"--size must have even height and width (H.264 yuv420p), got {args.size!r}")
    paths = write_dataset(args.out_dir, args.classes, args.videos_per_class, args.frames, seed=args.seed, size=size)
    print(f"wrote {len(paths)} videos in {args.classes} classes under {args.out_dir}", file=sys.stderr)
    return EXIT_OK


def _add_swap_test_parser(sub: argparse._SubParsersAction) -> None:
    from pipeline.swap_export import add_swap_test_parser

    add_swap_test_parser(sub)


def make_parser(with_preview: bool = True) -> argparse.ArgumentParser:
    """The command line; `preview` comes from the loader package, imported only when it may be wanted (it pulls in
    torch and DALI, seconds that a `build` should not pay)."""
    parser = CommandParser(prog="fame-pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build_parser(sub)
    _add_synth_parser(sub)
    _add_swap_test_parser(sub)
    if with_preview:
        try:
            from pipeline.loader.preview import add_preview_parser
        except ImportError:
            pass
        else:
            add_preview_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = make_parser(with_preview=command not in ("build", "synth", "swap-test"))
    args = parser.parse_args(argv)
    try:
        with handle_signals():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        stop = interrupted(exc)
        print(f"fame-pipeline {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except UsageError as exc:
        getattr(args, "subparser", parser).error(str(exc))  # exits 2
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

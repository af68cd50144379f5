"""`fame-pipeline` (also `python -m pipeline`): build a cache, write a generated dataset, preview a loader, write a
cache's swapped-background test set.

Exit codes: 0 every video done, 3 some videos failed (the cache is still usable), 2 usage error, 1 the job could not
run (bad source, a cache it must not touch, a store error), 130 / 143 stopped by Ctrl-C / SIGTERM (`--resume` goes on).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.params import BuildParams, parse_clips_per_video, parse_size
from pipeline.report import EXIT_FAILED_JOB, EXIT_OK, EXIT_USAGE, check_report_path
from pipeline.signals import handle_signals, interrupted
from pipeline.sources import SPLITS
from pipeline.usage import UsageError  # a bad option value, found after parsing: exits 2 with the usage


def _add_build_parser(sub: argparse._SubParsersAction) -> None:
    d = BuildParams()
    p = sub.add_parser(
        "build",
        help="precompute foreground masks and background plates into a Zarr cache",
        description="Decode every video of SRC once, compute per-clip soft foreground masks and background plates, "
        "and store them in a Zarr v3 cache.",
    )
    p.add_argument(
        "src",
        help="folder (class = parent folder), list file (.txt/.csv: path[,label], UCF101 split files; .jsonl), "
        "HMDB51 split files ('DIR/*_test_split1.txt', quoted, with --split), Kinetics CSV, or a URL of any",
    )
    p.add_argument("--out", help="cache to create or finish (local path or fsspec URL, e.g. s3://bucket/c.zarr)")
    p.add_argument("--cache-root", help="find the cache with the same params hash under ROOT, or make ROOT/<hash>.zarr")
    p.add_argument("--videos-root", help="folder that list-file paths are relative to (default: the list's folder)")
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="which part of HMDB51 split files to build: train (id 1) or test (id 2); required for them, "
        "other sources have no parts and ignore it",
    )
    p.add_argument("--size", default=f"{d.size[0]}x{d.size[1]}", help="HxW frames are resized to, whole (%(default)s)")
    p.add_argument("--clip-len", type=int, default=d.clip_len, help="frames per clip (%(default)s)")
    p.add_argument("--stride", type=int, default=d.stride, help="source frames between clip frames (%(default)s)")
    p.add_argument(
        "--clips-per-video",
        default=str(d.clips_per_video or "all"),
        help="K evenly spaced clips per video, or 'all' (non-overlapping) (%(default)s)",
    )
    p.add_argument("--method", choices=("motion", "fame"), default=d.method, help="mask method (%(default)s)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="refuse videos with more pixels per frame")
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="refuse videos with more frames")
    p.add_argument("--workers", type=int, default=1, help="parallel workers; 1 runs in-process without Ray (1)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. 'auto'); default starts a local Ray")
    p.add_argument("--resume", action="store_true", help="finish an existing cache: recompute videos not 'done'")
    p.add_argument(
        "--append",
        action="store_true",
        help="add SRC's videos that the cache (--out, or under --cache-root the one holding the most of them and no "
        "others) lacks, computing only those, then finish it as --resume does",
    )
    p.add_argument("--report", help="write the build report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="remove the cache's writer lock first: only when the process it names is known to be dead",
    )
    p.set_defaults(func=_run_build, subparser=p)


def _run_build(args: argparse.Namespace) -> int:
    from pipeline.build import BuildError, build_cache, resolve_out

    try:
        params = BuildParams(
            size=parse_size(args.size),
            clip_len=args.clip_len,
            stride=args.stride,
            clips_per_video=parse_clips_per_video(args.clips_per_video),
            method=args.method,
            max_pixels=args.max_pixels,
            max_frames=args.max_frames,
        )
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.out and args.cache_root:
            raise ValueError("give either --out or --cache-root, not both")
        if not args.out and not args.cache_root:
            raise ValueError("give --out CACHE.zarr or --cache-root ROOT")
        if args.report:
            check_report_path(args.report)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        where = {"src": args.src, "videos_root": args.videos_root, "split": args.split, "append": args.append}
        out = resolve_out(args.out, args.cache_root, params, **where)
        report = build_cache(
            args.src,
            out,
            params,
            workers=args.workers,
            address=args.address,
            resume=args.resume or bool(args.cache_root),
            videos_root=args.videos_root,
            progress=not args.quiet,
            report_path=args.report,
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
    print(report.summary(), file=sys.stderr)
    return report.exit_code


def _add_synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a generated folder-per-class video dataset (for demos and tests)")
    p.add_argument("out_dir")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--videos-per-class", type=int, default=3)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size", help="frame size HxW, even numbers for H.264's yuv420p (default: the generator's Scene.size)"
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
    parser = argparse.ArgumentParser(prog="fame-pipeline", description=__doc__.splitlines()[0])
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

"""`fame-cache` (also `python -m cache_tools`): inspect, verify, show, diff, list and clean FAME caches.

Exit codes: 0 fine; 1 `verify` found problems (also after `--fix` marked them) or `diff` found no clip in common;
2 usage error; 3 a cache could not be opened, was refused (gc: one not all committed) or the work failed (the message
says which file and why); 130 / 143 stopped by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from pipeline.usage import STDOUT, CommandParser, add_json, add_quiet, require_path, write_json

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
FORCE_UNLOCK_HELP = "remove the cache's writer lock first: only when the process it names is known to be dead"
CACHE_HELP = "cache path or fsspec URL (s3://bucket/c.zarr)"
CACHE_EXPECTED = "a cache made by `fame-pipeline build` (a path or URL)"


def _report(args: argparse.Namespace, data: object, table: Callable[[], None]) -> None:
    """`--json` prints the JSON instead of the table; `--json FILE` writes it there and prints the table too."""
    if args.json:
        write_json(data, args.json)
    if args.json != STDOUT:
        table()


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr; off with --quiet, and when the JSON is printed (a script reads stdout)."""
    return not args.quiet and args.json != STDOUT


def _info(args: argparse.Namespace) -> int:
    from cache_tools.api import open_cache
    from cache_tools.info import cache_info, format_info

    info = cache_info(open_cache(args.cache))
    _report(args, info, lambda: print(format_info(info)))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from cache_tools.api import open_cache
    from cache_tools.verify import APPEND, plan_in_progress, resume_command, verify_and_fix, verify_cache
    from pipeline.cache.lock import writer_lock

    if args.force_unlock and not args.fix:
        raise ValueError("--force-unlock goes with --fix: verify alone writes nothing")
    cache = open_cache(args.cache, check=False)  # verify reports and repairs damaged metadata itself
    progress = _progress(args)
    rewritten: list[str] = []
    dropped = None
    if args.fix:
        with writer_lock(cache.url, "fame-cache verify --fix", force=args.force_unlock):
            repair = verify_and_fix(cache.url, sources=not args.no_sources, progress=progress)
        problems, rewritten, fixed, dropped = repair.problems, repair.rewritten, repair.marked, repair.dropped
    else:
        problems, fixed = verify_cache(cache, sources=not args.no_sources, progress=progress), []
    plan = plan_in_progress(cache)
    if args.json:
        report = {"url": cache.url, "ok": not problems, "problems": [p.to_dict() for p in problems], "fixed": fixed}
        removed = None if dropped is None else {"first_video": dropped.rows, "first_slot": dropped.slots}
        planning = None if plan is None else plan.to_dict()
        write_json({**report, "rewritten": rewritten, "dropped_append": removed, "planning": planning}, args.json)
    if args.json != STDOUT:
        for p in problems:
            print(p)
        if plan is not None:
            print(plan)
        if not problems:
            print(f"ok: {len(cache.readable_clips())} clips and their sources check out ({cache.url})")
        else:
            print(f"{len(problems)} problem(s) in {cache.url}", file=sys.stderr)
        if dropped is not None:
            print(
                f"removed the unfinished append from video {dropped.rows} on; add its videos again with "
                f"`fame-pipeline build SRC --out {cache.url} --append`",
                file=sys.stderr,
            )
        if rewritten:
            print(f"rewrote {len(rewritten)} metadata file(s): {', '.join(rewritten)}", file=sys.stderr)
        if fixed:
            print(
                f"marked {len(fixed)} video(s) pending; recompute them with `{resume_command(cache.url)}`",
                file=sys.stderr,
            )
        unfixable = [p for p in problems if p.video is None and p.kind not in ("metadata", APPEND)]
        if args.fix and unfixable:
            print("structural problems cannot be fixed in place: rebuild the cache", file=sys.stderr)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    from cache_tools.api import open_cache
    from cache_tools.show import load_view, pick_clip, render_animation, render_png

    if args.video is not None and args.clip is not None:
        raise ValueError("give --video or --clip, not both")
    if args.sheet is not None:
        return _sheet(args)
    cache = open_cache(args.cache)
    committed = cache.committed()  # read once: the clip is picked from it and its partner drawn from it
    view = load_view(cache, pick_clip(cache, args.clip, args.video, committed), committed)
    render_png(cache, view, args.out, max_frames=args.max_frames)
    written = [args.out]
    stem = args.out[:-4] if args.out.lower().endswith(".png") else args.out
    if args.gif:
        render_animation(view, stem + ".gif", fps=args.fps)
        written.append(stem + ".gif")
    if args.mp4:
        render_animation(view, stem + ".mp4", fps=args.fps)
        written.append(stem + ".mp4")
    if not view.source_ok:
        print(f"warning: source video of clip {view.clip} could not be read; frames shown grey", file=sys.stderr)
    print("\n".join(written))
    return EXIT_OK


def _sheet(args: argparse.Namespace) -> int:
    from cache_tools.api import open_cache
    from cache_tools.show import render_sheet, sheet_clips

    if args.sheet < 1 or args.video is not None or args.clip is not None:
        raise ValueError(f"--sheet {args.sheet}: give a positive number of clips, without --video or --clip")
    cache = open_cache(args.cache)
    render_sheet(cache, args.out, sheet_clips(cache, args.sheet))
    print(args.out)
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from cache_tools.api import open_cache
    from cache_tools.diff import diff_caches, format_diff

    a, b = open_cache(args.a), open_cache(args.b)
    d = diff_caches(a, b, worst=args.worst, progress=_progress(args), any_source=args.any_source)
    _report(args, d, lambda: print(format_diff(d)))
    return EXIT_OK if d["mean_iou"] is not None else EXIT_PROBLEMS


def _ls(args: argparse.Namespace) -> int:
    from cache_tools.find import list_caches

    require_path(args.root, "ROOT", "a folder or bucket prefix that holds caches")
    entries = list_caches(args.root)
    _report(args, [e.to_dict() for e in entries], lambda: _print_ls(args.root, entries))
    return EXIT_OK


def _print_ls(root: str, entries: list) -> None:
    from cache_tools.info import describe_source

    if not entries:
        print(f"no caches under {root}")
    for e in entries:
        if e.problem:
            print(f"BROKEN  {e.url}: {e.problem}")
            continue
        p = e.params
        print(
            f"{e.params_hash}  {e.method:<6}  {p['size'][0]}x{p['size'][1]}  T={p['clip_len']}  stride={p['stride']}  "
            f"clips/video={p['clips_per_video'] or 'all'}  {e.n_done}/{e.n_videos} videos  {e.n_clips} clips  {e.url}"
        )
        if e.planning:  # the counts above are the planned rows'
            print(
                f"    planning unfinished: {e.planning['planned']} of {e.planning['videos']} videos planned; "
                f"`fame-pipeline build --out {e.url} --resume` plans the rest"
            )
        for record in e.sources:  # what the cache covers: each build or append
            print(f"    from {describe_source(record)}")


def _gc(args: argparse.Namespace) -> int:
    from cache_tools.api import normalise_url, open_cache
    from cache_tools.gc import gc_cache, refuse_unfinished
    from cache_tools.info import human_bytes
    from pipeline.cache.lock import writer_lock

    if args.force_unlock and args.dry_run:
        raise ValueError("--force-unlock goes with a real run: --dry-run writes nothing")
    refuse_unfinished(open_cache(args.cache))  # a clear error before any work (gc_cache checks again, under the lock)
    url = normalise_url(args.cache)
    with nullcontext() if args.dry_run else writer_lock(url, "fame-cache gc", force=args.force_unlock):
        report = gc_cache(url, dry_run=args.dry_run, progress=_progress(args))
    if args.json:
        write_json(report.to_dict(), args.json)
    if args.json == STDOUT:
        return EXIT_OK
    for path, why in report.dropped:
        print(f"drop {path}: {why}")
    if args.dry_run:
        print(f"dry run: would keep {report.kept} video(s), drop {len(report.dropped)}; nothing written")
    else:
        print(
            f"kept {report.kept} video(s), dropped {len(report.dropped)}; "
            f"{human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)}, "
            f"freed {human_bytes(report.bytes_freed)}"
        )
    return EXIT_OK


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="fame-cache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameters, counts, failures and sizes of a cache")
    p.add_argument("cache", help=CACHE_HELP)
    add_json(p, "the info")
    p.set_defaults(func=_info)

    p = sub.add_parser("verify", help="re-check every clip's checksum and the source videos")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("--fix", action="store_true", help="mark bad videos pending so `build --resume` recomputes them")
    p.add_argument(
        "--no-sources", action="store_true", help="skip the check that each source video is the file it was built from"
    )
    add_json(p, "the problems found")
    add_quiet(p)
    p.add_argument("--force-unlock", action="store_true", help=FORCE_UNLOCK_HELP + " (with --fix)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="a picture of one clip: frames, mask overlay, plate, merged example")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument(
        "--video", metavar="PATH", help="show the first clip of this video (path relative to the source root)"
    )
    p.add_argument("--clip", type=int, metavar="N", help="show this clip index (default: the first readable clip)")
    p.add_argument("--out", required=True, help="PNG file to write (required)")
    p.add_argument("--gif", action="store_true", help="also write an animated GIF next to it")
    p.add_argument("--mp4", action="store_true", help="also write an MP4 next to it")
    p.add_argument("--max-frames", type=int, default=8, metavar="N", help="frames shown in the PNG (%(default)s)")
    p.add_argument("--fps", type=float, default=4.0, help="animation speed in frames per second (%(default)s)")
    p.add_argument(
        "--sheet", nargs="?", type=int, const=48, metavar="N", help="instead: a contact sheet of N clips' masks (48)"
    )
    p.set_defaults(func=_show)

    p = sub.add_parser("diff", help="parameter differences and mask agreement of two caches of the same videos")
    p.add_argument("a", help="first cache (path or URL)")
    p.add_argument("b", help="second cache (path or URL)")
    p.add_argument("--worst", type=int, default=5, metavar="N", help="worst-agreeing videos listed (%(default)s)")
    p.add_argument("--any-source", action="store_true", help="compare caches built from different sources too")
    add_json(p, "the comparison")
    add_quiet(p)
    p.set_defaults(func=_diff)

    p = sub.add_parser("ls", help="the caches under a folder or bucket prefix")
    p.add_argument("root", help="folder or bucket prefix (s3://bucket/caches) to search for caches")
    add_json(p, "the list")
    p.set_defaults(func=_ls)

    p = sub.add_parser("gc", help="drop failed, partial, corrupt and vanished videos; compact the shards")
    p.add_argument("cache", help=CACHE_HELP)
    p.add_argument("--dry-run", action="store_true", help="say what would be dropped; write nothing")
    add_json(p, "the report")
    add_quiet(p)
    p.add_argument("--force-unlock", action="store_true", help=FORCE_UNLOCK_HELP)
    p.set_defaults(func=_gc)
    return parser


def _check_paths(args: argparse.Namespace) -> None:
    """A cache argument that names nothing is a usage error (exit 2); one that exists but is no cache is not."""
    for name in ("cache", "a", "b"):
        label = {"cache": "CACHE", "a": "A", "b": "B"}[name]
        require_path(getattr(args, name, None), label, CACHE_EXPECTED)


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.cache import CacheError
    from pipeline.signals import handle_signals, interrupted

    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        _check_paths(args)
        with handle_signals():
            return int(args.func(args))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: exit 130 or 143
        stop = interrupted(exc)
        fix = "; the marks are written whole or not at all: run it again" if getattr(args, "fix", False) else ""
        print(f"fame-cache {args.command}: {stop}{fix}", file=sys.stderr)
        return stop.exit_code
    except ValueError as exc:  # UsageError and other bad option values: one line, exit 2
        parser.exit(EXIT_USAGE, f"fame-cache {args.command}: error: {exc}\n")
    except (CacheError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

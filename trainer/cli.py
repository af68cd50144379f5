"""`fame-train`: pretrain, eval, export, plot, heatmap. Pretraining flags are generated from the fields of
TrainConfig and of its LoaderParams (trainer/flags.py), so the defaults live in one place."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipeline.signals import handle_signals, interrupted
from pipeline.usage import (
    DEVICES,
    STDOUT,
    CommandParser,
    UsageError,
    add_json,
    add_quiet,
    check_json_target,
    device_name,
    require_path,
    require_source,
    write_json,
)
from trainer.config import RESUME_MAY_CHANGE, TrainConfig
from trainer.evaluate import EvalSettings
from trainer.flags import add_config_flags, config_from, flag_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EVAL = EvalSettings()  # what eval and heatmap use where the run recorded nothing
# What --resume may change, as --help names it: the loader's speed options and RESUME_MAY_CHANGE, less `out` (the run
# itself) and `init` (read only by a new run).
_RESUMABLE_SHOWN = (
    *(k for k in RESUME_MAY_CHANGE if k not in ("out", "init")),
    "loader.num_workers",
    "loader.num_threads",
    "loader.prefetch",
)
CHECKPOINT_HELP = "a fame-train checkpoint (RUN_DIR/checkpoint.pt)"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="fame-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = sub.add_parser(
        "pretrain",
        help="MoCo pretraining on FAME views from a cache",
        description="MoCo pretraining on FAME views read from a cache. Every field of TrainConfig and of its "
        "LoaderParams is a flag; booleans take --x/--no-x. --resume continues the run in --out with the settings of "
        "its config.json: only the flags given change, and only "
        + ", ".join(flag_name(k) for k in _RESUMABLE_SHOWN)
        + " may.",
    )
    add_config_flags(pre)
    pre.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, with the settings of its config.json",
    )
    pre.add_argument(
        "--max-steps", type=int, default=None, metavar="N", help="stop after step N of the run (smoke tests)"
    )
    add_quiet(pre)

    ev = sub.add_parser("eval", help="linear probe, kNN, retrieval and the swapped-background test, backbone frozen")
    ev.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ev.add_argument(
        "--train",
        required=True,
        help="labelled training videos (required): folder-per-class, list or split file (UCF101 trainlistNN.txt; "
        "HMDB51 'DIR/*_test_split1.txt', quoted: its train videos; Kinetics train.csv)",
    )
    ev.add_argument(
        "--test",
        help="labelled test videos, as --train (HMDB51 split files: their test videos); default with --test-cache: "
        "the test cache's videos",
    )
    ev.add_argument(
        "--videos-root",
        metavar="DIR",
        help="folder that --train/--test list-file paths are relative to (default: each list's folder)",
    )
    ev.add_argument(
        "--protocol",
        default="linear,knn,retrieval",
        help="comma-separated, from linear, knn, retrieval, swapped (default %(default)s)",
    )
    ev.add_argument(
        "--test-cache",
        help="cache of the test videos, for --protocol swapped: each clip's foreground over another class's plate; "
        "the clips' shape (--size, --clip-len, --stride, --clips-per-video) defaults to this cache's",
    )
    ev.add_argument("--seed", type=int, default=0, help="picks each test video's background partner (%(default)s)")
    ev.add_argument(
        "--preview", metavar="PNG", help="with --test-cache: draw original / swapped / background-only clips here"
    )
    add_json(ev, "the metrics, the checkpoint, the video lists and the clip settings")
    ev.add_argument(
        "--confusion",
        metavar="PNG",
        help="draw the linear probe's confusion matrix and per-class top-1 here (default with --json FILE: "
        "FILE's name with _confusion.png, beside it)",
    )
    ev.add_argument("--finetune", action="store_true", help="also fine-tune the whole network and report top-1")
    ev.add_argument(
        "--clip-len",
        type=int,
        default=None,
        metavar="T",
        help=f"frames per clip (default: the test cache's, else the run's, else {EVAL.clip_len})",
    )
    ev.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help=f"source frames between a clip's frames (default: the test cache's, else the run's, else {EVAL.stride})",
    )
    ev.add_argument(
        "--clips-per-video",
        type=int,
        default=None,
        metavar="K",
        help=f"clips per video whose features are averaged (default: the test cache's, else {EVAL.clips_per_video})",
    )
    ev.add_argument(
        "--size",
        default=None,
        metavar="HxW",
        help="frame size the videos are resized to before the centre crop (default: the test cache's, else the "
        "run's, else {}x{})".format(*EVAL.size),
    )
    ev.add_argument(
        "--device",
        type=device_name,
        default="auto",
        metavar="{" + ",".join(DEVICES) + "}",
        help="where the backbone runs (default %(default)s: a GPU when torch finds one)",
    )
    add_quiet(ev)

    export = sub.add_parser(
        "export",
        help="write a checkpoint's backbone as a plain state dict (torchvision's layout for r3d18 and r2plus1d18)",
        description="Write the query encoder's backbone of CHECKPOINT as a plain state dict. For r2plus1d18 and "
        "r3d18 it is torchvision's r2plus1d_18 / r3d_18 layout: `model = r2plus1d_18(); model.fc = nn.Identity(); "
        "model.load_state_dict(torch.load(OUT), strict=True)`, or with --num-classes as it is.",
    )
    export.add_argument("checkpoint", help=CHECKPOINT_HELP)
    export.add_argument("--out", required=True, help="the state dict to write, e.g. backbone.pt (required)")
    export.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="also write a classifier fc of this many classes, initialised as torchvision does (normal, std 0.01; "
        "drawn from --seed), so r2plus1d_18(num_classes=N) loads the file as it is",
    )
    export.add_argument("--seed", type=int, default=0, help="draws the --num-classes classifier (%(default)s)")

    plot = sub.add_parser("plot", help="write RUN/curves.png from RUN/log.jsonl")
    plot.add_argument("run", help="a run folder of `fame-train pretrain` (holds log.jsonl)")

    heat = sub.add_parser("heatmap", help="the micro-bias salient map of a checkpoint over a video's frames")
    heat.add_argument("checkpoint", help=CHECKPOINT_HELP)
    heat.add_argument("video", help="a video file; its first clip is shown as evaluation prepares it")
    heat.add_argument("--out", required=True, help="PNG montage; .gif or .mp4 for an animation (required)")
    heat.add_argument(
        "--block",
        type=int,
        choices=range(5),  # what forward_blocks returns: the stem and four stages
        metavar="{0..4}",
        default=None,
        help="backbone block: 0 the stem, 1-4 the stages (default: the run's micro_block)",
    )
    heat.add_argument(
        "--clip-len", type=int, default=None, metavar="T", help=f"frames shown (default: the run's, or {EVAL.clip_len})"
    )
    heat.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help=f"source frames between frames shown (default: the run's, else {EVAL.stride})",
    )
    return parser


def _pretrain(args: argparse.Namespace) -> int:
    from trainer.train import check_run_folder, is_main_process, pretrain

    try:
        config = _resumed_config(args) if args.resume else config_from(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not config.cache:
        raise UsageError("--cache CACHE is required: a cache made by `fame-pipeline build`")
    require_path(config.cache, "--cache", "a cache made by `fame-pipeline build`")
    if not args.resume:
        require_path(config.init, "--init", "a state dict or checkpoint")
    require_path(config.videos, "--videos-root", "the folder of the cache's videos")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    check_run_folder(config.out, args.resume)
    final = pretrain(config, resume=args.resume, progress=not args.quiet, max_steps=args.max_steps)
    if is_main_process():  # under DDP every rank returns here; one prints
        print(f"checkpoint: {final}\nlog: {final.parent / 'log.jsonl'}\ncurves: {final.parent / 'curves.png'}")
    return EXIT_OK


def _resumed_config(args: argparse.Namespace) -> TrainConfig:
    """The run's own settings (RUN_DIR/config.json) with the flags given over them: flags need not be repeated, and
    a flag that would change what the run trains is refused, naming it."""
    out = Path(args.out or TrainConfig.out)
    path = out / "config.json"
    if not path.is_file():
        hint = "" if args.out else " (--out names the run folder; it defaults to runs/run)"
        raise UsageError(f"--resume: {path} not found: --out {out} holds no run to continue{hint}")
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--resume: {path} is not a run's config.json ({exc})") from exc
    config = config_from(args, dataclasses.replace(saved, out=str(out)))
    changed = saved.differences(config)
    if changed:
        shown = "; ".join(f"{flag_name(k)} {_show(b)} (the run has {_show(a)})" for k, (a, b) in changed.items())
        allowed = ", ".join(flag_name(k) for k in _RESUMABLE_SHOWN)
        raise UsageError(
            f"--resume: {shown}: a resumed run keeps its settings; only {allowed} may change. Start a new run with "
            "another --out to train with other settings"
        )
    if config.epochs < saved.epochs:
        raise UsageError(f"--resume: --epochs {config.epochs} is fewer than the run's {saved.epochs}: it may only grow")
    return config


def _show(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _eval(args: argparse.Namespace) -> int:
    from pipeline.params import parse_size
    from trainer.checkpoint import load_backbone
    from trainer.evaluate import PROTOCOLS, SWAPPED, evaluate, format_table

    require_path(args.checkpoint, "CHECKPOINT", CHECKPOINT_HELP)
    labelled = "a folder per class, a list or split file"
    require_source(args.train, "--train", labelled)  # a quoted glob of HMDB51 split files must match some
    require_source(args.test, "--test", labelled)
    check_json_target(args.json)
    require_path(args.test_cache, "--test-cache", "a cache made by `fame-pipeline build` of the test videos")
    require_path(args.videos_root, "--videos-root", "the folder the list files' paths are relative to")
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    allowed = (*PROTOCOLS, SWAPPED)
    if not protocols or set(protocols) - set(allowed):
        raise UsageError(f"--protocol {args.protocol!r}: choose a comma-separated list of {', '.join(allowed)}")
    if args.confusion and not {"linear", SWAPPED} & set(protocols):
        raise UsageError(f"--confusion draws the linear probe's matrix: add linear to --protocol {args.protocol!r}")
    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from exc
    backbone, config = load_backbone(args.checkpoint)
    given = {"clip_len": args.clip_len, "stride": args.stride, "clips_per_video": args.clips_per_video, "size": size}
    swap_set = None
    if args.test_cache:
        from pipeline.swap import draw_swaps

        swap_set = draw_swaps(args.test_cache, seed=args.seed)
        built = {"clip_len": swap_set.clip_len, "stride": swap_set.stride, "size": swap_set.size}
        built["clips_per_video"] = swap_set.clips_per_video
        given = {k: built[k] if v is None else v for k, v in given.items()}
    settings = EvalSettings.for_run(config, **given)
    metrics = evaluate(
        backbone,
        args.train,
        args.test,
        protocols,
        settings,
        _torch_device(args.device),
        args.finetune,
        swap_set,
        videos_root=args.videos_root,
        progress=not args.quiet,
    )
    if args.preview and swap_set is not None:
        from pipeline.swap_export import render_preview

        print(f"preview: {render_preview(swap_set, args.preview)}", file=sys.stderr if args.json == STDOUT else None)
    if args.json:
        write_json({**metrics, "setup": _eval_setup(args, protocols, settings)}, args.json)
    shown = sys.stderr if args.json == STDOUT else None
    picture = confusion_path(args.confusion, args.json)
    if picture and "linear_confusion" in metrics:
        from trainer.plot import plot_confusion

        title = f"{Path(args.checkpoint).parent.name}: linear top-1 {100 * metrics['linear_top1']:.1f}%"
        print(f"confusion: {plot_confusion(metrics['linear_confusion'], picture, title)}", file=shown)
    if args.json != STDOUT:
        print(format_table(metrics))
        if args.json:
            print(f"metrics: {args.json}")
    return EXIT_OK


def confusion_path(given: str | None, json_target: str | None) -> str | None:
    """Where eval draws the confusion matrix: --confusion, else beside a --json FILE (metrics.json ->
    metrics_confusion.png), else nowhere."""
    if given:
        return given
    if json_target and json_target != STDOUT:
        target = Path(json_target)
        return str(target.with_name(f"{target.stem}_confusion.png"))
    return None


def _torch_device(name: str) -> str:
    """--device as torch names it: auto picks the GPU when torch finds one; gpu is cuda."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name == "gpu" else name


def _eval_setup(args: argparse.Namespace, protocols: tuple[str, ...], settings: EvalSettings) -> dict:
    """What metrics.json was measured on: the checkpoint, the video lists, the clips, so a number can be traced."""

    def where(path: str | None) -> str | None:
        return path if path is None or "://" in path else str(Path(path).resolve())

    return {
        "checkpoint": where(args.checkpoint),
        "train": where(args.train),
        "test": where(args.test),
        "test_cache": where(args.test_cache),
        "videos_root": where(args.videos_root),
        "protocols": list(protocols),
        "seed": args.seed,
        "device": _torch_device(args.device),
        **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()},
    }


def _export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import export_backbone

    require_path(args.checkpoint, "CHECKPOINT", CHECKPOINT_HELP)
    backbone = export_backbone(args.checkpoint, args.out, num_classes=args.num_classes, seed=args.seed)
    print(f"{args.out}: the {backbone} backbone of {args.checkpoint}")
    return EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from trainer.plot import plot_run

    require_path(args.run, "RUN", "a run folder of `fame-train pretrain`")
    print(plot_run(args.run))
    return EXIT_OK


def _heatmap(args: argparse.Namespace) -> int:
    from trainer.heatmap import write_heatmap

    require_path(args.checkpoint, "CHECKPOINT", CHECKPOINT_HELP)
    require_path(args.video, "VIDEO", "a video file")
    print(
        write_heatmap(
            args.checkpoint, args.video, args.out, block=args.block, clip_len=args.clip_len, stride=args.stride
        )
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 an input that exists but cannot be used or a failed step, 2 bad usage (a bad option
    value, a path that names nothing, a run folder that holds a run without --resume), 130 / 143 Ctrl-C / SIGTERM."""
    from pipeline.cache import CacheError
    from pipeline.video import VideoError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "eval" and not (args.test or args.test_cache):
        parser.error("eval: give --test TEST, or --test-cache CACHE with --protocol swapped")
    if args.command == "eval" and args.preview and not args.test_cache:
        parser.error("eval: --preview draws the swapped test: it needs --test-cache CACHE")
    handlers = {"pretrain": _pretrain, "eval": _eval, "export": _export, "plot": _plot, "heatmap": _heatmap}
    try:
        with handle_signals():
            return handlers[args.command](args)
    except UsageError as exc:  # the command must change: one line, no usage, no traceback
        print(f"fame-train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, RuntimeError, CacheError, VideoError) as exc:
        print(f"fame-train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: exit 130 or 143
        stop = interrupted(exc)
        out = getattr(args, "out", None) or TrainConfig.out
        hint = f"; continue with `fame-train pretrain --out {out} --resume`" if args.command == "pretrain" else ""
        print(f"fame-train {args.command}: {stop}{hint}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())

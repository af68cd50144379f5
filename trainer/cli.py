"""`fame-train`: pretrain, eval, export, plot, heatmap. Pretraining flags are generated from the fields of
TrainConfig and of its LoaderParams, so the defaults live in one place (`--batch-size` fills `batch_size`,
`--mask-mode` the loader's `mask_mode`; booleans take `--x/--no-x`, e.g. `--no-fame`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from pipeline.loader.params import BACKGROUNDS, KEY_STARTS, MASK_MODES, ON_DAMAGE, QUERY_CROPS, LoaderParams
from pipeline.signals import handle_signals, interrupted
from pipeline.usage import UsageError, require_path
from trainer.config import TrainConfig
from trainer.evaluate import EvalSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOADER_DEST = "loader__"  # argparse dest prefix of the loader's flags
# Set through other flags: the loader's own, --semi-negatives, --background-negatives.
DERIVED = {"loader", "return_partner", "return_background"}
CHOICES = {
    "background": BACKGROUNDS,
    "mask_mode": MASK_MODES,
    "key_start": KEY_STARTS,
    "on_damage": ON_DAMAGE,
    "query_crop": QUERY_CROPS,
}
ALIASES = {"num_workers": ["--workers"], "videos": ["--videos-root"]}  # --videos-root: the name build uses
# What a flag means, where its name does not say it; argparse's help adds the default.
HELP = {
    "init": "a state dict the backbone starts from: torchvision's r2plus1d_18/r3d_18 weights (fc left out), "
    "a `fame-train export` or a checkpoint; ",
    "videos": "where the cache's videos are, when not at its recorded source root; ",
}
EVAL = EvalSettings()  # what eval and heatmap use where the run recorded nothing


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, defaults: object, dest_prefix: str = "") -> None:
    """One flag per field of `cls`, typed from its hints; unset flags stay None so the dataclass's default holds."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in DERIVED:
            continue
        flags = ["--" + field.name.replace("_", "-"), *ALIASES.get(field.name, [])]
        kwargs = {"dest": dest_prefix + field.name, "default": None}
        metavar = field.name.upper()
        hint = hints[field.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
        default = getattr(defaults, field.name)
        help_text = HELP.get(field.name, "") + f"default: {default}"
        if base is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
        elif typing.get_origin(base) is tuple:
            items = typing.get_args(base)
            parser.add_argument(*flags, nargs=len(items), type=items[0], metavar=metavar, help=help_text, **kwargs)
        else:
            choices = CHOICES.get(field.name)
            metavar = None if choices else metavar
            parser.add_argument(*flags, type=base, choices=choices, metavar=metavar, help=help_text, **kwargs)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    _add_dataclass_flags(parser, TrainConfig, TrainConfig())
    _add_dataclass_flags(parser.add_argument_group("loader"), LoaderParams, LoaderParams(), LOADER_DEST)


def _config_from(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig (and its LoaderParams) from the flags given; the dataclasses' defaults for the rest."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    loader = {k[len(LOADER_DEST) :]: v for k, v in given.items() if k.startswith(LOADER_DEST)}
    values = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given}
    return TrainConfig(**values, loader=LoaderParams.from_dict(loader))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fame-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="MoCo pretraining on FAME views from a cache")
    _add_config_flags(pre)
    pre.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly")
    pre.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")

    ev = sub.add_parser("eval", help="linear probe, kNN, retrieval and the swapped-background test, backbone frozen")
    ev.add_argument("checkpoint")
    ev.add_argument(
        "--train",
        required=True,
        help="labelled training videos: folder-per-class, list or split file (UCF101 trainlistNN.txt; HMDB51 "
        "'DIR/*_test_split1.txt', quoted: its train videos; Kinetics train.csv)",
    )
    ev.add_argument(
        "--test",
        help="labelled test videos, as --train (HMDB51 split files: their test videos); default with --test-cache: "
        "the test cache's videos",
    )
    ev.add_argument(
        "--videos-root",
        help="folder that --train/--test list-file paths are relative to (default: each list's folder)",
    )
    ev.add_argument(
        "--protocol", default="linear,knn,retrieval", help="comma-separated: linear,knn,retrieval,swapped (%(default)s)"
    )
    ev.add_argument(
        "--test-cache",
        help="cache of the test videos, for --protocol swapped: each clip's foreground over another class's plate; "
        "the clips' shape (--size, --clip-len, --stride, --clips-per-video) defaults to this cache's",
    )
    ev.add_argument("--seed", type=int, default=0, help="picks each test video's background partner (%(default)s)")
    ev.add_argument("--preview", help="with --test-cache: draw original / swapped / background-only clips here")
    ev.add_argument("--json", help="write the metrics here")
    ev.add_argument("--finetune", action="store_true", help="also fine-tune the whole network and report top-1")
    ev.add_argument(
        "--clip-len", type=int, default=None, help=f"default: the test cache's, the run's, else {EVAL.clip_len}"
    )
    ev.add_argument(
        "--stride", type=int, default=None, help=f"default: the test cache's, the run's, else {EVAL.stride}"
    )
    ev.add_argument(
        "--clips-per-video", type=int, default=None, help=f"default: the test cache's, else {EVAL.clips_per_video}"
    )
    ev.add_argument(
        "--size",
        default=None,
        help="HxW the frames are resized to before the centre crop (default: the test cache's, the run's, else "
        "{}x{})".format(*EVAL.size),
    )
    ev.add_argument("--device", default="cpu")

    export = sub.add_parser(
        "export",
        help="write a checkpoint's backbone as a plain state dict (torchvision's layout for r3d18 and r2plus1d18)",
        description="Write the query encoder's backbone of CHECKPOINT as a plain state dict. For r2plus1d18 and "
        "r3d18 it is torchvision's r2plus1d_18 / r3d_18 layout: `model = r2plus1d_18(); model.fc = nn.Identity(); "
        "model.load_state_dict(torch.load(OUT), strict=True)`, or with --num-classes as it is.",
    )
    export.add_argument("checkpoint", help="a fame-train checkpoint (RUN/checkpoint.pt)")
    export.add_argument("--out", required=True, help="the state dict to write, e.g. backbone.pt")
    export.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="also write a classifier fc of this many classes, initialised as torchvision does (normal, std 0.01; "
        "drawn from --seed), so r2plus1d_18(num_classes=N) loads the file as it is",
    )
    export.add_argument("--seed", type=int, default=0, help="draws the --num-classes classifier (%(default)s)")

    plot = sub.add_parser("plot", help="write RUN/curves.png from RUN/log.jsonl")
    plot.add_argument("run")

    heat = sub.add_parser("heatmap", help="the micro-bias salient map of a checkpoint over a video's frames")
    heat.add_argument("checkpoint")
    heat.add_argument("video")
    heat.add_argument("--out", required=True, help="PNG montage; .gif or .mp4 for an animation")
    heat.add_argument(
        "--block",
        type=int,
        choices=range(5),  # what forward_blocks returns: the stem and four stages
        metavar="{0..4}",
        default=None,
        help="backbone block: 0 the stem, 1-4 the stages (default: the run's micro_block)",
    )
    heat.add_argument("--clip-len", type=int, default=None, help=f"default: the run's, else {EVAL.clip_len}")
    heat.add_argument("--stride", type=int, default=None, help=f"default: the run's, else {EVAL.stride}")
    return parser


def _pretrain(args: argparse.Namespace) -> int:
    from trainer.train import check_run_folder, pretrain

    try:
        config = _config_from(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not config.cache:
        raise UsageError("--cache CACHE is required: a cache made by `fame-pipeline build`")
    require_path(config.cache, "--cache", "a cache made by `fame-pipeline build`")
    require_path(config.init, "--init", "a state dict or checkpoint")
    require_path(config.videos, "--videos-root", "the folder of the cache's videos")
    check_run_folder(config.out, args.resume)
    final = pretrain(config, resume=args.resume, max_steps=args.max_steps)
    print(f"checkpoint: {final}\nlog: {final.parent / 'log.jsonl'}\ncurves: {final.parent / 'curves.png'}")
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from pipeline.params import parse_size
    from trainer.checkpoint import load_backbone
    from trainer.evaluate import PROTOCOLS, SWAPPED, evaluate, format_table, write_json

    require_path(args.checkpoint, "CHECKPOINT", "a fame-train checkpoint (RUN/checkpoint.pt)")
    labelled = "a folder per class, a list or split file"
    if "*" not in args.train:  # a quoted glob of HMDB51 split files is expanded by the reader
        require_path(args.train, "--train", labelled)
    if args.test and "*" not in args.test:
        require_path(args.test, "--test", labelled)
    require_path(args.test_cache, "--test-cache", "a cache made by `fame-pipeline build` of the test videos")
    require_path(args.videos_root, "--videos-root", "the folder the list files' paths are relative to")
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    allowed = (*PROTOCOLS, SWAPPED)
    if not protocols or set(protocols) - set(allowed):
        raise UsageError(f"--protocol {args.protocol!r}: choose a comma-separated list of {', '.join(allowed)}")
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
        args.device,
        args.finetune,
        swap_set,
        videos_root=args.videos_root,
    )
    if args.preview and swap_set is not None:
        from pipeline.swap_export import render_preview

        print(f"preview: {render_preview(swap_set, args.preview)}")
    print(format_table(metrics))
    if args.json:
        write_json(metrics, args.json)
        print(f"metrics: {args.json}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import export_backbone

    require_path(args.checkpoint, "CHECKPOINT", "a fame-train checkpoint (RUN/checkpoint.pt)")
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

    require_path(args.checkpoint, "CHECKPOINT", "a fame-train checkpoint (RUN/checkpoint.pt)")
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
        hint = "; run the same command with --resume to continue" if args.command == "pretrain" else ""
        print(f"fame-train {args.command}: {stop}{hint}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""`fame-train`: pretrain, eval, plot, heatmap. Pretraining flags are generated from TrainConfig's fields, so the
defaults live in one place (`--batch-size` fills `batch_size`; booleans take `--x/--no-x`, e.g. `--no-fame`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from trainer.config import TrainConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(base) is tuple:
            parser.add_argument(flag, nargs=2, type=typing.get_args(base)[0], default=None, metavar=("LOW", "HIGH"))
        else:
            parser.add_argument(flag, type=base, default=None, help=f"default: {field.default}")


def _config_from(args: argparse.Namespace) -> TrainConfig:
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None
    }
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fame-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="MoCo pretraining on FAME views from a cache")
    _add_config_flags(pre)
    pre.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly")
    pre.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")

    ev = sub.add_parser("eval", help="linear probe, kNN and retrieval with a frozen backbone")
    ev.add_argument("checkpoint")
    ev.add_argument("--train", required=True, help="labelled training videos: folder-per-class or split file")
    ev.add_argument("--test", required=True, help="labelled test videos")
    ev.add_argument("--protocol", default="linear,knn,retrieval", help="comma-separated: linear,knn,retrieval")
    ev.add_argument("--json", help="write the metrics here")
    ev.add_argument("--finetune", action="store_true", help="also fine-tune the whole network and report top-1")
    ev.add_argument("--clip-len", type=int, default=16)
    ev.add_argument("--stride", type=int, default=2)
    ev.add_argument("--clips-per-video", type=int, default=4)
    ev.add_argument("--size", default="128x171", help="HxW the frames are resized to before the centre crop")
    ev.add_argument("--device", default="cpu")

    plot = sub.add_parser("plot", help="write RUN/curves.png from RUN/log.jsonl")
    plot.add_argument("run")

    heat = sub.add_parser("heatmap", help="the micro-bias salient map of a checkpoint over a video's frames")
    heat.add_argument("checkpoint")
    heat.add_argument("video")
    heat.add_argument("--out", required=True, help="PNG montage; .gif or .mp4 for an animation")
    heat.add_argument("--block", type=int, default=None, help="backbone block (default: the run's micro_block)")
    heat.add_argument("--clip-len", type=int, default=16)
    heat.add_argument("--stride", type=int, default=2)
    return parser


def _pretrain(args) -> int:
    from trainer.train import pretrain

    config = _config_from(args)
    if not config.cache:
        raise ValueError("--cache is required")
    final = pretrain(config, resume=args.resume, max_steps=args.max_steps)
    print(f"checkpoint: {final}\nlog: {final.parent / 'log.jsonl'}\ncurves: {final.parent / 'curves.png'}")
    return EXIT_OK


def _eval(args) -> int:
    from pipeline.params import parse_size
    from trainer.checkpoint import load_backbone
    from trainer.evaluate import EvalSettings, evaluate, format_table, write_json

    backbone, config = load_backbone(args.checkpoint)
    settings = EvalSettings(
        clip_len=args.clip_len,
        stride=args.stride,
        clips_per_video=args.clips_per_video,
        size=parse_size(args.size),
        crop=config.crop,
    )
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    metrics = evaluate(backbone, args.train, args.test, protocols, settings, args.device, args.finetune)
    print(format_table(metrics))
    if args.json:
        write_json(metrics, args.json)
        print(f"metrics: {args.json}")
    return EXIT_OK


def _plot(args) -> int:
    from trainer.plot import plot_run

    print(plot_run(args.run))
    return EXIT_OK


def _heatmap(args) -> int:
    from trainer.heatmap import write_heatmap

    print(
        write_heatmap(
            args.checkpoint, args.video, args.out, block=args.block, clip_len=args.clip_len, stride=args.stride
        )
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"pretrain": _pretrain, "eval": _eval, "plot": _plot, "heatmap": _heatmap}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"fame-train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

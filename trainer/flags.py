"""`pretrain`'s flags, generated from the fields of TrainConfig and of its LoaderParams, so the defaults live in one
place (`--batch-size` fills `batch_size`, `--mask-mode` the loader's `mask_mode`; booleans take `--x/--no-x`). What
each flag means is said here, in HELP: a field without a help text fails the test that walks every parser."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from pipeline.loader.params import BACKGROUNDS, KEY_STARTS, MASK_MODES, ON_DAMAGE, QUERY_CROPS, LoaderParams
from pipeline.usage import DEVICES, device_name
from trainer.backbones import BACKBONES
from trainer.config import OPTIMIZERS, TrainConfig

LOADER_DEST = "loader__"  # argparse dest prefix of the loader's flags
# Set through other flags: the loader's own, --semi-negatives, --background-negatives.
DERIVED = {"loader", "return_partner", "return_background"}
CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": tuple(BACKBONES),
    "optimizer": OPTIMIZERS,
    "background": BACKGROUNDS,
    "mask_mode": MASK_MODES,
    "key_start": KEY_STARTS,
    "on_damage": ON_DAMAGE,
    "query_crop": QUERY_CROPS,
}
# The name shown in --help, where it is not the field's own: one name per concept across the command lines.
NAMES = {"num_workers": "--workers", "videos": "--videos-root"}
# Older spellings, still read, not shown.
HIDDEN = {"num_workers": ["--num-workers"], "videos": ["--videos"]}
METAVARS = {"cache": "CACHE", "out": "RUN_DIR", "videos": "DIR", "init": "STATE_DICT", "num_workers": "N"}

HELP = {
    # TrainConfig
    "cache": "cache made by `fame-pipeline build` to train on (required for a new run; --resume reads it from "
    "RUN_DIR/config.json)",
    "out": "run folder: config.json, log.jsonl, checkpoint.pt, curves.png",
    "videos": "where the cache's videos are, when not at its recorded source root",
    "backbone": "video network: r2plus1d18 / r3d18 (torchvision's layouts) or small (a CPU-sized 3D CNN)",
    "init": "a state dict the backbone starts from: torchvision's r2plus1d_18/r3d_18 weights (fc left out), "
    "a `fame-train export` or a checkpoint",
    "epochs": "passes over the cache's videos; with --resume a larger number extends the run",
    "batch_size": "clips per step (per process under DDP)",
    "lr": "peak SGD learning rate, after warm-up, then cosine decay to zero",
    "optimizer": "sgd (with --momentum-sgd, MoCo's) or adamw",
    "momentum_sgd": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "dim": "size of the MoCo embedding (the MLP head's output)",
    "queue_size": "negative keys kept in MoCo's queue",
    "moco_momentum": "momentum of the key encoder's moving average",
    "temperature": "softmax temperature of the contrastive loss",
    "symmetric": "also use the key view as a query (symmetric loss)",
    "bn_splits": "batch-norm statistics per group of the batch (single-process MoCo's split-BN)",
    "shuffle_bn": "encode keys in a shuffled order across BN groups and DDP ranks (MoCo's shuffle-BN)",
    "fame": "merge each query's foreground onto another clip's background (--no-fame: plain MoCo on the same data)",
    "semi_negatives": "the partner (background) video as an extra, hard negative",
    "background_negatives": "the merged query's own background alone as an extra negative",
    "still_negatives": "each view frozen (its middle frame repeated) as an extra negative: the look without the motion",
    "micro": "add the micro-bias term of the dual loss",
    "micro_weight": "weight of the micro-bias term",
    "micro_block": "backbone block the micro-bias map is taken from (0 the stem, 1-4 the stages)",
    "seed": "seeds the model's start and the loader's draws: the same seed gives the same run",
    "checkpoint_every": "steps between checkpoints (one is also saved at the end and on Ctrl-C)",
    "device": f"where to train: {', '.join(DEVICES)} (auto: a GPU when torch finds one)",
    "amp": "bf16 autocast on GPU",
    "deterministic": "torch's deterministic algorithms (slower; bitwise-repeatable runs)",
    "tensorboard": "also write the log's scalars as TensorBoard events in RUN_DIR/tensorboard/",
    # LoaderParams
    "crop": "output height = width of both views, in pixels",
    "crop_scale": "area fraction range of the random resized crop",
    "crop_ratio": "aspect ratio range of the random resized crop",
    "query_crop": "where the query's crop lies: random, or mover (centred on its clip's cached mask)",
    "query_crop_scale": "the query's own crop area range (unset: --crop-scale)",
    "fame_p": "probability that a query is merged (FAME view)",
    "background": "what the foreground is pasted over: the partner's plate, or its raw frames (the paper's mode)",
    "mask_mode": "how the cached soft mask becomes the query's alpha: soft, threshold (--threshold) or area (--beta)",
    "threshold": "mask value (0-255) at or above which a pixel is foreground, for --mask-mode threshold",
    "beta": "fraction of the crop's pixels kept from the query's own clip, for --mask-mode area",
    "own_floor": "least fraction of every merged frame taken from its own clip (0: off)",
    "own_margin": (
        "every merged frame keeps at least its mask's share of the crop plus this fraction "
        "(0: off; not with --mask-mode area, whose share is --beta)"
    ),
    "key_start": (
        "where the key clip starts: any frame of the video, another of the cache's clips (cached), "
        "the query's own clip (same), or auto: same with FAME, any for plain MoCo"
    ),
    "key_merge": "merge the key too when it starts on the query's clip: its mover over a third video's background",
    "on_damage": "a damaged cached clip or undecodable video: skip it (counted, warned once) or stop",
    "use_cache": "read cached masks and plates (--no-use-cache: compute fame masks per sample, as the original code)",
    "augment": "MoCo v2 colour augmentations (jitter, grayscale, blur)",
    "jitter": "colour jitter strengths: brightness, contrast, saturation, hue",
    "jitter_p": "probability of colour jitter",
    "grayscale_p": "probability of grayscale",
    "blur_p": "probability of Gaussian blur",
    "blur_sigma": "blur sigma range, in pixels of a 224-pixel crop (scaled to --crop)",
    "num_workers": "decoding processes of the loader (DALI's parallel external source; 0: decode in the main process)",
    "num_threads": "DALI operator threads",
    "prefetch": "batches prepared ahead",
    "clip_len": "refuse a cache whose clip length differs (unset: any)",
    "size": "refuse a cache whose frame size (H W) differs (unset: any)",
}


def _base_type(hint: Any) -> Any:
    """`int` for `int | None`, the hint itself otherwise."""
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "unset" if value is None else str(value)


def add_dataclass_flags(parser: argparse._ActionsContainer, cls: type, defaults: object, dest_prefix: str = "") -> None:
    """One flag per field of `cls`, typed from its hints; unset flags stay None, so the dataclass's default holds
    (and `--resume` can tell a flag given from one left out)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in DERIVED:
            continue
        flag = NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": dest_prefix + field.name, "default": None}
        base = _base_type(hints[field.name])
        default = getattr(defaults, field.name)
        kwargs["help"] = HELP.get(field.name, "") + ("" if default == "" else f" (default {_show(default)})")
        choices = CHOICES.get(field.name)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            items = typing.get_args(base)
            kwargs.update(nargs=len(items), type=items[0], metavar=field.name.upper())
        elif field.name == "device":
            kwargs.update(type=device_name, metavar="{" + ",".join(DEVICES) + "}")
        else:
            metavar = None if choices else METAVARS.get(field.name, field.name.upper())
            kwargs.update(type=base, choices=choices, metavar=metavar)
        parser.add_argument(flag, **kwargs)
        for hidden in HIDDEN.get(field.name, []):
            extra = {k: v for k, v in kwargs.items() if k not in ("help", "dest", "default", "metavar")}
            parser.add_argument(hidden, dest=kwargs["dest"], default=None, help=argparse.SUPPRESS, **extra)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    add_dataclass_flags(parser, TrainConfig, TrainConfig())
    add_dataclass_flags(parser.add_argument_group("loader"), LoaderParams, LoaderParams(), LOADER_DEST)


def given_values(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The TrainConfig fields and the loader fields set on the command line (the others are None)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    loader = {k[len(LOADER_DEST) :]: v for k, v in given.items() if k.startswith(LOADER_DEST)}
    values = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given}
    return values, loader


def config_from(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """TrainConfig (and its LoaderParams) from the flags given over `base` (a resumed run's config.json), or over
    the dataclasses' defaults."""
    values, loader = given_values(args)
    if base is None:
        return TrainConfig(**values, loader=LoaderParams.from_dict(loader))
    merged_loader = {**base.loader.to_dict(), **loader}
    return dataclasses.replace(base, **values, loader=LoaderParams.from_dict(merged_loader))


def flag_name(key: str) -> str:
    """The command-line flag of a `TrainConfig.differences` key (`loader.crop` -> `--crop`)."""
    name = key.removeprefix("loader.")
    return NAMES.get(name, "--" + name.replace("_", "-"))

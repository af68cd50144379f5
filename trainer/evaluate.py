"""Evaluation of a frozen backbone on a labelled video set: linear probe, kNN, retrieval, optional fine-tuning, and
the swapped-background test.

Features: several evenly spaced clips per video, each resized whole, centre-cropped and normalised, through the
backbone; the clip features of a video are averaged. Test videos are classified (probe, kNN) and retrieve training
videos (R@k: one of the k nearest training videos has the query's class). The swapped test (`pipeline.swap`) scores
the same linear probe on each test video's clips pasted over another class's plates, and on its plates alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.loader.params import LoaderParams
from pipeline.normalise import IMAGENET_MEAN, IMAGENET_STD
from pipeline.params import BuildParams
from pipeline.plan import clip_frames
from pipeline.sources import Source, SourceError, check_videos_exist, list_source
from pipeline.swap import SwapSet, read_swapped
from pipeline.video import VideoError, decode
from trainer.config import TrainConfig

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
PROTOCOLS = ("linear", "knn", "retrieval")  # the default set
SWAPPED = "swapped"  # needs a test cache: `evaluate(..., swap_set=draw_swaps(CACHE))`
RECALL_AT = (1, 5, 10, 20)


class EvalError(ValueError):
    """An evaluation that cannot run, with the reason."""


@dataclass(frozen=True)
class EvalSettings:
    """How evaluation and the heat map prepare a video's clips: the one place their defaults live. The clip's shape
    defaults to the build's and the crop to the loader's; `for_run` takes them from a checkpoint's run."""

    clip_len: int = BuildParams.clip_len
    stride: int = BuildParams.stride
    clips_per_video: int = 4
    size: tuple[int, int] = BuildParams.size
    crop: int = LoaderParams.crop
    knn_k: int = 20
    batch_size: int = 8

    @classmethod
    def for_run(cls, config: TrainConfig, **given: Any) -> EvalSettings:
        """The clips a run trained on: its crop, and the frame size, clip length and stride of its cache (while that
        still opens; else the size and clip length its loader expected). Values in `given` win; None leaves one unset.
        """
        run: dict[str, Any] = {"size": config.loader.size, "clip_len": config.loader.clip_len}
        built = _built_with(config.cache)
        if built is not None:
            run = {"size": built.size, "clip_len": built.clip_len, "stride": built.stride}
        run["crop"] = config.loader.crop
        return cls(**{k: v for k, v in (*run.items(), *given.items()) if v is not None})


def _built_with(cache: str) -> BuildParams | None:
    """The build parameters of a run's cache, or None when it no longer opens (moved, deleted, unreachable)."""
    if not cache:
        return None
    from pipeline.cache import Cache, CacheError

    try:
        return Cache.open(cache).params
    except (CacheError, OSError, KeyError, ValueError):
        return None


def centre_crop(frames: np.ndarray, crop: int) -> np.ndarray:
    """The central crop x crop window of (..., H, W, 3) frames."""
    h, w = frames.shape[-3:-1]
    top, left = (h - crop) // 2, (w - crop) // 2
    return frames[..., top : top + crop, left : left + crop, :]


def to_input(clips: np.ndarray) -> torch.Tensor:
    """(..., T, H, W, 3) uint8 -> (..., 3, T, H, W) float, normalised as the loader normalises training clips."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -4).float() / 255.0
    return (x - MEAN) / STD


def video_clips(path: str, settings: EvalSettings) -> torch.Tensor:
    """(K, 3, T, crop, crop) normalised clips of one video, decoded once."""
    plan = BuildParams(
        size=settings.size, clip_len=settings.clip_len, stride=settings.stride, clips_per_video=settings.clips_per_video
    )
    frames, info = decode(path, size=settings.size)
    clips = frames[clip_frames(info.n_frames, plan)]  # (K, T, H, W, 3)
    return to_input(centre_crop(clips, settings.crop))


def video_feature(backbone: torch.nn.Module, clips: torch.Tensor, settings: EvalSettings, device) -> torch.Tensor:
    """(D,) L2-normalised mean feature of one video's (K, 3, T, crop, crop) clips."""
    out = torch.cat([backbone(b.to(device)) for b in clips.split(settings.batch_size)])
    return F.normalize(out.mean(0), dim=0).cpu()


@torch.no_grad()
def extract(
    backbone: torch.nn.Module,
    source: Source,
    settings: EvalSettings,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """(N, D) L2-normalised video features, their labels, and the videos skipped (with reasons)."""
    feats, labels, skipped = [], [], []
    for entry in tqdm(source.entries, desc=desc, unit="video", leave=False, disable=not progress):
        try:
            clips = video_clips(source.full_path(entry.path), settings)
        except VideoError as exc:
            skipped.append(str(exc))
            continue
        feats.append(video_feature(backbone, clips, settings, device))
        labels.append(entry.label)
    if not feats:
        raise EvalError(f"{source.root}: no video could be read ({len(skipped)} skipped)")
    return torch.stack(feats), np.array(labels, dtype=object), skipped


@dataclass(frozen=True)
class SwappedFeatures:
    """Per test video of a swapped set: features of its swapped clips and of its plates alone, and both labels."""

    swapped: torch.Tensor  # (N, D)
    background: torch.Tensor  # (N, D)
    labels: np.ndarray  # (N,) the video's own class
    background_labels: np.ndarray  # (N,) the class of the video that gave the plates


@torch.no_grad()
def extract_swapped(
    backbone: torch.nn.Module, swap_set: SwapSet, settings: EvalSettings, device, progress: bool = True
) -> SwappedFeatures:
    """Features of the swapped set, made as `extract` makes a video's: its clips centre-cropped, through the
    backbone, averaged and normalised; one swapped and one background-only feature per test video."""

    def feature(arrays: list[np.ndarray]) -> torch.Tensor:
        return video_feature(backbone, to_input(centre_crop(np.stack(arrays), settings.crop)), settings, device)

    swapped, background, labels, background_labels = [], [], [], []
    clip_sets = read_swapped(swap_set)
    for clips in tqdm(clip_sets, total=swap_set.n_videos, desc="swapped features", leave=False, disable=not progress):
        swapped.append(feature([c.swapped for c in clips]))
        background.append(feature([c.background for c in clips]))
        labels.append(clips[0].pair.label)
        background_labels.append(clips[0].pair.background_label)
    return SwappedFeatures(
        torch.stack(swapped),
        torch.stack(background),
        np.array(labels, dtype=object),
        np.array(background_labels, dtype=object),
    )


def check_swap_settings(swap_set: SwapSet, settings: EvalSettings) -> None:
    """Refuse a test cache whose clips are not the shape the probe's features are made at, naming the cache."""
    asked = (settings.clip_len, tuple(settings.size), settings.stride)
    built = (swap_set.clip_len, tuple(swap_set.size), swap_set.stride)
    if asked != built:
        raise EvalError(
            f"{swap_set.url}: the test cache holds clips of {built[0]} frames at stride {built[2]}, "
            f"{built[1][0]}x{built[1][1]}, but features are made of {asked[0]} frames at stride {asked[2]}, "
            f"{asked[1][0]}x{asked[1][1]}: leave --clip-len, --stride and --size unset (they default to the test "
            "cache's) or use a test cache built with these"
        )
    if settings.crop > min(swap_set.size):
        h, w = swap_set.size
        raise EvalError(f"{swap_set.url}: the test cache's frames ({h}x{w}) are smaller than the crop {settings.crop}")


def _encode_labels(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(set(train.tolist()))
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(test.tolist()) - set(classes))
    if unknown:
        raise EvalError(f"test classes not in the training set: {unknown[:5]}")
    return (torch.tensor([lookup[c] for c in train]), torch.tensor([lookup[c] for c in test]), classes)


def fit_probe(train_x, train_y, epochs: int = 300, lr: float = 0.1) -> torch.nn.Linear:
    """A softmax classifier trained on frozen features (full-batch Adam, weight decay), seeded: one probe, fitted
    once, scores the unmodified and the swapped test alike."""
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        optimizer.step()
    return head


@torch.no_grad()
def top1(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(1) == y).float().mean())


@torch.no_grad()
def confusion(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """The probe's confusion matrix (rows: true class, columns: predicted; counts of test videos) and each class's
    top-1, which an overall top-1 hides: a probe can be right on the classes the scene gives away and nowhere else."""
    n = len(classes)
    matrix = torch.bincount(y * n + head(x).argmax(1), minlength=n * n).reshape(n, n)
    totals = matrix.sum(1)
    per_class = {c: float(matrix[i, i] / totals[i]) if totals[i] else None for i, c in enumerate(classes)}
    return {"classes": classes, "matrix": matrix.tolist(), "per_class_top1": per_class}


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 300, lr: float = 0.1) -> float:
    """Top-1 of a linear probe fitted on the training features (`fit_probe`)."""
    return top1(fit_probe(train_x, train_y, epochs, lr), test_x, test_y)


def knn(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 of a similarity-weighted vote over the k nearest training videos (cosine)."""
    sims = test_x @ train_x.T
    k = min(k, train_x.shape[0])
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(test_x.shape[0], int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


def retrieval(train_x, train_y, test_x, test_y) -> dict[str, float]:
    """R@k: the fraction of test videos with a same-class training video among their k nearest."""
    order = (test_x @ train_x.T).argsort(dim=1, descending=True)
    hits = train_y[order] == test_y[:, None]
    return {f"retrieval_r{k}": float(hits[:, :k].any(1).float().mean()) for k in RECALL_AT}


def finetune(
    backbone, train: Source, test: Source, settings: EvalSettings, device, epochs: int = 5, lr: float = 0.01
) -> float:
    """Top-1 after training the whole network (backbone + linear head) on the training videos' clips."""
    train_clips = [(video_clips(train.full_path(e.path), settings), e.label) for e in train.entries]
    classes = sorted({label for _, label in train_clips})
    lookup = {c: i for i, c in enumerate(classes)}
    x = torch.cat([c for c, _ in train_clips])
    y = torch.cat([torch.full((len(c),), lookup[label]) for c, label in train_clips])
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.out_dim, len(classes))).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(settings.batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx].to(device)), y[idx].to(device)).backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for entry in test.entries:
            clips = video_clips(test.full_path(entry.path), settings).to(device)
            correct += int(model(clips).mean(0).argmax()) == lookup.get(entry.label, -1)
    return correct / len(test.entries)


def swapped_metrics(head: torch.nn.Module, classes: list[str], features: SwappedFeatures) -> dict[str, float]:
    """The probe on the swapped set: named by the clip's own class (it follows the action), by the background's class
    (it follows the scene), and on the plates alone (how much the scene by itself tells)."""
    lookup = {c: i for i, c in enumerate(classes)}
    own = torch.tensor([lookup[c] for c in features.labels])
    scene = torch.tensor([lookup[c] for c in features.background_labels])
    return {
        "swapped_top1": top1(head, features.swapped, own),
        "swapped_bg_top1": top1(head, features.swapped, scene),
        "background_only_top1": top1(head, features.background, own),
    }


def evaluate(
    backbone,
    train_src: str,
    test_src: str | None,
    protocols=PROTOCOLS,
    settings: EvalSettings | None = None,
    device: str | torch.device = "cpu",
    do_finetune: bool = False,
    swap_set: SwapSet | None = None,
    videos_root: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Run the protocols; returns the metrics dict (fractions in [0, 1], counts of the swapped set as ints) with the
    JSON contract's keys. `swapped` needs `swap_set`; the test videos then default to the swap set's cache's.

    `videos_root` is what list-file paths are relative to (default: each list's folder). The role picks the part of
    HMDB51 split files: the training set reads their train videos (id 1), the test set their test videos (id 2)."""
    settings = settings or EvalSettings()
    torch.set_flush_denormal(True)  # a trained backbone makes denormal activations: CPU convolutions slow down ~30x
    unknown = set(protocols) - {*PROTOCOLS, SWAPPED}
    if unknown:
        raise EvalError(f"unknown protocol(s) {sorted(unknown)}; choose from {', '.join((*PROTOCOLS, SWAPPED))}")
    if (SWAPPED in protocols) != (swap_set is not None):
        raise EvalError("the swapped protocol and a test cache (--test-cache) go together: give both or neither")
    if swap_set is not None:
        check_swap_settings(swap_set, settings)
    if test_src is None and swap_set is None:
        raise EvalError("no test set: give --test, or --test-cache with --protocol swapped")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {device}: torch finds no CUDA GPU on this machine; use --device cpu")
    try:
        train = list_source(train_src, videos_root, split="train")
        test = list_source(test_src, videos_root, split="test") if test_src is not None else swap_set.source()
        for name, source in (("train", train), ("test", test)):
            if not source.entries:
                raise EvalError(f"{name} set {source.root} holds no videos (empty dataset)")
            check_videos_exist(source)
    except SourceError as exc:
        raise EvalError(str(exc)) from exc
    backbone = backbone.to(device).eval()
    train_x, train_lab, _ = extract(backbone, train, settings, device, "train features", progress)
    if swap_set is not None:
        unknown = sorted({swap_set.labels[v] for v in swap_set.done} - set(train_lab.tolist()))
        if unknown:
            raise EvalError(f"{swap_set.url}: test cache classes not in the training set: {unknown[:5]}")
    test_x, test_lab, _ = extract(backbone, test, settings, device, "test features", progress)
    train_y, test_y, classes = _encode_labels(train_lab, test_lab)
    metrics: dict[str, float] = {}
    if "linear" in protocols or swap_set is not None:
        head = fit_probe(train_x, train_y)
        metrics["linear_top1"] = top1(head, test_x, test_y)
        metrics["linear_confusion"] = confusion(head, test_x, test_y, classes)
    if swap_set is not None:
        metrics.update(swapped_metrics(head, classes, extract_swapped(backbone, swap_set, settings, device, progress)))
        metrics.update(
            swapped_videos=swap_set.n_videos,
            swapped_clips=len(swap_set.pairs),
            swapped_empty_masks=swap_set.empty_masks,
            swapped_damaged_clips=swap_set.damaged,
        )
    if "knn" in protocols:
        metrics["knn_top1"] = knn(train_x, train_y, test_x, test_y, settings.knn_k)
    if "retrieval" in protocols:
        metrics.update(retrieval(train_x, train_y, test_x, test_y))
    if do_finetune:
        metrics["finetune_top1"] = finetune(backbone, train, test, settings, device)
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """Fractions as percentages, counts (ints) as they are; tables (the confusion matrix) are left to the JSON and
    the picture."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    width = max(len(k) for k in scalars)
    return "\n".join(
        f"{k:<{width}}  {v:6d}" if isinstance(v, int) else f"{k:<{width}}  {100 * v:6.2f}%" for k, v in scalars.items()
    )


def write_json(metrics: dict[str, float], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(metrics, indent=2))

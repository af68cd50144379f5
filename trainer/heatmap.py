"""Where the network looks: the micro-bias salient map of a checkpoint over a video's frames, as a picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.checkpoint import load_backbone
from trainer.evaluate import EvalSettings, centre_crop, to_input
from trainer.micro import salient_map


def clip_saliency(backbone, clip: np.ndarray, block: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (H, W) salient map in [0, 1], upsampled from the block's resolution."""
    with torch.no_grad():
        features = backbone.forward_blocks(to_input(clip)[None])[block]
        saliency = salient_map(features)[None]
    return F.interpolate(saliency, size=clip.shape[1:3], mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(frame: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((saliency * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.55 * frame + 0.45 * heat).astype(np.uint8)


def write_heatmap(
    checkpoint: str,
    video: str,
    out: str,
    block: int | None = None,
    clip_len: int | None = None,
    stride: int | None = None,
) -> Path:
    """PNG montage (frames over the map), or an animation when `out` ends in .gif or .mp4. The frames are the
    video's first clip as evaluation shows it to the backbone (`EvalSettings.for_run`: the run's frame size, clip
    length and crop); `clip_len` and `stride` override the run's."""
    from pipeline.video import decode, write_video

    backbone, config = load_backbone(checkpoint)
    block = config.micro_block if block is None else block
    settings = EvalSettings.for_run(config, clip_len=clip_len, stride=stride)
    keep = range(0, settings.clip_len * settings.stride, settings.stride)
    frames, _ = decode(video, size=settings.size, keep=keep)
    frames = np.ascontiguousarray(centre_crop(frames, settings.crop))
    if len(frames) < 2:
        raise ValueError(f"{video}: needs at least 2 frames for a salient map")
    saliency = clip_saliency(backbone, frames, block)
    shown = np.stack([overlay(f, saliency) for f in frames])
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in shown]
        images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)
    elif path.suffix.lower() == ".mp4":
        even = shown[:, : shown.shape[1] // 2 * 2, : shown.shape[2] // 2 * 2]
        write_video(path, even, fps=8)
    else:
        top = np.concatenate(list(frames[:: max(1, len(frames) // 8)][:8]), axis=1)
        bottom = np.concatenate(list(shown[:: max(1, len(shown) // 8)][:8]), axis=1)
        Image.fromarray(np.concatenate([top, bottom], axis=0)).save(path)
    return path

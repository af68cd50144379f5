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


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 under OpenCV's JET (blue = 0, red = 1), the colours of the overlay and its bar."""
    return cv2.applyColorMap((np.clip(values, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]


def overlay(frame: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    return (0.55 * frame + 0.45 * colour_map(saliency)).astype(np.uint8)


MAX_FRAMES = 8  # frames shown in the PNG montage
CELL = 128  # px: frames are scaled up (nearest neighbour) by a whole factor to at least about this size
GAP = 6  # px of white between frames
LABEL_W = 96  # px: the row names' column
BAR_W, BAR_GAP, BAR_TEXT = 14, 12, 40  # px: the colour bar, the space before it, its tick labels
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (20, 20, 20)


def montage(frames: np.ndarray, shown: np.ndarray, frame_numbers: list[int], title: str) -> np.ndarray:
    """(H, W, 3) picture: a title, the frames over the same frames with the map laid on, each column labelled with
    its source frame number and set apart by a white gap, and a colour bar for the map's 0..1 scale."""
    h, w = frames.shape[1:3]
    scale = max(1, -(-CELL // max(h, w)))
    ch, cw = h * scale, w * scale
    n = len(frames)
    top, label_h = 26, 18
    grid_w = n * cw + (n - 1) * GAP
    width = LABEL_W + grid_w + BAR_GAP + BAR_W + BAR_TEXT
    height = top + label_h + 2 * ch + GAP + 6
    out = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(out, title, (4, 18), FONT, 0.45, INK, 1, cv2.LINE_AA)
    y0 = top + label_h
    for r, (name, row) in enumerate((("frames", frames), ("salient map", shown))):
        y = y0 + r * (ch + GAP)
        cv2.putText(out, name, (4, y + ch // 2 + 5), FONT, 0.45, INK, 1, cv2.LINE_AA)
        for i, image in enumerate(row):
            x = LABEL_W + i * (cw + GAP)
            out[y : y + ch, x : x + cw] = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_NEAREST)
    for i, number in enumerate(frame_numbers):
        cv2.putText(out, f"frame {number}", (LABEL_W + i * (cw + GAP) + 2, y0 - 5), FONT, 0.4, INK, 1, cv2.LINE_AA)
    # The colour bar beside the map row: 1 at the top, 0 at the bottom.
    bx, by = LABEL_W + grid_w + BAR_GAP, y0 + ch + GAP
    ramp = np.linspace(1, 0, ch)[:, None].repeat(BAR_W, axis=1)
    out[by : by + ch, bx : bx + BAR_W] = colour_map(ramp)
    for value, y in ((1, by + 9), (0.5, by + ch // 2 + 4), (0, by + ch - 1)):
        cv2.putText(out, f"{value:g}", (bx + BAR_W + 3, y), FONT, 0.38, INK, 1, cv2.LINE_AA)
    return out


def write_heatmap(
    checkpoint: str,
    video: str,
    out: str,
    block: int | None = None,
    clip_len: int | None = None,
    stride: int | None = None,
) -> Path:
    """PNG montage (`montage`: labelled frames over the map, a colour bar), or an animation when `out` ends in .gif
    or .mp4. The frames are the video's first clip as evaluation shows it to the backbone (`EvalSettings.for_run`:
    the run's frame size, clip length and crop); `clip_len` and `stride` override the run's."""
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
        picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_FRAMES)).round().astype(int))
        numbers = [list(keep)[i] for i in picks]
        name = "/".join(Path(video).parts[-2:])
        title = f"{name}  |  {Path(checkpoint).name}, block {block}  |  micro-bias salient map, 0..1"
        Image.fromarray(montage(frames[picks], shown[picks], numbers, title)).save(path)
    return path

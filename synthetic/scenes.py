"""Generated videos whose true foreground is known, for tests, benchmarks and the demo.

A textured object moves over a textured background; the camera can pan (the background slides), the object can
change shape and stop half way (`stop_at`). `render` returns the frames and the per-frame truth mask; `write_scene`
and `write_dataset` encode them with `pipeline.video.write_video` (H.264 by default, or lossless RGB H.264 when exact
pixels matter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.video import write_video


@dataclass(frozen=True)
class Scene:
    """What to render. Velocities are in pixels per frame."""

    size: tuple[int, int] = (128, 176)
    n_frames: int = 32
    pan: tuple[float, float] = (0.0, 0.0)  # camera (dy, dx): the background slides by -pan each frame
    object_velocity: tuple[float, float] = (0.0, 2.5)  # (dy, dx) in frame coordinates
    object_radius: tuple[float, float] = (18.0, 14.0)  # ellipse semi-axes (ry, rx)
    shape_change: float = 0.0  # relative amplitude of the axes' oscillation
    background_seed: int = 0
    object_seed: int = 1
    background_hue: int | None = None  # dominant hue (0..179, OpenCV) of the background, random when None
    object_hue: int | None = None
    stop_at: int | None = None  # frame from which the object stands still (None: it moves throughout)


# Clips whose true foreground is known, at about the cache's default frame size: the mask tests assert on them and
# benchmarks/masks.py reports on them, so both speak of the same clips.
MASK_SIZE = (128, 172)
MASK_SCENES: dict[str, Scene] = {
    "pan": Scene(size=MASK_SIZE, n_frames=16, pan=(0.5, 2.0), shape_change=0.25, object_radius=(26, 20)),
    "pan_diagonal": Scene(
        size=MASK_SIZE,
        n_frames=16,
        pan=(-1.0, -1.5),
        object_velocity=(1.0, 3.0),
        shape_change=0.3,
        object_radius=(22, 18),
        background_seed=5,
        object_seed=7,
    ),
    "pan_fast": Scene(
        size=MASK_SIZE, n_frames=16, pan=(0.0, 6.0), shape_change=0.3, object_radius=(20, 16), object_seed=9
    ),
    "followed_subject": Scene(size=MASK_SIZE, n_frames=16, pan=(0.0, 2.0), object_velocity=(0.0, 0.0), object_seed=3),
    "static": Scene(size=MASK_SIZE, n_frames=16, object_radius=(26, 20)),
    "static_shape_change": Scene(size=MASK_SIZE, n_frames=16, shape_change=0.3, background_seed=3, object_seed=4),
}


def texture(rng: np.random.Generator, h: int, w: int, hue: int | None = None, scale: float = 6.0) -> np.ndarray:
    """A smooth, colourful random texture (h, w, 3) uint8 RGB, with structure for feature tracking."""
    noise = rng.random((max(2, int(h / scale)), max(2, int(w / scale)), 3)).astype(np.float32)
    smooth = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.random((h, w, 3)).astype(np.float32)
    mixed = np.clip(0.75 * smooth + 0.25 * fine, 0, 1)
    if hue is None:
        return (mixed * 255).astype(np.uint8)
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = (hue + (mixed[..., 0] - 0.5) * 20).astype(np.int32) % 180
    hsv[..., 1] = (120 + mixed[..., 1] * 135).astype(np.uint8)
    hsv[..., 2] = (70 + mixed[..., 2] * 185).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _bounce(position: float, low: float, high: float) -> float:
    """Reflect a straight path off the frame's edges, so long videos keep their mover in view."""
    span = high - low
    if span <= 0:
        return (low + high) / 2
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 RGB and truth masks (T, H, W) bool of the moving object."""
    h, w = scene.size
    t = scene.n_frames
    pan_y, pan_x = scene.pan
    margin_y = int(abs(pan_y) * t) + 2
    margin_x = int(abs(pan_x) * t) + 2
    bg_rng = np.random.default_rng(scene.background_seed)
    canvas = texture(bg_rng, h + 2 * margin_y, w + 2 * margin_x, scene.background_hue)
    obj_rng = np.random.default_rng(scene.object_seed)
    obj_tex = texture(obj_rng, h, w, scene.object_hue, scale=3.0)

    ry0, rx0 = scene.object_radius
    vy, vx = scene.object_velocity
    start_y = h / 2 - vy * t / 2
    start_x = w / 2 - vx * t / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((t, h, w, 3), np.uint8)
    masks = np.empty((t, h, w), bool)
    for i in range(t):
        oy = margin_y + pan_y * i
        ox = margin_x + pan_x * i
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        background = cv2.warpAffine(canvas, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        wobble = 1.0 + scene.shape_change * np.sin(2 * np.pi * i / max(8, t / 2))
        ry, rx = ry0 * wobble, rx0 / wobble
        moved_for = i if scene.stop_at is None else min(i, scene.stop_at)
        cy = _bounce(start_y + vy * moved_for, ry0, h - ry0)
        cx = _bounce(start_x + vx * moved_for, rx0, w - rx0)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        # The object's texture moves with it.
        obj_shift = np.float32([[1, 0, cx - w / 2], [0, 1, cy - h / 2]])
        moved = cv2.warpAffine(obj_tex, obj_shift, (w, h), borderMode=cv2.BORDER_WRAP)
        frame = background.copy()
        frame[inside] = moved[inside]
        frames[i] = frame
        masks[i] = inside
    return frames, masks


def write_scene(path: str | os.PathLike, scene: Scene, **kwargs) -> np.ndarray:
    """Render a scene, write it, and return its truth masks."""
    frames, masks = render(scene)
    write_video(path, frames, **kwargs)
    return masks


def write_dataset(
    root: str | os.PathLike,
    n_classes: int = 3,
    videos_per_class: int = 3,
    n_frames: int = 40,
    seed: int = 0,
    size: tuple[int, int] = Scene.size,
) -> list[str]:
    """A folder-per-class set of small videos (class = direction of motion), returned as relative paths. Object
    size, speeds and camera pans scale with the frame height, so every size shows the same scene."""
    rng = np.random.default_rng(seed)
    scale = size[0] / Scene.size[0]
    directions = [(0.0, 2.5), (0.0, -2.5), (2.0, 0.0), (-2.0, 0.0), (1.8, 1.8), (-1.8, -1.8)]
    paths = []
    for c in range(n_classes):
        for v in range(videos_per_class):
            dy, dx = directions[c % len(directions)]
            scene = Scene(
                size=size,
                n_frames=n_frames,
                object_velocity=(dy * scale, dx * scale),
                object_radius=(Scene.object_radius[0] * scale, Scene.object_radius[1] * scale),
                pan=(0.0, float(rng.uniform(-1, 1)) * scale),
                background_seed=int(rng.integers(1 << 30)),
                object_seed=int(rng.integers(1 << 30)),
                shape_change=0.15,
            )
            rel = os.path.join(f"class_{c}", f"video_{v}.mp4")
            write_scene(os.path.join(root, rel), scene)
            paths.append(rel)
    return paths

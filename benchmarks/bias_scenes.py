"""The background-bias data: classes told apart by motion alone, filmed over backgrounds that predict the class.

Five classes differ only in how a textured object moves: side to side, up and down, in a circle, corner to corner,
pulsing in place. Everything else is drawn per video: the object's texture and hue, its shape, start phase, speed
(x U(0.8, 1.2)), amplitude and position (the path stays in frame and inside the evaluation's centre crop). Each
background family (one per class) is a hue-tinted texture blended with random crops of real video frames, so a
family is recognisable by its colour while every background has real-image structure. Half the videos pan slowly
(the background slides; the mover's path is in frame coordinates).

Training: the background family is the class's with probability 0.95. Test: always another class's family
(uniformly among the other four), so a representation that learned the background is wrong on every test video.
Everything is drawn from one seed: the same arguments write the same bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.video import decode, probe, write_video
from synthetic import texture

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"
CLASSES = ("side_to_side", "up_down", "circle", "corner_to_corner", "pulse")
FAMILY_HUES = (0, 36, 72, 108, 144)  # OpenCV hue (0..179) of each background family, evenly around the wheel
MOVER_AREAS = {"small": (0.02, 0.05), "actor": (0.10, 0.20)}  # mover area as a fraction of the frame
TRAIN_MATCH_P = 0.95  # training videos filmed over their own class's family
PULSE = 0.25  # relative amplitude of the pulsing mover's axes
PAN_P = 0.5
PAN_SPEED = (0.3, 0.7)  # px per frame
# Share of the real crop in a background; the rest is the family's tinted texture. With a quarter of tint a family
# is still recognisable, plain MoCo scores 1-9% on the swapped test, and an untrained network 10-17%: room for an arm
# to be better or worse. At half tint every arm, FAME too, scored 0-5% even after 540 steps (64x80 videos).
REAL_WEIGHT = 0.75
ALIGN = 64  # frame widths that encode deterministically (see write_bias_set)
REAL_SIDE = 128  # real frames are decoded with this short side, then cropped and resized
REAL_FRAMES_PER_VIDEO = 12


@dataclass(frozen=True)
class SceneSpec:
    """Everything one video's frames depend on, so the manifest reproduces it."""

    motion: int  # class index into CLASSES
    family: int  # background family index
    size: tuple[int, int]
    n_frames: int
    radius: tuple[float, float]  # mover ellipse semi-axes (ry, rx) at rest
    centre: tuple[float, float]  # path centre (y, x) in frame coordinates
    amplitude: tuple[float, float]  # path half-extent (ay, ax) in px
    period: float  # frames per cycle (speed jitter included)
    phase: float  # start phase, radians
    direction: int  # +1 / -1: which way round (circle) or which diagonal (corner to corner)
    pan: tuple[float, float]  # camera (dy, dx) px per frame
    mover_seed: int
    mover_hue: int
    background_seed: int


def load_real_frames(root: Path = REAL, per_video: int = REAL_FRAMES_PER_VIDEO, seed: int = 0) -> list[np.ndarray]:
    """A pool of real frames (short side REAL_SIDE) at random positions of every video under `root`: the structure
    the backgrounds borrow. Decoded once per benchmark run (well under a second)."""
    rng = np.random.default_rng(seed)
    pool: list[np.ndarray] = []
    videos = sorted(Path(root).glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{root}: no real videos (*.mp4) to take background structure from")
    for video in videos:
        info = probe(str(video))
        scale = REAL_SIDE / min(info.height, info.width)
        size = (round(info.height * scale), round(info.width * scale))
        keep = rng.choice(max(1, info.n_frames - 2), size=min(per_video, max(1, info.n_frames - 2)), replace=False)
        frames, _ = decode(str(video), size=size, keep=keep.tolist(), threads=1)
        pool.extend(frames)
    return pool


def _real_crop(rng: np.random.Generator, pool: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """A random window (25-80% of the frame's area, the canvas's aspect) of a random real frame, resized to h x w."""
    frame = pool[int(rng.integers(len(pool)))]
    fh, fw = frame.shape[:2]
    area = rng.uniform(0.25, 0.8) * fh * fw
    ch = min(fh, round(math.sqrt(area * h / w)))
    cw = min(fw, round(ch * w / h))
    y0, x0 = int(rng.integers(fh - ch + 1)), int(rng.integers(fw - cw + 1))
    window = frame[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return cv2.resize(np.ascontiguousarray(window), (w, h), interpolation=cv2.INTER_AREA)


def background(spec: SceneSpec, pool: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: the family's hue-tinted texture blended with a real crop."""
    rng = np.random.default_rng(spec.background_seed)
    real = _real_crop(rng, pool, h, w).astype(np.float32)
    tint = texture(rng, h, w, FAMILY_HUES[spec.family], scale=float(rng.uniform(4.0, 10.0))).astype(np.float32)
    return np.clip(REAL_WEIGHT * real + (1.0 - REAL_WEIGHT) * tint + 0.5, 0, 255).astype(np.uint8)


def path(spec: SceneSpec, i: int) -> tuple[float, float, float]:
    """(cy, cx, scale) of the mover in frame i: the class's motion, in frame coordinates."""
    angle = spec.phase + 2 * math.pi * i / spec.period
    s = math.sin(angle)
    cy, cx = spec.centre
    ay, ax = spec.amplitude
    name = CLASSES[spec.motion]
    if name == "side_to_side":
        return cy, cx + ax * s, 1.0
    if name == "up_down":
        return cy + ay * s, cx, 1.0
    if name == "circle":
        return cy + ay * s, cx + spec.direction * ax * math.cos(angle), 1.0
    if name == "corner_to_corner":
        return cy + ay * s, cx + spec.direction * ax * s, 1.0
    return cy, cx, 1.0 + PULSE * s  # pulse


def render(spec: SceneSpec, pool: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 RGB and the mover's truth masks (T, H, W) bool."""
    h, w = spec.size
    pan_y, pan_x = spec.pan
    margin_y, margin_x = math.ceil(abs(pan_y) * spec.n_frames) + 2, math.ceil(abs(pan_x) * spec.n_frames) + 2
    canvas = background(spec, pool, h + 2 * margin_y, w + 2 * margin_x)
    mover = texture(np.random.default_rng(spec.mover_seed), h, w, spec.mover_hue, scale=3.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((spec.n_frames, h, w, 3), np.uint8)
    masks = np.empty((spec.n_frames, h, w), bool)
    for i in range(spec.n_frames):
        oy = margin_y * (1 - np.sign(pan_y)) + pan_y * i  # the window slides across the canvas from one side
        ox = margin_x * (1 - np.sign(pan_x)) + pan_x * i
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        frame = cv2.warpAffine(canvas, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        cy, cx, scale = path(spec, i)
        ry, rx = spec.radius[0] * scale, spec.radius[1] * scale
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        moved = cv2.warpAffine(mover, np.float32([[1, 0, cx - w / 2], [0, 1, cy - h / 2]]), (w, h), borderMode=4)
        frame[inside] = moved[inside]  # the texture moves with the mover (borderMode 4: wrap)
        frames[i] = frame
        masks[i] = inside
    return frames, masks


def _room(size: int, radius: float, margin: float) -> tuple[float, float]:
    """(low, high) for the mover's centre on one axis so that it stays `margin` px inside the frame."""
    return radius + margin, size - radius - margin


def draw_spec(
    rng: np.random.Generator, motion: int, family: int, mover: str, size: tuple[int, int], n_frames: int, period: float
) -> SceneSpec:
    """One video's random draw. The path (at the pulse's largest size) stays 1 px inside the frame vertically and
    in the middle 3/4 horizontally: inside the evaluation's square centre crop of a 3:4 frame."""
    h, w = size
    area = rng.uniform(*MOVER_AREAS[mover]) * h * w
    aspect = rng.uniform(0.8, 1.25)  # ry / rx
    ry, rx = math.sqrt(area * aspect / math.pi), math.sqrt(area / aspect / math.pi)
    grow = 1.0 + PULSE if CLASSES[motion] == "pulse" else 1.0
    (y_lo, y_hi), (x_lo, x_hi) = _room(h, ry * grow, 1.0), _room(w, rx * grow, w / 8)
    half_y, half_x = max(0.0, (y_hi - y_lo) / 2), max(0.0, (x_hi - x_lo) / 2)
    ay, ax = half_y * rng.uniform(0.6, 0.95), half_x * rng.uniform(0.6, 0.95)
    cy = (y_lo + y_hi) / 2 + rng.uniform(-1, 1) * (half_y - ay)
    cx = (x_lo + x_hi) / 2 + rng.uniform(-1, 1) * (half_x - ax)
    pan = (0.0, 0.0)
    if rng.random() < PAN_P:
        heading, speed = rng.uniform(0, 2 * math.pi), rng.uniform(*PAN_SPEED)
        pan = (speed * math.sin(heading), speed * math.cos(heading))
    return SceneSpec(
        motion=motion,
        family=family,
        size=size,
        n_frames=n_frames,
        radius=(ry, rx),
        centre=(cy, cx),
        amplitude=(ay, ax),
        period=period / rng.uniform(0.8, 1.2),
        phase=rng.uniform(0, 2 * math.pi),
        direction=int(rng.choice([-1, 1])),
        pan=pan,
        mover_seed=int(rng.integers(1 << 30)),
        mover_hue=int(rng.integers(180)),
        background_seed=int(rng.integers(1 << 30)),
    )


def families(rng: np.random.Generator, motion: int, train: bool) -> int:
    """The background family of a video of class `motion`: its own (p 0.95) in training, another one in the test."""
    n = len(CLASSES)
    if train and rng.random() < TRAIN_MATCH_P:
        return motion
    return int((motion + rng.integers(1, n)) % n)


def draw_split(
    seed: int, per_class: int, train: bool, mover: str, size: tuple[int, int], n_frames: int, period: float
) -> list[SceneSpec]:
    """Every video of one split, class by class."""
    rng = np.random.default_rng(seed)
    specs = []
    for motion in range(len(CLASSES)):
        for _ in range(per_class):
            specs.append(draw_spec(rng, motion, families(rng, motion, train), mover, size, n_frames, period))
    return specs


def look_palette(looks: int, seed: int) -> list[tuple[int, int]]:
    """`looks` mover looks (texture seed, hue) shared by both splits."""
    rng = np.random.default_rng([seed, 7919])
    return [(int(rng.integers(1 << 30)), int(rng.integers(180))) for _ in range(looks)]


def share_looks(specs: list[SceneSpec], palette: list[tuple[int, int]], seed: int) -> list[SceneSpec]:
    """Each mover takes a look from `palette`, drawn independently of its class: a look then names neither the class
    nor the video, as a person's looks name neither their action nor their clip."""
    picks = np.random.default_rng([seed, 104729]).integers(len(palette), size=len(specs))
    return [replace(s, mover_seed=palette[k][0], mover_hue=palette[k][1]) for s, k in zip(specs, picks, strict=True)]


def write_split(root: Path, specs: list[SceneSpec], pool: list[np.ndarray]) -> list[str]:
    """Render and encode (H.264) every video as root/<class>/vNNN.mp4, plus root/manifest.json; returns the paths
    relative to root."""
    rels, rows, counters = [], [], dict.fromkeys(CLASSES, 0)
    for spec in specs:
        name = CLASSES[spec.motion]
        rel = f"{name}/v{counters[name]:03d}.mp4"
        counters[name] += 1
        frames, _ = render(spec, pool)
        write_video(root / rel, frames)
        rels.append(rel)
        rows.append({"path": rel, "class": name, **asdict(spec)})
    (root / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rels


def write_bias_set(
    root: Path,
    mover: str,
    train_per_class: int,
    test_per_class: int,
    size: tuple[int, int] = (96, 128),
    n_frames: int = 36,
    period: float = 24.0,
    seed: int = 0,
    pool: list[np.ndarray] | None = None,
    looks: int | None = None,
    val_per_class: int = 0,
) -> tuple[Path, Path]:
    """root/train and root/test (folder per class) for one mover size; the seed fixes every byte.

    The width must be a multiple of 64: PyAV hands x264 frames whose rows are padded to an alignment, and with
    other widths the padding's uninitialised bytes leak into the encoding (64x80 videos decoded up to 40 levels
    apart from one run to the next; 96x128 ones are byte-identical)."""
    if mover not in MOVER_AREAS:
        raise ValueError(f"mover must be one of {', '.join(MOVER_AREAS)}, got {mover!r}")
    if size[1] % ALIGN:
        raise ValueError(f"size must have a width that is a multiple of {ALIGN} (deterministic encoding), got {size}")
    pool = pool if pool is not None else load_real_frames(seed=seed)
    # val: held-out videos drawn as training's are (backgrounds follow the class), as a real test split's do.
    splits = {"train": (train_per_class, True, 1), "test": (test_per_class, False, 2), "val": (val_per_class, True, 3)}
    for split, (per_class, train, offset) in splits.items():
        if not per_class:
            continue
        specs = draw_split(seed * 10 + offset, per_class, train, mover, size, n_frames, period)
        if looks:
            specs = share_looks(specs, look_palette(looks, seed), seed * 10 + offset)
        write_split(root / split, specs, pool)
    return root / "train", root / "test"

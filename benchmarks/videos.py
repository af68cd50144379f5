"""The videos the benchmarks run on: the real sample videos next to the repository, plus generated ones."""

from __future__ import annotations

import os
from pathlib import Path

from synthetic import Scene, write_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"


def make_source(
    root: Path, n_generated: int, frames: int, size: tuple[int, int] = Scene.size, real: bool = True
) -> Path:
    """A folder of the real videos (linked, when `real` and present) and `n_generated` generated ones of `frames`
    frames at `size`, in four classes; one class per folder."""
    src = root / "videos"
    if real and REAL.is_dir():
        (src / "real").mkdir(parents=True)
        for video in sorted(REAL.glob("*.mp4")):
            os.symlink(video, src / "real" / video.name)
    if n_generated:
        per_class = -(-n_generated // 4)
        write_dataset(src / "generated", n_classes=4, videos_per_class=per_class, n_frames=frames, seed=0, size=size)
    return src

"""The videos the benchmarks run on: the real sample videos next to the repository, plus generated ones."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.video import decode_all, write_video
from synthetic import Scene, write_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos"
# How datasets of web video are encoded (UCF101: ~500 kbit/s at 320x240, 25 fps), with x264's keyframe every 2 s.
WEB_KEYINT = 50
WEB_BIT_RATE = 500_000


def make_source(
    root: Path,
    n_generated: int,
    frames: int,
    size: tuple[int, int] = Scene.size,
    real: bool = True,
    web: bool = False,
) -> Path:
    """A folder of the real videos (copied, when `real` and present: sources refuse links out of their root) and
    `n_generated` generated ones of `frames` frames at `size`, in four classes; one class per folder. `web` encodes
    the generated ones as web video is (WEB_BIT_RATE, a keyframe every WEB_KEYINT frames), so a loader seeks in
    them as in a real dataset."""
    src = root / "videos"
    if real and REAL.is_dir():
        (src / "real").mkdir(parents=True)
        for video in sorted(REAL.glob("*.mp4")):
            shutil.copy(video, src / "real" / video.name)
    if n_generated:
        per_class = -(-n_generated // 4)
        paths = write_dataset(
            src / "generated", n_classes=4, videos_per_class=per_class, n_frames=frames, seed=0, size=size
        )
        for rel in paths if web else ():  # re-encoded: the generator writes constant quality, one keyframe
            path = src / "generated" / rel
            write_video(path, decode_all(str(path)), keyint=WEB_KEYINT, bit_rate=WEB_BIT_RATE)
    return src

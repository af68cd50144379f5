"""Shared fixtures: small generated videos with known foreground, and the real sample videos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_VIDEOS = REPO.parent / "shared" / "data" / "real_videos"


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_videos() -> Path:
    if not REAL_VIDEOS.is_dir() or not any(REAL_VIDEOS.glob("*.mp4")):
        pytest.skip(f"real sample videos not found next to the repository ({REAL_VIDEOS.name})")
    return REAL_VIDEOS


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder-per-class set of 3 classes x 2 videos, 40 frames each, generated once per session."""
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    write_dataset(root, n_classes=3, videos_per_class=2, n_frames=40, seed=0)
    return root


@pytest.fixture(autouse=True)
def _quiet_ray(monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

"""The README's loader example runs as an ordinary script (`python example.py`): DALI spawns its decoding workers,
which import the script again, so the example carries the `__main__` guard; only the cache, the device and the sizes
are swapped for the test's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import make_cache

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first Python block of the README's loader section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## 2. Load FAME views") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_loader_example_runs_as_a_script(tmp_path):
    cache = make_cache(tmp_path / "data", n_videos=4, textured=True)
    code = readme_example()
    swaps = {
        '"caches/ucf101.zarr"': repr(cache),
        'device="gpu"': 'device="cpu"',
        "batch_size=64": "batch_size=2",
        "crop=112": "crop=24",
    }
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 0: 2 batches" in result.stdout and "epoch 1: 2 batches" in result.stdout, result.stdout

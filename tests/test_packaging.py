"""How the project installs: generic Zarr opens a cache's plates (the JPEG plate codec is declared under Zarr's
`zarr.codecs` entry point, so a process that never imports `pipeline` itself, a notebook or another tool, reads them
with plain `zarr.open_group`), and the conda environment pins what requirements.txt pins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import make_cache

from pipeline.cache import Cache
from pipeline.cache.codecs import CODEC_NAME

# Run in a fresh interpreter: says whether `pipeline` was imported before the plates were read, and saves clip 0's
# plate as Zarr alone decodes it.
READER = """
import json, sys
import zarr

group = zarr.open_group(sys.argv[1], mode="r")
imported_before_read = "pipeline" in sys.modules
plates = group["plates"]
plate = plates[0]
import numpy as np
np.save(sys.argv[2], plate)
print(json.dumps({"imported_before_read": imported_before_read, "metadata": plates.metadata.to_dict()}))
"""


def test_plain_zarr_reads_plates_without_importing_pipeline(tmp_path):
    url = make_cache(tmp_path / "data", n_videos=3)
    expected = Cache.open(url).read_clip(0)[1]  # the plate as the cache API reads it, checksum checked
    out = tmp_path / "plate.npy"
    done = subprocess.run(
        [sys.executable, "-c", READER, url, str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported_before_read"] is False  # only Zarr's entry point can have brought the codec in
    assert CODEC_NAME in json.dumps(report["metadata"])  # the plates are the JPEG codec's
    np.testing.assert_array_equal(np.load(out), expected)


def test_conda_environment_has_the_pip_pins():
    """environment.yml is the GPU clusters' way to install: it must hold every pin of requirements.txt (the same
    versions), s3fs included, or s3:// sources and caches fail there."""
    repo = Path(__file__).resolve().parents[1]
    pins = {
        line.split("==")[0].lower(): line
        for line in (repo / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    listed = {m.lower() for m in re.findall(r"^\s*-\s*(\S+==\S+)\s*$", (repo / "environment.yml").read_text(), re.M)}
    assert "s3fs" in pins
    assert {pin.lower() for pin in pins.values()} <= listed

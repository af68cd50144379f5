"""The damage matrix: every kind of damage a cache may suffer, and what the tools do with it.

For each kind a clean cache of small generated videos is copied and damaged, then:
- `detected`: `fame-cache verify` reports it (the problem kinds it names);
- `resume before fix`: what `fame-pipeline build --resume` does with the damaged cache (it may refuse; it must never
  re-plan a cache that holds computed clips, nor mark sound videos failed);
- `loader`: what a real loader does with one epoch of the damaged cache: reads it whole (the data is intact), skips
  and counts the damaged clips, or refuses to start, naming the file;
- `repaired`: after `verify --fix` and `build --resume`, the cache verifies clean and equals the clean build, byte for
  byte in every clip array.

    python benchmarks/faults.py [--json benchmarks/results/faults.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_tools.verify import verify_and_fix, verify_cache
from pipeline.build import BuildError, build_cache
from pipeline.cache import DONE, Cache, CacheError
from pipeline.loader import FameLoader, LoaderParams
from pipeline.params import BuildParams

PARAMS = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)
ARRAYS = ("masks", "plates", "clips/checksum", "clips/frames", "clips/video", "videos/status")


def _shards(url: str, array: str) -> list[Path]:
    return sorted(p for p in (Path(url) / array / "c").rglob("*") if p.is_file())


def _flip(path: Path, start: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def truncated_shard(url: str) -> None:
    shard = _shards(url, "masks")[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def shard_index(url: str) -> None:
    shard = _shards(url, "masks")[0]
    _flip(shard, shard.stat().st_size - 20)  # the shard's index sits at its end


def deleted_shard(url: str) -> None:
    _shards(url, "plates")[-1].unlink()


def bad_jpeg(url: str) -> None:
    shard = _shards(url, "plates")[0]
    _flip(shard, shard.stat().st_size // 4, 64)  # inside the first plates' JPEG data


def bad_metadata_json(url: str) -> None:
    (Path(url) / "masks" / "zarr.json").write_text('{"shape": [')


def deleted_metadata(url: str) -> None:
    (Path(url) / "videos" / "status" / "zarr.json").unlink()


def edited_frames(url: str) -> None:
    frames = zarr.open_array(f"{url}/clips/frames", mode="r+")
    frames[0] = frames[0] + 1  # still increasing and inside the video: plausible, and wrong


def edited_fill_value(url: str) -> None:
    _edit_json(Path(url) / "masks" / "zarr.json", lambda doc: doc.update(fill_value=255))
    _shards(url, "masks")[-1].unlink()  # what the edit is for: a missing shard now reads as a full mask


def garbage_status(url: str) -> None:
    zarr.open_array(f"{url}/videos/status", mode="r+")[1] = "banana"


def corrupt_frames_chunk(url: str) -> None:
    _flip(_shards(url, "clips/frames")[0], 8)


DAMAGES: dict[str, Callable[[str], None]] = {
    "truncated shard": truncated_shard,
    "shard index": shard_index,
    "deleted shard": deleted_shard,
    "bad JPEG": bad_jpeg,
    "bad metadata JSON": bad_metadata_json,
    "deleted metadata": deleted_metadata,
    "edited frame numbers": edited_frames,
    "edited fill value": edited_fill_value,
    "garbage status": garbage_status,
    "corrupt clips/frames chunk": corrupt_frames_chunk,
}


def snapshot(url: str) -> dict[str, np.ndarray]:
    root = Cache.open(url).root
    return {name: root[name][:] for name in ARRAYS}


def loader_behaviour(url: str) -> str:
    """One epoch of a real loader over the cache: what it refused, skipped (counted) or left out, or "read whole"."""
    params = LoaderParams(crop=16, crop_scale=(0.5, 1.0), num_workers=0, num_threads=1, augment=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = FameLoader(url, batch_size=4, params=params)
            for _ in loader:
                pass
    except (CacheError, ValueError, KeyError, RuntimeError) as exc:
        return f"refused: {str(exc).split(': ', 1)[-1].splitlines()[0][:70]}"
    if loader.skipped:
        return f"skipped {len(loader.skipped)} damaged clip(s), counted"
    left_out = [str(w.message).split(": ", 1)[-1] for w in caught if "skipping" in str(w.message)]
    return f"left out: {left_out[0][:70]}" if left_out else "read whole"


def fault_row(kind: str, src: str, clean: str, reference: dict[str, np.ndarray], work: Path) -> dict:
    """Damage a copy of the clean cache one way; detect, try to resume, load, repair and compare."""
    url = str(work / f"{kind.replace(' ', '-').replace('/', '-')}.zarr")
    shutil.copytree(clean, url)
    DAMAGES[kind](url)
    problems = verify_cache(Cache.open(url))
    loader = loader_behaviour(url)
    try:
        report = build_cache(src, url, PARAMS, resume=True, progress=False)
        resume = f"finished, {report.n_failed} failed" if report.n_failed else "finished"
    except BuildError as exc:
        resume = f"refused: {str(exc).split(': ', 1)[-1][:70]}"
    verify_and_fix(url)
    build_cache(src, url, PARAMS, resume=True, progress=False)
    after = verify_cache(Cache.open(url))
    repaired = snapshot(url)
    same = all(np.array_equal(reference[name], repaired[name]) for name in ARRAYS)
    return {
        "kind": kind,
        "detected": bool(problems),
        "problems": sorted({p.kind for p in problems}),
        "resume_before_fix": resume,
        "loader": loader,
        "repaired": not after and same and bool((repaired["videos/status"] == DONE).all()),
    }


def clean_build(work: Path) -> tuple[str, str]:
    """Generated videos and their clean cache."""
    from synthetic import write_dataset

    src = work / "videos"
    write_dataset(src, n_classes=3, videos_per_class=2, n_frames=24, seed=0)
    clean = str(work / "clean.zarr")
    build_cache(str(src), clean, PARAMS, progress=False)
    return str(src), clean


def run_matrix(work: Path, kinds: list[str] | None = None) -> list[dict]:
    src, clean = clean_build(work)
    reference = snapshot(clean)
    rows = []
    for kind in kinds or list(DAMAGES):
        rows.append(fault_row(kind, src, clean, reference, work))
        print(f"{kind}: done", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| damage | detected by verify | resume before fix | loader | repaired to clean bytes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        detected = f"yes ({', '.join(r['problems'])})" if r["detected"] else "NO"
        repaired = "yes" if r["repaired"] else "NO"
        lines.append(f"| {r['kind']} | {detected} | {r['resume_before_fix']} | {r['loader']} | {repaired} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/faults.json")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fame-faults-") as folder:
        rows = run_matrix(Path(folder))
    Path(args.json).write_text(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    Path(args.json).with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

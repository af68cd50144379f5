"""The damage matrix (benchmarks/faults.py), kind by kind: each damage is detected by `verify`, never read silently
by the loader, never makes `--resume` re-plan or fail a cache, and `verify --fix` + `--resume` give back the clean
build's bytes."""

from __future__ import annotations

import os
import shutil

import pytest

from benchmarks import faults
from cache_tools.verify import verify_and_fix, verify_cache
from pipeline.build import BuildError, build_cache
from pipeline.cache import DONE, Cache
from pipeline.loader import FameLoader, LoaderParams
from pipeline.sources import FINGERPRINT_BYTES

# What each kind must be reported as by verify, and what the loader must do with it before any repair.
EXPECTED = {
    "truncated shard": ({"unreadable", "checksum"}, "skipped"),
    "shard index": ({"unreadable", "checksum"}, "skipped"),
    "deleted shard": ({"checksum"}, "skipped"),
    "bad JPEG": ({"unreadable", "checksum"}, "skipped"),
    "bad metadata JSON": ({"metadata"}, "refused"),
    "deleted metadata": ({"metadata"}, "refused"),
    "edited frame numbers": ({"checksum"}, "skipped"),
    "edited fill value": ({"metadata"}, "refused"),
    "garbage status": ({"status"}, "left out"),
    "corrupt clips/frames chunk": ({"clip-table", "layout"}, "left out"),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    src, url = faults.clean_build(work)
    return work, src, url, faults.snapshot(url)


def test_every_damage_kind_has_an_expectation():
    assert set(EXPECTED) == set(faults.DAMAGES)


@pytest.mark.parametrize("kind", list(faults.DAMAGES))
def test_damage_is_detected_never_read_silently_and_repaired(kind, clean):
    work, src, url, reference = clean
    row = faults.fault_row(kind, src, url, reference, work)
    kinds, loader = EXPECTED[kind]
    assert row["detected"] and set(row["problems"]) <= kinds, row
    assert row["loader"].startswith(loader), row
    assert "failed" not in row["resume_before_fix"], row  # resume never marks sound videos failed
    assert row["repaired"], row


@pytest.mark.parametrize("kind", ["bad metadata JSON", "deleted metadata"])
def test_resume_refuses_unreadable_metadata_and_keeps_the_cache(kind, clean, tmp_path):
    _, src, url, reference = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    faults.DAMAGES[kind](copy)
    with pytest.raises(BuildError, match=r"zarr\.json.*fame-cache verify --fix"):
        build_cache(src, copy, faults.PARAMS, resume=True, progress=False)
    # The cache is still there, clips and all: the repair gives back every byte.
    assert verify_and_fix(copy).rewritten
    assert not verify_cache(Cache.open(copy))
    assert all((faults.snapshot(copy)[name] == reference[name]).all() for name in faults.ARRAYS)
    assert (Cache.open(copy).videos("status") == DONE).all()


def _epoch(url: str, **params) -> FameLoader:
    loader = FameLoader(url, batch_size=4, params=LoaderParams(crop=16, num_threads=1, augment=False, **params))
    for _ in loader:
        pass
    return loader


def test_loader_stops_on_damage_when_asked_and_skips_across_worker_processes(clean, tmp_path):
    _, _, url, _ = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    for shard in faults._shards(copy, "masks")[:3]:
        shard.unlink()  # half the videos' masks gone: an epoch of 4 of the 6 videos meets at least one
    with pytest.raises(Exception, match=r"clip \d+ does not match its checksum.*on_damage='stop'"):
        _epoch(copy, on_damage="stop", num_workers=0)
    with pytest.warns(UserWarning, match="cached clip .* is damaged; left out"):
        loader = _epoch(copy, num_workers=1)  # in DALI's worker processes too
    assert loader.skipped and all(clip >= 0 for _, clip in loader.skipped)


def test_loader_skips_and_counts_a_video_that_no_longer_decodes(clean, tmp_path):
    _, src, url, _ = clean
    videos = tmp_path / "videos"
    shutil.copytree(src, videos)
    victim = sorted(videos.rglob("*.mp4"))[0]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[FINGERPRINT_BYTES:-FINGERPRINT_BYTES] = bytes(len(data) - 2 * FINGERPRINT_BYTES)
    victim.write_bytes(bytes(data))  # same size, time and fingerprinted ends: only decoding can tell
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Batches of 2 over 6 videos: an epoch draws every video, the broken one too.
    with pytest.warns(UserWarning, match=f"{victim.name}: it does not decode; left out"):
        loader = FameLoader(url, batch_size=2, videos=str(videos), params=LoaderParams(crop=16, num_workers=1))
        batches = list(loader)
    assert len(batches) == len(loader) and [clip for _, clip in loader.skipped] == [-1]
    assert all(loader.catalog.video_path(int(v)) != str(victim) for b in batches for v in b["video"])
    stopping = FameLoader(url, batch_size=2, videos=str(videos), params=LoaderParams(crop=16, on_damage="stop"))
    with pytest.raises(Exception, match=f"{victim.name}.*on_damage='stop'"):
        list(stopping)


def test_gc_drops_the_videos_of_an_unreadable_clip_table_chunk(clean, tmp_path):
    from cache_tools.gc import videos_to_keep

    _, _, url, _ = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    faults.corrupt_frames_chunk(copy)
    keep, dropped = videos_to_keep(Cache.open(copy))
    assert [v for v, _ in dropped] == [0] and "clip table chunk" in dropped[0][1] and 0 not in keep


def test_tools_name_a_damaged_metadata_file_instead_of_a_usage_error(clean, tmp_path, capsys):
    from pathlib import Path

    from cache_tools.cli import main

    _, _, url, _ = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    faults.bad_metadata_json(copy)
    assert main(["info", copy]) == 3 and "masks/zarr.json: not valid JSON" in capsys.readouterr().err
    assert main(["verify", copy, "--quiet"]) == 1 and "masks/zarr.json" in capsys.readouterr().out
    Path(copy, "zarr.json").write_text("{")
    assert main(["verify", copy]) == 3 and "c.zarr/zarr.json: the cache's root metadata" in capsys.readouterr().err


def test_pretrain_goes_past_damaged_clips_and_says_how_many_it_left_out(clean, tmp_path, capsys):
    from trainer.config import TrainConfig
    from trainer.train import pretrain

    _, _, url, _ = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    for shard in faults._shards(copy, "masks")[:3]:
        shard.unlink()
    config = TrainConfig(
        cache=copy,
        out=str(tmp_path / "run"),
        backbone="small",
        epochs=2,
        batch_size=2,
        queue_size=4,
        checkpoint_every=1000,
        loader=LoaderParams(crop=16, num_workers=0, num_threads=1),
    )
    with pytest.warns(UserWarning, match="is damaged; left out"):
        pretrain(config, progress=False)
    assert "damaged clip(s) or undecodable video(s); `fame-cache verify" in capsys.readouterr().err


def test_a_stand_in_for_a_damaged_sample_never_brings_its_partners_video(clean, tmp_path):
    """A sample left out is replaced by one of a later batch: its video is none of its batch's others, so no query
    is merged over a plate of its own video (with the next sample standing in, a batch of 2 paired a video with
    itself)."""
    _, _, url, _ = clean
    copy = str(tmp_path / "c.zarr")
    shutil.copytree(url, copy)
    for shard in faults._shards(copy, "masks")[:3]:
        shard.unlink()
    with pytest.warns(UserWarning, match="is damaged; left out"):
        for seed in range(3):
            loader = FameLoader(copy, batch_size=2, params=LoaderParams(crop=16, num_workers=0), seed=seed)
            for batch in loader:
                assert (batch["video"] != batch["partner_video"]).all(), f"seed {seed}: {batch['video'].tolist()}"
            assert loader.skipped


def test_stand_ins_come_from_other_batches_first():
    from pipeline.loader.external_source import stand_ins

    assert list(stand_ins(1, 2, 6)) == [1, 3, 5, 2, 4]  # the same slot of the next batches, never batch 0's other
    assert list(stand_ins(7, 4, 6)) == [1, 3, 2]  # a padded batch wraps: positions 4, 5, 0, 1 are its own
    assert list(stand_ins(1, 4, 3)) == [1, 2, 0]  # one batch in the epoch: only its others are left

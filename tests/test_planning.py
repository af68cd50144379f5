"""A cache planned row by row while it is computed (pipeline.cache.planning, pipeline.planner): the same arrays as one
created whole, and a build stopped half-way through its plan finishes it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import assert_same_cache, cache_arrays

from cache_tools.cli import main as cache_main
from pipeline.build import build_cache, create_cache
from pipeline.cache import FAILED, PENDING, Cache
from pipeline.cache.planning import (
    create_unplanned,
    end_planning,
    extend_plan,
    is_planning,
    plan_state,
    write_group_plan,
    write_probed,
)
from pipeline.job import run_group
from pipeline.params import BuildParams
from pipeline.plan import plan_clips
from pipeline.planner import Planner, write_task_plan
from pipeline.sources import list_source

TINY = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)


def probed_table(n_frames: list[int]) -> dict[str, np.ndarray]:
    """Probed columns of videos of these lengths: under 2 frames is refused, as a probe refuses it."""
    n = len(n_frames)
    status = np.array([FAILED if f < 2 else PENDING for f in n_frames], dtype=object)
    return {
        "n_frames": np.array(n_frames, np.int32),
        "fps": np.full(n, 25.0),
        "height": np.full(n, 48),
        "width": np.full(n, 64),
        "bytes": np.arange(n) * 1000 + 7,
        "mtime": np.zeros(n),
        "fingerprint": np.array([f"fp{i}" for i in range(n)], dtype=object),
        "status": status,
        "error": np.array(["too short" if s == FAILED else "" for s in status], dtype=object),
    }


@pytest.mark.parametrize("cut", [[3, 9, 12, 20], [20], [6, 15, 18, 20]])
def test_planned_in_runs_equals_created_whole(tmp_path, cut):
    """Runs of whole writer groups (3 videos each, the last group short), a first group of refused videos (no clips),
    videos with one, two or 'all' clips: the arrays of a cache created whole, and each run's groups as Cache.groups
    gives them."""
    params = BuildParams(size=(16, 20), clip_len=4, stride=2, clips_per_video=None)
    frames = [1, 0, 1, 5, 40, 9, 30, 1, 16, 8, 100, 7, 12, 1, 1, 60, 3, 2, 25, 8]
    paths = [f"c/v{i:02d}.mp4" for i in range(len(frames))]
    table = probed_table(frames)
    counts, clips = plan_clips(table, params)
    whole = {"path": np.array(paths, dtype=object), "label": np.full(len(paths), "c", dtype=object), **table}
    one = Cache.create(str(tmp_path / "one.zarr"), params, "/videos", whole, counts, clips, videos_per_group=3)
    url = str(tmp_path / "runs.zarr")
    grown = create_unplanned(url, params, "/videos", len(paths), videos_per_group=3)
    assert is_planning(grown)
    groups, at = [], 0
    for stop in cut:
        state, _ = plan_state(Cache.open(url, mode="r+"))
        assert state.planned == at
        write_probed(
            Cache.open(url, mode="r+"), range(at, stop), {k: v[at:stop] for k, v in whole.items()}, counts[at:stop]
        )
        _, first, planned = extend_plan(Cache.open(url, mode="r+"), state, counts[at:stop])
        for group in planned:  # each group's share, as its task writes it
            own = slice(group.videos.start - at, group.videos.stop - at)
            vs = slice(group.videos.start, group.videos.stop)
            write_group_plan(Cache.open(url, mode="r+"), group, first[own], counts[vs], clips[vs])
        groups += planned
        at = stop
    assert is_planning(Cache.open(url))  # until the build says every group's share is written
    end_planning(Cache.open(url, mode="r+"))
    assert not is_planning(Cache.open(url))
    assert_same_cache(one.url, url)
    assert groups == one.groups()


def test_extend_refuses_rows_that_cut_a_group(tmp_path):
    params = BuildParams(size=(16, 20), clip_len=4, stride=2, clips_per_video=2)
    paths = [f"v{i}.mp4" for i in range(6)]
    cache = create_unplanned(str(tmp_path / "c.zarr"), params, "/videos", len(paths), videos_per_group=3)
    counts, _ = plan_clips(probed_table([10, 10]), params)
    with pytest.raises(ValueError, match=r"rows 0\.\.1 are not whole writer groups of 3"):
        extend_plan(cache, plan_state(cache)[0], counts)


def test_build_stopped_half_way_through_its_plan_resumes(tiny_dataset, tmp_path):
    """A cache whose plan stopped after its first rows (some computed, none after them planned) is planned on and
    finished by --resume, in-process: the arrays of an uninterrupted build."""
    ref, out = str(tmp_path / "ref.zarr"), str(tmp_path / "half.zarr")
    build_cache(str(tiny_dataset), ref, TINY, progress=False)
    source = list_source(str(tiny_dataset))
    cache = create_cache(out, source, TINY, progress=False, unplanned=True)
    planner = Planner(cache, source, TINY)
    probed = {k: v[:2] for k, v in planner.probe_rest().items()}
    tasks = planner.extend(probed, written=False)
    write_task_plan(cache, tasks[0])
    run_group(tasks[0])  # one group computed, one planned and pending, the rest not planned
    assert is_planning(Cache.open(out)) and plan_state(Cache.open(out))[0].planned == 2
    report = build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert (report.n_done, report.n_computed) == (6, 5)
    assert not is_planning(Cache.open(out))
    assert_same_cache(ref, out)


@pytest.mark.parametrize("stage", ["every video probed", "every video planned"])
def test_build_stopped_after_probing_every_video_resumes(tiny_dataset, tmp_path, stage):
    """Stopped after the probe tasks wrote every row, before the driver planned them (no slots yet) or after it did
    (no group's share of the plan written yet): --resume plans on, in-process, to the arrays of an uninterrupted
    build."""
    ref, out, _ = stopped_while_planning(tiny_dataset, tmp_path, stage)
    report = build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert (report.n_done, report.n_computed) == (6, 6)
    assert not is_planning(Cache.open(out))
    assert_same_cache(ref, out)


def stopped_while_planning(tiny_dataset, tmp_path, stage: str) -> tuple[str, str, int]:
    """(an uninterrupted build's cache, a cache of the same videos stopped while planning, its rows planned). Stages:
    'half planned': one group (video 0) computed, one (video 1) planned and pending with its share of the plan not
    written yet (its first clip reads 0), the rest not planned; 'every video probed': the probe tasks wrote every row,
    the driver planned none; 'every video planned': the driver planned them too, and no group task started."""
    ref, out = str(tmp_path / "ref.zarr"), str(tmp_path / "planning.zarr")
    build_cache(str(tiny_dataset), ref, TINY, progress=False)
    source = list_source(str(tiny_dataset))
    cache = create_cache(out, source, TINY, progress=False, unplanned=True)
    planner = Planner(cache, source, TINY)
    probed = planner.probe_rest()
    if stage == "half planned":
        tasks = planner.extend({k: v[:2] for k, v in probed.items()}, written=False)
        write_task_plan(cache, tasks[0])
        run_group(tasks[0])
    else:
        counts, _ = plan_clips(probed, TINY)
        write_probed(cache, range(6), {"path": planner.paths, "label": planner.labels, **probed}, counts)
        if stage == "every video planned":
            planner.extend(probed)
    planned = plan_state(Cache.open(out))[0].planned
    assert is_planning(Cache.open(out)) and planned == (2 if stage == "half planned" else 6)
    return ref, out, planned


@pytest.mark.parametrize("stage", ["half planned", "every video probed"])
def test_verify_of_a_cache_stopped_while_planning_says_so_and_fix_leaves_the_plan(
    tiny_dataset, tmp_path, stage, capsys
):
    """Rows without a status are not planned yet, not damage: `verify` checks the planned rows, says the cache is
    being planned (or was stopped while planning) and that --resume plans on; `verify --fix` marks nothing pending
    and writes nothing, and --resume then finishes to the arrays of an uninterrupted build."""
    ref, out, planned = stopped_while_planning(tiny_dataset, tmp_path, stage)
    before = cache_arrays(out)
    capsys.readouterr()
    assert cache_main(["verify", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [] and report["planning"] == {"planned": planned, "videos": 6}
    assert cache_main(["verify", out]) == 0
    said = capsys.readouterr().out
    assert re.search(rf"being planned.*stopped while planning.*{planned} of 6 videos planned", said), said
    assert f"fame-pipeline build --out {out} --resume" in said
    assert cache_main(["verify", out, "--fix"]) == 0
    assert "marked" not in capsys.readouterr().err
    after = cache_arrays(out)
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    report = build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert report.n_done == 6 and not is_planning(Cache.open(out))
    assert_same_cache(ref, out)


@pytest.mark.parametrize("stage", ["half planned", "every video probed"])
def test_gc_refuses_a_cache_stopped_while_planning_and_leaves_it(tiny_dataset, tmp_path, stage, capsys):
    """gc reads the whole video table: the rows not planned yet (no status) would be dropped as not done and the plan
    lost. It refuses, as a dry run too (exit 3, like its other refusals), naming the cache and --resume, and writes
    nothing; --resume then finishes to the arrays of an uninterrupted build."""
    ref, out, planned = stopped_while_planning(tiny_dataset, tmp_path, stage)
    before = cache_arrays(out)
    capsys.readouterr()
    for argv in (["gc", out, "--dry-run"], ["gc", out], ["gc", out, "--json"]):
        assert cache_main(argv) == 3, argv
        said = capsys.readouterr()
        assert "drop" not in said.out, said.out
        assert re.search(rf"{re.escape(out)}: still being planned.*stopped while planning.*{planned} of 6", said.err)
        assert f"`fame-pipeline build --out {out} --resume` finishes it" in said.err, said.err
    after = cache_arrays(out)
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not list(tmp_path.glob("*.gc-*"))
    build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert_same_cache(ref, out)


def test_verify_fix_rebuilds_the_clip_table_of_a_cache_stopped_while_planning_from_planned_rows(
    tiny_dataset, tmp_path, capsys
):
    """A damaged clips/video chunk (video 0's slots) in a cache stopped while planning: --fix rebuilds the column from
    the planned rows at their planned slots. Video 1 is planned but its group's share of the plan is not written (its
    first clip reads 0), and rows not planned may hold clip counts (a probe task killed before their status): neither
    may claim video 0's slots. --resume then finishes to the arrays of an uninterrupted build."""
    ref, out, planned = stopped_while_planning(tiny_dataset, tmp_path, "half planned")
    cache = Cache.open(out, mode="r+")
    assert list(cache.videos("first_clip")[:2]) == [0, 0] and list(cache.videos("n_clips")[:2]) == [2, 2]
    cache.root["videos/n_clips"][planned:] = np.full(6 - planned, 2, np.int32)  # probed, no status yet
    chunk = tmp_path / "planning.zarr" / "clips" / "video" / "c" / "0"  # absent when it held the fill value (0, 0)
    chunk.parent.mkdir(exist_ok=True)
    chunk.write_bytes(b"not a chunk")
    capsys.readouterr()
    assert cache_main(["verify", out, "--fix", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {p["kind"] for p in report["problems"]} == {"clip-table", "layout"} and report["fixed"] == [0]
    slots = Cache.open(out).n_slots
    fixed, whole = Cache.open(out).root["clips/video"][:], Cache.open(ref).root["clips/video"][:slots]
    np.testing.assert_array_equal(fixed, whole)  # video 0's slots are its own; video 1's where its plan puts them
    assert cache_main(["verify", out]) == 0 and "2 of 6 videos planned" in capsys.readouterr().out
    build_cache(str(tiny_dataset), out, TINY, resume=True, progress=False)
    assert_same_cache(ref, out)


def test_info_of_a_cache_stopped_while_planning_says_the_plan_is_unfinished(tiny_dataset, tmp_path, capsys):
    """info counts the planned rows only; a line (and `planning` in the JSON) says the plan is unfinished and how far
    it got, so those counts are not taken for the whole cache's. A finished cache has neither."""
    ref, out, planned = stopped_while_planning(tiny_dataset, tmp_path, "half planned")
    capsys.readouterr()
    assert cache_main(["info", out]) == 0
    said = capsys.readouterr().out
    assert "videos       2 total" in said
    line = next((x for x in said.splitlines() if x.startswith("planning ")), "")
    assert re.search(r"unfinished: 2 of 6 videos planned.*stopped while planning", line), said
    assert f"fame-pipeline build --out {out} --resume" in line
    assert cache_main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["planning"] == {"planned": planned, "videos": 6} and info["videos"]["total"] == planned
    assert cache_main(["info", ref, "--json"]) == 0 and json.loads(capsys.readouterr().out)["planning"] is None
    assert cache_main(["info", ref]) == 0
    assert not [x for x in capsys.readouterr().out.splitlines() if x.startswith("planning ")]


def test_ls_says_which_caches_are_still_being_planned(tiny_dataset, tmp_path, capsys):
    """ls counts a planning cache's planned rows, like info, and says under it that the plan is unfinished."""
    ref, out, planned = stopped_while_planning(tiny_dataset, tmp_path, "half planned")
    capsys.readouterr()
    assert cache_main(["ls", str(tmp_path), "--json"]) == 0
    entries = {e["url"].rstrip("/"): e for e in json.loads(capsys.readouterr().out)}
    assert entries[out]["planning"] == {"planned": planned, "videos": 6}
    assert entries[ref]["planning"] is None
    assert cache_main(["ls", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert f"planning unfinished: {planned} of 6 videos planned; `fame-pipeline build --out" in said
    assert said.count("planning unfinished") == 1, said

"""The offline build: videos -> a Zarr cache of per-clip foreground masks and background plates.

Two phases. Plan: list the source, probe every video in parallel (a probe failure fails that video, with its
reason, and gives it no clips), record each file's size and content fingerprint (and mtime, for a person), lay out the
clips and create the cache. Compute: one task per writer group (see `pipeline.job`), in-process for small jobs or on
Ray. `resume` finishes a cache by recomputing every group that holds a video not `done`; the work is deterministic, so
the bytes match an uninterrupted build. `append` adds the source's videos that the cache lacks as a new segment
(`Cache.append`) and computes only them: no committed video's chunk is written again. On Ray the phases overlap: the
workers probe and each group is computed once planned (`pipeline.planner`), to the same bytes.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import numpy as np
from tqdm import tqdm

from pipeline.cache import DONE, FAILED, Cache, CacheError
from pipeline.cache.find import find_cache, find_cache_to_grow, new_cache_path
from pipeline.cache.fingerprint import source_changes
from pipeline.cache.layout import has_computed_data, metadata_summary
from pipeline.cache.lock import LockError, is_lock_file, writer_lock
from pipeline.cache.planning import create_unplanned, is_planning
from pipeline.cache.unfinished import find_unfinished_append
from pipeline.job import GroupResult, GroupTask, VideoResult
from pipeline.params import RAY_MIN_VIDEOS_PER_WORKER, BuildParams
from pipeline.plan import plan_clips
from pipeline.planner import Planner, plan_source_problem
from pipeline.probe import columns, probe_row
from pipeline.report import BuildReport, check_report_path
from pipeline.runners import InProcessRunner, RayRunner
from pipeline.sources import Source, SourceError, is_url, list_source

__all__ = ["BuildError", "BuildReport", "build_cache", "resolve_out", "videos_per_group"]


class BuildError(Exception):
    """A build that cannot run as asked (bad source, a cache that must not be touched), with the reason."""


def runs_on_ray(n_videos: int, workers: int, address: str | None, ray: bool | None = None) -> bool:
    """Whether a build's tasks run on Ray: always on a cluster (`address`); locally as `ray` says when given, else
    with several workers and enough videos for each to repay Ray's start-up."""
    if address is not None:
        return True
    if ray is not None:
        return ray
    return workers > 1 and n_videos >= RAY_MIN_VIDEOS_PER_WORKER * workers


TABLE_CHUNKS = 4096  # past 32,768 videos, groups grow so each video-table column stays near this many chunks...
MAX_VIDEOS_PER_GROUP = 64  # ...up to this many videos (a group's masks are held in memory until it commits)


def videos_per_group(n_videos: int) -> int:
    """Writer group size: small jobs get many groups (parallelism), big ones fewer shards. Each group is a chunk of
    every video-table column, and a reader opening the cache reads whole columns, one request per chunk (0.3 ms
    each on a local disk, a round trip on an object store): so from 32,768 videos on, groups grow to keep a column
    near `TABLE_CHUNKS` chunks (Kinetics-700's 650,000 videos: 64 a group, 10,157 chunks a column instead of
    81,250). Depends on the video count only, so the layout (and the bytes) never depend on how many workers ran."""
    small = min(8, max(1, n_videos // 32))
    return int(min(MAX_VIDEOS_PER_GROUP, max(small, math.ceil(n_videos / TABLE_CHUNKS))))


# ---- plan phase: probe the videos, plan their clips (pipeline.plan), create the cache --------------------------------


def probe_videos(
    source: Source, params: BuildParams, threads: int = 8, progress: bool = True, only: set[str] | None = None
) -> dict[str, np.ndarray]:
    """The video table of a source (`only`: of those of its videos), probed in parallel threads (I/O and FFmpeg
    release the GIL)."""
    entries = [e for e in source.entries if only is None or e.path in only]
    rels = [e.path for e in entries]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = list(
            tqdm(
                pool.map(lambda rel: probe_row(source.root, rel, params), rels),
                total=len(rels),
                desc="probe",
                unit="video",
                disable=not progress,
                leave=False,
            )
        )
    table = {
        "path": np.array(rels, dtype=object),
        "label": np.array([e.label for e in entries], dtype=object),
    }
    return table | columns(rows)


def source_info(source: Source, spec: str | None, split: str | None, n_videos: int) -> dict[str, Any]:
    """What a build or an append covered, as the cache's `sources` attribute records it (shown by `fame-cache ls`):
    the folder or list file given (absolute, or the URL), the split, the videos' root and how many videos it added."""
    given = spec if spec is None or is_url(spec) else os.path.abspath(spec)
    return {"source": given or source.root, "split": split, "videos_root": source.root, "videos": n_videos}


def create_cache(
    out: str,
    source: Source,
    params: BuildParams,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    unplanned: bool = False,
) -> Cache:
    """The plan phase whole: a new cache at out holding the source's planned videos and clips, nothing computed.
    `unplanned`: only the source's list, each video planned as the build goes (`pipeline.planner`)."""
    per_group = videos_per_group(len(source.entries))
    if unplanned:
        return create_unplanned(out, params, source.root, len(source.entries), per_group, info)
    table = probe_videos(source, params, progress=progress)
    counts, frames = plan_clips(table, params)
    return Cache.create(out, params, source.root, table, counts, frames, videos_per_group=per_group, source_info=info)


def append_videos(
    cache: Cache, source: Source, new: set[str], params: BuildParams, progress: bool, info: dict[str, Any] | None
) -> range:
    """The plan phase of an append: probe the source's videos named in `new`, plan their clips and add them to the
    cache (`Cache.append`), nothing computed; their rows."""
    table = probe_videos(source, params, progress=progress, only=new)
    counts, frames = plan_clips(table, params)
    return cache.append(table, counts, frames, info)


# ---- opening or refusing an existing output --------------------------------------------------------------------------


def _exists_non_empty(url: str) -> bool:
    fs, inner = fsspec.core.url_to_fs(url)
    if not fs.exists(inner):
        return False
    return not fs.isdir(inner) or any(not is_lock_file(e) for e in fs.ls(inner, detail=False))


def _sound_metadata(cache: Cache) -> bool:
    """Whether every node's metadata is what the cache's numbers give. When it is not, the cache was either killed
    while Cache.create made its arrays (nothing computed yet: plan again) or damaged since (refuse: see below)."""
    problem = metadata_summary(cache.url, cache.attrs)
    if problem and find_unfinished_append(cache) is not None:
        raise BuildError(
            f"{cache.url}: {problem}: an append stopped while it grew the arrays. Run `fame-cache verify --fix "
            f"{cache.url}`, which removes what it wrote, then the append again (--append)"
        )
    if problem and has_computed_data(cache.url):
        raise BuildError(
            f"{cache.url}: {problem}; refusing to re-plan a cache that holds computed clips. Run "
            f"`fame-cache verify --fix {cache.url}`, which rewrites damaged metadata, then --resume"
        )
    return problem is None


def _new_videos(cache: Cache, source: Source, append: bool) -> set[str]:
    """The source's videos the cache lacks: none unless `append`. Refuses a cache holding videos the source no
    longer lists, and (without append) a source that lists videos the cache lacks."""
    have = {str(p) for p in cache.videos("path")[: cache.committed_videos()]}
    want = {e.path for e in source.entries}
    missing, extra = sorted(want - have), sorted(have - want)
    if extra:
        raise BuildError(
            f"{cache.url}: the cache holds {len(extra)} video(s) the source does not list (e.g. {extra[:3]}); a cache "
            "only grows: build this source into a new --out (or under --cache-root, which finds or makes its cache)"
        )
    if missing and not append:
        raise BuildError(
            f"{cache.url}: the source lists {len(missing)} video(s) the cache lacks (e.g. {missing[:3]}); pass "
            "--append to add them to this cache, or build into a new --out"
        )
    return set(missing)


def _check_sources_unchanged(cache: Cache, source: Source) -> None:
    """Done videos must still be the files they were computed from (by size and content fingerprint)."""
    table = cache.video_table()
    done = np.flatnonzero(table["status"] == DONE)
    changes = source_changes(source.root, table, done)
    if changes:
        raise BuildError(
            f"{cache.url}: {len(changes)} source video(s) changed since they were computed: "
            f"{', '.join(map(str, changes[:5]))}; run `fame-cache verify --fix` to mark them for recomputation, "
            "then --resume"
        )


def open_or_create(
    out: str,
    source: Source,
    params: BuildParams,
    resume: bool,
    progress: bool,
    append: bool = False,
    info: dict[str, Any] | None = None,
    unplanned: bool = False,
) -> tuple[Cache, bool]:
    """The cache to fill and whether it existed. Refuses other params, and a non-empty output without resume or
    append; with append, adds the source's videos the cache lacks (`info`: the source's record, see source_info).
    A new cache is made `unplanned` when asked (see create_cache); one whose plan stopped half-way is planned on
    by the build first, before any append."""
    if Cache.exists(out):
        cache = Cache.open(out, mode="r+")
        diffs = params.differences(cache.params)
        if diffs:
            shown = ", ".join(f"{k}: asked {a!r}, cache has {b!r}" for k, (a, b) in diffs.items())
            raise BuildError(f"{out}: existing cache was built with other parameters ({shown}); choose another --out")
        if not (resume or append):
            raise BuildError(
                f"{out}: a cache already exists here; pass --resume to finish it, --append to add the source's new "
                "videos to it, or choose another --out"
            )
        if _sound_metadata(cache):
            if is_planning(cache):  # the rest of its videos are planned by the build (see _fill)
                if problem := plan_source_problem(cache, source):
                    raise BuildError(problem)
                _check_sources_unchanged(cache, source)
                return cache, True
            new = _new_videos(cache, source, append)
            _check_sources_unchanged(cache, source)
            if new:
                append_videos(cache, source, new, params, progress, info and {**info, "videos": len(new)})
                cache = Cache.open(out, mode="r+")  # the grown arrays, seen afresh
            return cache, True
        # Killed while creating: nothing was computed yet, plan again.
    elif _exists_non_empty(out):
        raise BuildError(f"{out}: exists and is not a FAME cache; refusing to write over it")
    return create_cache(out, source, params, progress, info, unplanned), False


def resolve_out(
    out: str | None,
    cache_root: str | None,
    params: BuildParams,
    *,
    src: str | Source | None = None,
    videos_root: str | None = None,
    split: str | None = None,
    append: bool = False,
) -> str:
    """--out as given, or under --cache-root the cache for these parameters and the videos of `src`: the one holding
    exactly them; with append, the one holding the most of them and no others (it grows); else a new one
    (`pipeline.cache.find.new_cache_path`). Without `src`, the cache with the same parameters, or ROOT/<hash>.zarr."""
    if cache_root:
        if src is None:
            return find_cache(cache_root, params) or new_cache_path(cache_root, params, ())
        videos = [e.path for e in (src if isinstance(src, Source) else _list_videos(src, videos_root, split)).entries]
        found = find_cache(cache_root, params, videos)
        if found is None and append:
            found = find_cache_to_grow(cache_root, params, videos)
        return found or new_cache_path(cache_root, params, videos)
    if not out:
        raise BuildError("give --out CACHE.zarr or --cache-root ROOT")
    return out


# ---- compute phase ------------------------------------------------------------------------------------------------


def _tasks(cache: Cache, params: BuildParams, source_root: str) -> list[GroupTask]:
    """One task per group that holds a video still to compute (not done and given clip slots)."""
    table = cache.video_table()
    tasks = []
    for group in cache.groups():
        vs = slice(group.videos.start, group.videos.stop)
        todo = (table["status"][vs] != DONE) & (table["n_clips"][vs] > 0)
        if not todo.any():
            continue
        tasks.append(
            GroupTask(
                cache_url=cache.url,
                source_root=source_root,
                params=params,
                group=group,
                paths=tuple(str(p) for p in table["path"][vs]),
                n_frames=table["n_frames"][vs],
                n_clips=table["n_clips"][vs],
                first_clip=table["first_clip"][vs],
                status=tuple(str(s) for s in table["status"][vs]),
                error=tuple(str(e) for e in table["error"][vs]),
                bytes=table["bytes"][vs],
                mtime=table["mtime"][vs],
                fingerprint=tuple(str(f) for f in table["fingerprint"][vs]) if "fingerprint" in table else (),
                cost=float(
                    np.sum(todo * table["n_frames"][vs] * table["height"][vs].astype(np.float64) * table["width"][vs])
                ),
            )
        )
    return tasks


def _fail_group(cache: Cache, task: GroupTask, exc: BaseException) -> GroupResult:
    """A task that died for good: mark its unfinished videos failed (its shards stay unreadable)."""
    reason = f"group task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    todo = [task.group.videos.start + i for i, s in enumerate(task.status) if s != DONE and task.n_clips[i] > 0]
    # Only this group's rows of the columns: other tasks may be writing theirs.
    cache.mark({v: (FAILED, reason) for v in todo}, within=task.group.videos)
    result = GroupResult(task.group.index)
    for i, rel in enumerate(task.paths):
        video = task.group.videos.start + i
        state = FAILED if video in todo else task.status[i]
        result.videos.append(VideoResult(video, rel, state, reason if video in todo else task.error[i], 0))
    return result


def _waves(tasks: list[GroupTask], videos_per_group: int) -> list[list[GroupTask]]:
    """The tasks in waves run one after another, so no two tasks of a wave share a chunk of the video table (their
    status writes would overwrite each other). Groups share one only after an append that began mid-chunk, and only
    when the old group must be computed again too: almost always there is one wave."""
    waves: list[list[GroupTask]] = []
    seen: dict[int, int] = {}
    for task in tasks:
        chunk = task.group.videos.start // videos_per_group
        wave = seen[chunk] = seen.get(chunk, -1) + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(task)
    return waves


def _compute(
    cache: Cache,
    tasks: list[GroupTask],
    runner: InProcessRunner | RayRunner,
    progress: bool,
    planner: Planner | None = None,
) -> tuple[int, int, float, float]:
    """Run the group tasks (with `planner`: plan the videos not planned, computing each group once planned), then
    close the runner: (videos computed, clips computed, seconds before the runner's shut-down, seconds to the first
    group's outcome). A task that died for good fails its videos; videos refused when planned count as not
    computed."""
    computed = clips = 0
    t0 = time.perf_counter()
    first = 0.0
    if planner is None:
        refused = (cache.videos("status") == FAILED) & (cache.videos("n_clips") == 0)  # failed when planned
        n_todo = sum(len(t.paths) for t in tasks)
        per_group = int(cache.attrs["layout"]["videos_per_group"])
        outcomes = (outcome for wave in _waves(tasks, per_group) for outcome in runner.run(wave))
    else:  # refused: filled in as the planner plans, before any of a group's outcomes
        refused, n_todo, outcomes = planner.refused, planner.n_videos, planner.outcomes(runner)
    failed_now = int(refused.sum())
    bar = tqdm(total=n_todo, desc="build", unit="video", disable=not progress, dynamic_ncols=True)
    try:
        for task, outcome in outcomes:
            result = _fail_group(cache, task, outcome) if isinstance(outcome, BaseException) else outcome
            first = first or time.perf_counter() - t0
            attempted = [v for v in result.videos if not refused[v.video]]
            computed += len(attempted)
            clips += result.clips
            failed_now += sum(v.status == FAILED for v in attempted)
            bar.update(len(result.videos))
            rate = clips / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:.1f} clips/s, {failed_now} failed", refresh=False)
        compute_seconds = time.perf_counter() - t0  # before Ray's shut-down
    finally:
        bar.close()
        runner.close()
    return computed, clips, compute_seconds, first


# ---- the build: both phases, under the writer lock -------------------------------------------------------------------


def _absolute(out: str) -> str:
    return out if is_url(out) else os.path.abspath(out)


def _check_request(workers: int, report_path: str | None) -> None:
    """Refuse bad arguments now, not after the whole build."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if report_path:
        try:
            check_report_path(report_path)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc


def _list_videos(src: str, videos_root: str | None, split: str | None = None) -> Source:
    """The source's videos (`split`: the part of HMDB51 split files); a source that cannot be listed, or lists none,
    is a BuildError."""
    try:
        source = list_source(src, videos_root, split)
    except SourceError as exc:
        raise BuildError(str(exc)) from exc
    if not source.entries:
        raise BuildError(f"{src}: no videos found (extensions: .mp4, .avi, .mkv, .webm, ...)")
    return source


def build_cache(
    src: str | Source,
    out: str,
    params: BuildParams,
    *,
    workers: int = 1,
    address: str | None = None,
    resume: bool = False,
    videos_root: str | None = None,
    progress: bool = True,
    report_path: str | None = None,
    force_unlock: bool = False,
    split: str | None = None,
    append: bool = False,
    ray: bool | None = None,
) -> BuildReport:
    """Build (or with resume, finish; with append, grow by the source's videos it lacks, then finish) the cache of
    `src` at `out` and return what happened.

    The cache's writer lock (see `pipeline.cache.lock`) is held from before the cache is opened or created to the end,
    so a second build of the same cache is refused before it touches anything; force_unlock removes a dead holder's
    lock. `ray`: run on a local Ray (True) or in this process (False) whatever the job's size; None decides by size
    (`runs_on_ray`)."""
    _check_request(workers, report_path)
    start = time.perf_counter()
    out = _absolute(out)
    source = src if isinstance(src, Source) else _list_videos(src, videos_root, split)  # a Source: a cache's own list
    info = None if isinstance(src, Source) else source_info(source, src, split, len(source.entries))
    try:
        with writer_lock(out, "fame-pipeline build", force=force_unlock):
            n_videos = len(source.entries)
            on_ray = runs_on_ray(n_videos, workers, address, ray)
            unplanned = on_ray and n_videos > videos_per_group(n_videos)  # the workers plan; groups start once planned
            opened = _open_for_build(out, source, params, resume, progress, append, info, unplanned)
            return _fill(opened, source, out, params, start, workers, address, progress, report_path, on_ray)
    except LockError as exc:
        raise BuildError(str(exc)) from exc


def _open_for_build(
    out: str,
    source: Source,
    params: BuildParams,
    resume: bool,
    progress: bool,
    append: bool,
    info: dict[str, Any] | None,
    unplanned: bool = False,
) -> Cache:
    """The cache to fill (see open_or_create); when its videos have moved, it reads them where the source has them."""
    try:
        cache, existed = open_or_create(out, source, params, resume, progress, append, info, unplanned)
    except CacheError as exc:
        raise BuildError(str(exc)) from exc
    if existed and cache.source_root != source.root:  # the same videos, moved: read them where they are now
        cache.root.attrs["source_root"] = source.root
    return cache


def _failures(cache: Cache, status: np.ndarray, source: Source) -> list[tuple[str, str]]:
    """(path, reason) of every failed video (`status`: the cache's status column), and of those the source listed
    but left out: they were never planned, and are reported with the failed videos."""
    errors, paths = cache.videos("error"), cache.videos("path")
    failures = [(str(paths[v]), str(errors[v])) for v in np.flatnonzero(status == FAILED)]
    return failures + list(source.left_out)


def _fill(
    cache: Cache,
    source: Source,
    out: str,
    params: BuildParams,
    start: float,
    workers: int,
    address: str | None,
    progress: bool,
    report_path: str | None,
    on_ray: bool,
) -> BuildReport:
    """The build proper, run while holding the writer lock on the cache it opened or created: compute what is
    missing, on Ray (`on_ray`, see `runs_on_ray`) or in this process's threads."""
    plan_seconds = time.perf_counter() - start  # listing, probing, creating (or opening) the cache
    planner = Planner(cache, source, params) if is_planning(cache) else None  # plans as it computes
    tasks = [] if planner else _tasks(cache, params, source.root)
    many = planner.n_videos > planner.state.per_group if planner else len(tasks) > 1
    use_ray = many and on_ray
    runner = RayRunner(workers, address) if use_ray else InProcessRunner(threads=max(2, workers))
    compute_start = time.perf_counter()
    computed, clips, compute_seconds, first = _compute(cache, tasks, runner, progress, planner)
    driver_seconds, probe_seconds = plan_seconds, 0.0
    if planner:
        driver_seconds += planner.stats.driver_seconds
        probe_seconds = planner.stats.probe_seconds
        plan_seconds = (planner.stats.planned_at or compute_start) - start
    status = cache.videos("status")
    failures = _failures(cache, status, source)
    report = BuildReport(
        n_videos=len(status),
        n_done=int((status == DONE).sum()),
        n_failed=len(failures),
        failures=failures,
        n_clips=len(cache.readable_clips()),
        seconds=round(time.perf_counter() - start, 3),
        out=out,
        n_computed=computed,
        clips_computed=clips,
        params=params.to_dict(),
        params_hash=params.params_hash(),
        plan_seconds=round(plan_seconds, 3),
        compute_seconds=round(compute_seconds, 3),
        workers=workers,
        mode="ray" if use_ray else "in-process",
        nodes=len(set(runner.nodes.values())),
        plan_driver_seconds=round(driver_seconds, 3),
        probe_seconds=round(probe_seconds, 3),
        first_group_seconds=round(compute_start - start + first, 3) if first else 0.0,
    )
    if report_path:
        report.write(report_path)
    return report

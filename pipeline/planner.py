"""Planning as Ray work: the workers probe the videos, in batches near the data; the driver only assembles the video
table, a run of whole writer groups at a time (`pipeline.cache.planning.extend_plan`), and starts each group's task
as soon as its rows are planned. So a cluster computes clips within seconds of the start instead of waiting for a
plan of the whole source, and the driver's own work is a small fixed cost per video (`PlanStats.driver_seconds`).

In-process (`--workers 1`) the same planner probes in threads and plans the rest in one step, then computes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.cache import DONE, FAILED, STATUSES, Cache, Group
from pipeline.cache.planning import end_planning, extend_plan, grow_slots, plan_state, write_group_plan, write_probed
from pipeline.job import GroupResult, GroupTask
from pipeline.params import BuildParams
from pipeline.plan import clip_frames, plan_clips
from pipeline.probe import PROBED, TEXT, probe_rows
from pipeline.runners import TASK_RETRIES, InProcessRunner, RayRunner, _run_on_node
from pipeline.sources import Source

PROBE_BATCH = 64  # videos per probe task (whole writer groups): ~1 s of a worker's time at ~20 ms a probe
PROBES_PER_CPU = 2  # probe tasks in flight per CPU of the cluster: enough to keep every worker fed
EXTEND_SECONDS = 0.5  # the driver extends the plan at most this often while probes are in flight...
EXTEND_ROWS = 2048  # ...unless this many rows are ready
IN_PROCESS_THREADS = 8  # probe threads of an in-process plan (I/O and FFmpeg release the GIL)

Outcome = tuple[GroupTask, GroupResult | BaseException]


@dataclass
class PlanStats:
    """What planning cost: the driver's own seconds (submitting probes, taking their columns, extending the cache,
    making and submitting group tasks) and the workers' seconds probing, summed over tasks."""

    videos: int = 0
    batches: int = 0
    extensions: int = 0
    driver_seconds: float = 0.0
    probe_seconds: float = 0.0
    planned_at: float = 0.0  # time.perf_counter() when the last row was planned


def group_task(
    url: str, source_root: str, params: BuildParams, group: Group, table: dict[str, np.ndarray]
) -> GroupTask:
    """The task of one writer group; `table`: the video table's columns of its rows."""
    todo = (table["status"] != DONE) & (table["n_clips"] > 0)
    pixels = table["n_frames"] * table["height"].astype(np.float64) * table["width"]
    return GroupTask(
        cache_url=url,
        source_root=source_root,
        params=params,
        group=group,
        paths=tuple(str(p) for p in table["path"]),
        n_frames=table["n_frames"],
        n_clips=table["n_clips"],
        first_clip=table["first_clip"],
        status=tuple(str(s) for s in table["status"]),
        error=tuple(str(e) for e in table["error"]),
        bytes=table["bytes"],
        mtime=table["mtime"],
        fingerprint=tuple(str(f) for f in table["fingerprint"]) if "fingerprint" in table else (),
        cost=float(np.sum(todo * pixels)),
    )


def probe_batch(url: str, root: str, rels: list[str], labels: list[str], first_row: int, params: BuildParams) -> dict:
    """A planning task: probe the videos of rows first_row.. and write their rows into the cache (`write_probed`);
    their columns, and the task's seconds (`seconds`), go back to the driver."""
    start = time.perf_counter()
    probed = probe_rows(root, rels, params)
    probed.pop("seconds")
    counts, _ = plan_clips(probed, params)
    table = {"path": np.asarray(rels, dtype=object), "label": np.asarray(labels, dtype=object), **probed}
    write_probed(Cache.open(url, mode="r+"), range(first_row, first_row + len(rels)), table, counts)
    return {**probed, "seconds": time.perf_counter() - start}


def write_task_plan(cache: Cache, task: GroupTask) -> None:
    """The group's share of the plan (`write_group_plan`), from its task."""
    frames = [clip_frames(int(n), task.params) if c else None for n, c in zip(task.n_frames, task.n_clips, strict=True)]
    write_group_plan(cache, task.group, task.first_clip, task.n_clips, frames)


def plan_and_run(task: GroupTask) -> tuple[GroupResult, str]:
    """A planned group's Ray task: its share of the plan written first, then the group computed (`_run_on_node`)."""
    write_task_plan(Cache.open(task.cache_url, mode="r+"), task)
    return _run_on_node(task)


def _has_work(table: dict[str, np.ndarray]) -> bool:
    return bool(((table["status"] != DONE) & (table["n_clips"] > 0)).any())


def _failed_columns(n: int, reason: str) -> dict[str, np.ndarray]:
    """Probed columns of rows whose probe task died for good: refused, with the reason."""
    out = {key: np.zeros(n, dtype=object if key in TEXT else np.float64) for key in PROBED}
    out["fingerprint"][:], out["status"][:], out["error"][:] = "", FAILED, reason
    return out


def plan_source_problem(cache: Cache, source: Source) -> str | None:
    """Why a cache stopped half-way through its plan cannot be planned on from `source` (it must list the same
    videos: the rows not planned are the source's), or None."""
    listed = [e.path for e in source.entries]
    paths, status = cache.videos("path"), cache.videos("status")
    written = np.isin(status, STATUSES)
    if len(listed) != len(paths) or any(str(p) != q for p, q, w in zip(paths, listed, written, strict=True) if w):
        return (
            f"{cache.url}: its plan stopped half-way and the source no longer lists the videos it began with "
            f"({len(paths)}, now {len(listed)}); build into a new --out"
        )
    return None


class Planner:
    """Plans the rows of a cache made by `create_unplanned` (or one whose plan stopped half-way: the source must list
    the cache's videos, see `pipeline.build`) and yields the group tasks' outcomes as `runner.run` does."""

    def __init__(self, cache: Cache, source: Source, params: BuildParams) -> None:
        self.cache, self.source_root, self.params = cache, source.root, params
        self.state, self.first = plan_state(cache)
        self.paths = np.array([e.path for e in source.entries], dtype=object)
        self.labels = np.array([e.label for e in source.entries], dtype=object)
        self.n_videos = len(self.paths)
        self.refused = np.zeros(self.n_videos, bool)  # failed when planned: not computed
        self.stats = PlanStats()
        if self.state.planned:  # a plan stopped half-way: rows probed before it stopped may lack their slots
            grow_slots(cache, self.state, self.state.slots_after(self.state.cursor))

    def batches(self) -> list[range]:
        """The rows still to plan, in probe tasks of whole writer groups."""
        per_group = self.state.per_group
        size = max(per_group, PROBE_BATCH // per_group * per_group)
        return [range(a, min(a + size, self.n_videos)) for a in range(self.state.planned, self.n_videos, size)]

    def planned_tasks(self) -> list[GroupTask]:
        """Tasks of the groups already planned (a plan stopped half-way) that hold videos still to compute."""
        planned = self.state.planned
        if not planned:
            return []
        table = {name: column[:planned] for name, column in self.cache.video_table().items()}
        table["first_clip"] = self.first
        self.refused[:planned] = (table["status"] == FAILED) & (table["n_clips"] == 0)
        groups = self.state.groups(range(0, planned), self.first, self.state.cursor)
        return self._tasks(groups, table, 0)

    def extend(self, table: dict[str, np.ndarray], written: bool = True) -> list[GroupTask]:
        """Plan the next rows from their probed columns (`written`: their rows are in the cache, written by the
        probe tasks); the tasks of their groups that have work. Each task writes its group's share of the plan."""
        counts, _ = plan_clips(table, self.params)
        rows = range(self.state.planned, self.state.planned + len(counts))
        full = {**table, "path": self.paths[rows.start : rows.stop], "label": self.labels[rows.start : rows.stop]}
        if not written:
            write_probed(self.cache, rows, full, counts)
        rows, first, groups = extend_plan(self.cache, self.state, counts)
        full["n_clips"], full["first_clip"] = np.asarray(counts, np.int32), first
        full["n_frames"] = np.asarray(full["n_frames"], np.int32)
        self.refused[rows.start : rows.stop] = (full["status"] == FAILED) & (full["n_clips"] == 0)
        self.stats.videos += len(rows)
        self.stats.extensions += 1
        if self.state.planned == self.n_videos:
            self.stats.planned_at = time.perf_counter()
        return self._tasks(groups, full, rows.start)

    def _tasks(self, groups: list[Group], table: dict[str, np.ndarray], offset: int) -> list[GroupTask]:
        """The tasks of the groups with work; a group with none that is not done gets its share of the plan here."""
        tasks = []
        for group in groups:
            part = {k: v[group.videos.start - offset : group.videos.stop - offset] for k, v in table.items()}
            task = group_task(self.cache.url, self.source_root, self.params, group, part)
            if _has_work(part):
                tasks.append(task)
            elif (part["status"] != DONE).any():  # refused videos only: nothing computes, the plan is written here
                write_task_plan(self.cache, task)
        return tasks

    # ---- running -------------------------------------------------------------------------------------------------
    def outcomes(self, runner: InProcessRunner | RayRunner) -> Iterator[Outcome]:
        """Plan every row not planned and compute every group with videos to compute; outcomes as they finish. The
        plan ends (`end_planning`) once every group's share of it is written: a build stopped before is planned on."""
        if isinstance(runner, RayRunner):
            yield from self._on_ray(runner)
        else:
            yield from self._in_process(runner)
        end_planning(self.cache)

    def _in_process(self, runner: InProcessRunner) -> Iterator[Outcome]:
        """Probe the rest here in threads, plan it in one step, write every group's share, then compute."""
        t0 = time.perf_counter()
        tasks = self.planned_tasks()
        if self.state.planned < self.n_videos:
            tasks += self.extend(self.probe_rest(), written=False)
        for task in tasks:
            write_task_plan(self.cache, task)
        self.stats.driver_seconds += time.perf_counter() - t0
        yield from runner.run(tasks)

    def probe_rest(self) -> dict[str, np.ndarray]:
        """The probed columns of the rows not planned, probed here in threads."""
        rels = [str(p) for p in self.paths[self.state.planned :]]
        probed = probe_rows(self.source_root, rels, self.params, threads=IN_PROCESS_THREADS)
        self.stats.probe_seconds += probed.pop("seconds")
        return probed

    def _on_ray(self, runner: RayRunner) -> Iterator[Outcome]:
        """Probe tasks and group tasks side by side on Ray: the plan extends as probe batches come back in order."""
        ray = runner.ray
        t0 = time.perf_counter()
        probe = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(probe_batch)
        planned = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(plan_and_run)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ahead = max(2, PROBES_PER_CPU * cpus)
        todo = deque(self.batches())
        in_flight: dict[object, range] = {}
        ready: dict[int, tuple[range, dict[str, np.ndarray]]] = {}  # first row -> (rows, probed columns)
        runner.forget_tasks()
        runner.submit(self.planned_tasks(), planned)
        last = 0.0
        self.stats.driver_seconds += time.perf_counter() - t0
        while todo or in_flight or ready or runner.pending:
            t0 = time.perf_counter()
            while todo and len(in_flight) < ahead:
                rows = todo.popleft()
                rels, labels = list(self.paths[rows.start : rows.stop]), list(self.labels[rows.start : rows.stop])
                args = (self.cache.url, self.source_root, rels, labels, rows.start, self.params)
                in_flight[probe.remote(*args)] = rows
                self.stats.batches += 1
            runs = self._contiguous(ready)
            n_ready = sum(len(rows) for rows, _ in runs)
            due = not in_flight or not last or n_ready >= EXTEND_ROWS or t0 - last >= EXTEND_SECONDS
            if runs and due:
                for rows, _ in runs:
                    del ready[rows.start]
                table = {key: np.concatenate([cols[key] for _, cols in runs]) for key in PROBED}
                runner.submit(self.extend(table), planned)
                last = time.perf_counter()
            self.stats.driver_seconds += time.perf_counter() - t0
            waiting = [*in_flight, *runner.pending]
            if not waiting:
                continue
            done, _ = ray.wait(waiting, num_returns=1, timeout=EXTEND_SECONDS if ready else None)
            for ref in done:
                if ref not in in_flight:
                    task, outcome = runner.result(ref)
                    if isinstance(outcome, BaseException):  # died for good: its share of the plan, from here
                        write_task_plan(self.cache, task)
                    yield task, outcome
                    continue
                t0 = time.perf_counter()
                rows = in_flight.pop(ref)
                try:
                    probed = ray.get(ref)
                    self.stats.probe_seconds += probed.pop("seconds")
                except Exception as exc:  # the probe task died for good: its videos are refused, with the reason
                    probed = _failed_columns(len(rows), f"probe task failed: {type(exc).__name__}")
                    labels = {"path": self.paths[rows.start : rows.stop], "label": self.labels[rows.start : rows.stop]}
                    write_probed(self.cache, rows, {**labels, **probed}, [0] * len(rows))
                ready[rows.start] = (rows, probed)
                self.stats.driver_seconds += time.perf_counter() - t0

    def _contiguous(self, ready: dict[int, tuple[range, dict[str, np.ndarray]]]) -> list:
        """The ready batches that continue the plan, in order."""
        runs, at = [], self.state.planned
        while at in ready:
            runs.append(ready[at])
            at = ready[at][0].stop
        return runs

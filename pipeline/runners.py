"""Who runs the group tasks (`pipeline.job.run_group`): this process (threads), a local Ray, or an existing cluster.

On a cluster (`address`), the workers import this package from a copy the driver ships with the job (Ray's
`runtime_env` `py_modules`), so nodes need only the dependencies installed, and every node runs the driver's code.
A task whose worker or node dies runs again elsewhere (`TASK_RETRIES`): a group is written whole, status last, so a
retry rewrites the same bytes and a half-written group is never read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any

import cv2

from pipeline.job import GroupResult, GroupTask, run_group
from pipeline.signals import descendants, keep_handlers, process_group, reap

TASK_RETRIES = 3  # a task whose worker dies (killed, out of memory, node lost) runs again; video errors never do
# Group tasks handed to Ray at once, per CPU of the cluster; the rest wait in the runner's own queue. Enough to keep
# every worker fed, and few enough that the driver's `ray.wait` over the unfinished tasks stays cheap: that call is
# linear in the tasks passed, so handing Ray all of a Kinetics-size build's ~10,000 groups at once made the driver's
# time quadratic in the groups (measured on 2 CPUs: 8,000 tasks 16.4 s of driver CPU all at once, 5.5 s bounded).
TASKS_PER_CPU = 2
CPU_RECHECK_SECONDS = 10.0  # how long a count of the cluster's CPUs is trusted (nodes may join or leave)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))  # this package, as shipped to a cluster's workers
SHIP_EXCLUDES = ["__pycache__", "*.pyc"]


def cluster_runtime_env() -> dict[str, Any]:
    """The runtime_env of a job on an existing cluster: this package shipped to every worker (ahead of any
    installed copy on its sys.path)."""
    return {"py_modules": [PACKAGE_DIR], "excludes": SHIP_EXCLUDES}


def _run_on_node(task: GroupTask) -> tuple[GroupResult, str]:
    """The group task as a Ray task: its result and the node that ran it."""
    import ray

    return run_group(task), ray.get_runtime_context().get_node_id()


class RayRunner:
    """Ray tasks, one per group, streamed back as they finish. Starts a quiet local Ray, or joins the cluster at
    `address` (shipping this package: `cluster_runtime_env`), unless this process already joined one.

    At most `TASKS_PER_CPU` tasks per CPU of the cluster are Ray's at a time (`pending`); the others wait in
    `queued`, in the order they were submitted, and go to Ray as tasks finish.

    `close` shuts down the Ray it started, workers and unfinished tasks included; from a cluster it cancels the
    tasks not finished and disconnects (a stopped group is not committed, or committed whole: status goes last)."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import ray

        self.ray = ray
        self.started = False  # this runner called ray.init (and so shuts it down)
        self.local = False  # ...and that started a local Ray whose processes are ours to end
        self.others: set[int] = set()
        self.pending: dict[object, GroupTask]  # ref -> task, of the tasks handed to Ray and not finished
        self.queued: deque[tuple[GroupTask, Any]]  # (task, remote) submitted, not yet handed to Ray
        self.forget_tasks()
        self._cpus, self._cpus_at = 1, -CPU_RECHECK_SECONDS
        self.nodes: dict[int, str] = {}  # group index -> the node that ran it
        if not ray.is_initialized():
            quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
            # Processes of ours, or of our process group (a pipe's other end), that are not Ray's.
            self.others = set(descendants(os.getpid())) | set(process_group(os.getpgid(0)))
            with keep_handlers():  # ray.init would make SIGTERM exit at once, with status 15
                if address:
                    ray.init(address=address, runtime_env=cluster_runtime_env(), **quiet)
                else:
                    memory = 128 * 1024 * 1024
                    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=memory, **quiet)
            self.started, self.local = True, not address
        self.remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_run_on_node)

    def forget_tasks(self) -> None:
        """Drop the tasks of an earlier run: those Ray holds (`pending`) and those not handed over yet (`queued`)."""
        self.pending, self.queued = {}, deque()

    @property
    def in_flight_limit(self) -> int:
        """How many tasks Ray holds at a time: `TASKS_PER_CPU` per CPU of the cluster, counted again every
        `CPU_RECHECK_SECONDS` (a node that joins gets work, one that leaves is not over-fed)."""
        now = time.monotonic()
        if now - self._cpus_at >= CPU_RECHECK_SECONDS:
            self._cpus, self._cpus_at = max(1, int(self.ray.cluster_resources().get("CPU", 1))), now
        return TASKS_PER_CPU * self._cpus

    def submit(self, tasks: Sequence[GroupTask], remote: Any = None) -> None:
        """Queue tasks (biggest first: better balance at the end) to run as `remote` (a Ray remote function of a
        task returning what `_run_on_node` does; default: that), handing Ray as many as `in_flight_limit` allows;
        their outcomes come from `result`."""
        remote = remote or self.remote
        self.queued.extend((task, remote) for task in sorted(tasks, key=lambda task: -task.cost))
        self._hand_over()

    def _hand_over(self) -> None:
        """Hand queued tasks to Ray up to the in-flight limit."""
        if not self.queued:
            return
        limit = self.in_flight_limit
        while self.queued and len(self.pending) < limit:
            task, remote = self.queued.popleft()
            self.pending[remote.remote(dataclasses.replace(task, threads=1))] = task

    def result(self, ref: object) -> tuple[GroupTask, GroupResult | BaseException]:
        """The outcome of a finished task: its result, or the exception that ended it (a store error, or retries
        used up). A queued task takes its place at Ray first."""
        task = self.pending.pop(ref)
        self._hand_over()
        try:
            result, node = self.ray.get(ref)
        except Exception as exc:
            return task, exc
        self.nodes[task.group.index] = node
        return task, result

    def run(
        self, tasks: Sequence[GroupTask], remote: Any = None
    ) -> Iterator[tuple[GroupTask, GroupResult | BaseException]]:
        """Outcomes of `tasks` (run as `remote`, see `submit`) as they finish."""
        self.forget_tasks()
        self.submit(tasks, remote)
        while self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                yield self.result(ref)

    def close(self) -> None:
        # A Ray this runner started is shut down below, its workers with it: its tasks are not cancelled first.
        # Cancelling there raced the tasks' replies in Ray's task manager, which then aborted this process ("Tried
        # to complete task that was not pending": exit status 1, a stack trace, the node's agents left running).
        if self.pending and not self.local and self.ray.is_initialized():
            for ref in self.pending:
                self.ray.cancel(ref)
        self.forget_tasks()  # a queued task never reached Ray: nothing of it to stop
        if not self.started:
            return
        if not self.local:  # a cluster's processes are not ours: disconnect only
            self.ray.shutdown()
            return
        # Ray's node: raylet, workers and the agents the raylet starts (nothing this process had before).
        helpers = {pid for pid in descendants(os.getpid()) if pid not in self.others}
        with _stderr_silenced():  # Ray's core logs an error for each task it ends unfinished: not the user's news
            self.ray.shutdown()
        # Agents the raylet started after that look, now orphans: still in this process group.
        helpers |= {pid for pid in process_group(os.getpgid(0)) if pid not in self.others}
        helpers.discard(os.getpid())
        reap(sorted(helpers))  # the agents only notice the raylet's end on a timer


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """This process's file descriptor 2 on /dev/null inside the block: what native code writes there (Ray's C++
    core logs to it directly) goes nowhere. Python's own stderr is flushed first, and the descriptor put back after.
    A process without a descriptor 2 (started with it closed) has nothing to silence."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class InProcessRunner:
    """The same group function, called in this process: no start-up cost for small jobs.

    Two groups run side by side in threads: PyAV, OpenCV and NumPy release the GIL, so one group's decoding overlaps
    the other's masks and writes. Groups own disjoint shards, so the bytes are those of a one-at-a-time run.

    `close` (also when the caller stops iterating, e.g. on Ctrl-C) drops the groups not started and tells the running
    ones to stop before their next video; it returns when their threads have ended, with no group half-committed."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.nodes: dict[int, str] = {}  # none: see RayRunner.nodes
        self.stop = threading.Event()
        self.pool: ThreadPoolExecutor | None = None

    def run(self, tasks: Sequence[GroupTask]) -> Iterator[tuple[GroupTask, GroupResult | BaseException]]:
        ordered = sorted(tasks, key=lambda task: -task.cost)  # biggest first: no long task left alone at the end
        before = cv2.getNumThreads()
        if min(self.threads, len(ordered)) > 1:  # one decoding and OpenCV thread per group: groups fill the cores
            ordered = [dataclasses.replace(task, threads=1) for task in ordered]
            cv2.setNumThreads(1)  # process-wide: set once here, not by tasks racing each other
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=self.threads)
        try:
            futures = {self.pool.submit(run_group, task, self.stop): task for task in ordered}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    yield task, future.result()
                except Exception as exc:
                    yield task, exc
        finally:
            self.close()
            cv2.setNumThreads(before)

    def close(self) -> None:
        if self.pool is not None:
            self.stop.set()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

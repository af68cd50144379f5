"""The Ray runner hands Ray a bounded number of group tasks at a time and still runs every task once: a cluster-size
build must not make the driver wait on every one of its groups at each step."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.cache.store import Group
from pipeline.job import GroupTask
from pipeline.params import BuildParams
from pipeline.runners import TASKS_PER_CPU, RayRunner


def _task(index: int, cost: float) -> GroupTask:
    none = np.zeros(0, np.int64)
    return GroupTask(
        cache_url="unused",
        source_root="unused",
        params=BuildParams(),
        group=Group(index=index, videos=range(index, index + 1), clips=range(0, 0)),
        paths=(),
        n_frames=none,
        n_clips=none,
        first_clip=none,
        status=(),
        error=(),
        bytes=none,
        mtime=none,
        cost=cost,
    )


@pytest.fixture(scope="module")
def runner():
    runner = RayRunner(workers=1)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def echo(runner):
    """A Ray stand-in for a group's work: the task's index, after a moment (so tasks overlap). Defined here, so Ray
    ships the function itself (the tests folder is not on the workers' path)."""

    def echo(task: GroupTask) -> tuple[int, str]:
        time.sleep(0.02)
        return task.group.index, "node"

    return runner.ray.remote(num_cpus=1)(echo)


def test_ray_holds_a_bounded_number_of_tasks_and_every_task_runs_once(runner, echo):
    limit = TASKS_PER_CPU * 1  # the local Ray has one CPU
    assert runner.in_flight_limit == limit
    tasks = [_task(i, cost=float(i % 7)) for i in range(12)]
    runner.forget_tasks()
    runner.submit(tasks, echo)
    assert (len(runner.pending), len(runner.queued)) == (limit, len(tasks) - limit)
    assert sorted(task.cost for task in runner.pending.values()) == [5.0, 6.0]  # the biggest first

    outcomes = []
    while runner.pending:
        done, _ = runner.ray.wait(list(runner.pending), num_returns=1)
        for ref in done:
            task, result = runner.result(ref)
            outcomes.append((task.group.index, result))
            assert len(runner.pending) <= limit
    assert not runner.queued
    assert sorted(outcomes) == [(i, i) for i in range(12)]


def test_run_streams_every_outcome_through_the_bound(runner, echo):
    tasks = [_task(i, cost=1.0) for i in range(9)]
    seen = []
    for task, result in runner.run(tasks, echo):
        assert len(runner.pending) <= runner.in_flight_limit
        seen.append((task.group.index, result))
    assert sorted(seen) == [(i, i) for i in range(9)]
    assert (runner.pending, len(runner.queued)) == ({}, 0)

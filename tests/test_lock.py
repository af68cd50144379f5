"""One writer per cache: concurrent builds, stale and foreign locks, --force-unlock, verify --fix and gc."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from cache_tools.cli import main as cache_main
from pipeline.build import BuildError, build_cache
from pipeline.cache import Cache
from pipeline.cache.lock import LOCK_NAME, Holder, LockError, read_holder, writer_lock
from pipeline.cli import main as pipeline_main
from pipeline.params import BuildParams

TINY = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)
OPTS = ["--size", "32x40", "--clip-len", "4", "--clips-per-video", "2", "--quiet"]
REPO = Path(__file__).resolve().parents[1]
# Imports first, then wait at a start line, so both builds reach the lock at the same moment.
RACER = """
import os, sys, time
import pipeline.build
from pipeline.cli import main
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(cache: str, holder: Holder | bytes) -> None:
    """Leave a lock file in the cache, as a writer elsewhere (or a crashed one) would."""
    data = holder if isinstance(holder, bytes) else holder.to_bytes()
    Path(cache, LOCK_NAME).write_bytes(data)


@pytest.fixture
def built(tiny_dataset, tmp_path) -> str:
    out = str(tmp_path / "c.zarr")
    build_cache(str(tiny_dataset), out, TINY, progress=False)
    assert not Path(out, LOCK_NAME).exists()
    return out


def test_two_builds_at_once_one_wins(tiny_dataset, tmp_path):
    """Two builds of one new cache from different sources: one builds it, the other is refused and names it."""
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    out = str(tmp_path / "c.zarr")
    go = tmp_path / "go"
    procs = []
    for i, src in enumerate((tiny_dataset, other)):
        argv = [str(tmp_path / f"ready{i}"), str(go), "build", str(src), "--out", out, *OPTS]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RACER, *argv],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a build died on start-up"
            time.sleep(0.01)
        go.touch()
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], [r[2][-500:] for r in results]
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    loser_err = results[1 - winner][2]
    assert "another process is writing this cache: fame-pipeline build" in loser_err
    assert f"pid {procs[winner].pid} on this host" in loser_err and "--force-unlock" in loser_err
    assert "Traceback" not in loser_err
    cache = Cache.open(out)
    assert cache.source_root == str((tiny_dataset, other)[winner])
    assert not Path(out, LOCK_NAME).exists()
    assert cache_main(["verify", out, "--quiet"]) == 0


def test_lock_held_through_creation_and_gone_after_a_build_that_raised(tiny_dataset, tmp_path, monkeypatch):
    """Creating a new cache empties its folder but keeps the lock; an exception still releases it."""
    import pipeline.build

    out = str(tmp_path / "c.zarr")
    seen: list[Holder | None] = []

    def failing_tasks(cache, *args):
        seen.append(read_holder(out))
        raise RuntimeError("the compute phase broke")

    monkeypatch.setattr(pipeline.build, "_tasks", failing_tasks)
    with pytest.raises(RuntimeError, match="compute phase broke"):
        build_cache(str(tiny_dataset), out, TINY, progress=False)
    assert seen[0] is not None and seen[0].pid == os.getpid() and seen[0].purpose == "fame-pipeline build"
    assert Cache.exists(out) and not Path(out, LOCK_NAME).exists()


def test_stale_lock_of_this_host_is_taken_over_with_a_warning(built, tiny_dataset):
    """A build killed with SIGKILL leaves its lock; on the same machine its pid is gone, so --resume just works."""
    pid = dead_pid()
    plant(built, dataclasses.replace(Holder.me("fame-pipeline build"), pid=pid))
    said = rf"stale writer lock: fame-pipeline build \(pid {pid} on this host.*no longer running"
    with pytest.warns(UserWarning, match=said):
        report = build_cache(str(tiny_dataset), built, TINY, resume=True, progress=False)
    assert report.n_done == 6 and not Path(built, LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("holder", "said"),
    [
        ({"host": "gpu-node-7"}, "pid 4242 on host 'gpu-node-7'"),
        ({"pid_space": "another container"}, "another container or before a reboot"),
        (b'{"host": "half wr', "unreadable writer lock"),
    ],
    ids=["other-host", "other-container", "unreadable"],
)
def test_lock_that_cannot_be_checked_is_refused_until_force_unlock(built, tiny_dataset, capsys, holder, said):
    lock = holder if isinstance(holder, bytes) else dataclasses.replace(Holder.me("fame-pipeline build"), pid=4242)
    if isinstance(holder, dict):
        lock = dataclasses.replace(lock, **holder)
    plant(built, lock)
    argv = ["build", str(tiny_dataset), "--out", built, "--resume", *OPTS]
    assert pipeline_main(argv) == 1
    err = capsys.readouterr().err
    assert said in err and "--force-unlock" in err and built in err
    assert Path(built, LOCK_NAME).read_bytes() == (lock if isinstance(lock, bytes) else lock.to_bytes())
    with pytest.warns(UserWarning, match="--force-unlock removed the writer lock"):
        assert pipeline_main([*argv, "--force-unlock"]) == 0
    assert not Path(built, LOCK_NAME).exists()


def test_verify_fix_and_gc_refuse_while_a_build_holds_the_lock(tmp_path, capsys):
    from helpers import make_cache

    cache = make_cache(tmp_path, n_videos=4, fail=(3,))
    with writer_lock(cache, "fame-pipeline build") as build:
        for argv in (["verify", cache, "--fix", "--quiet"], ["gc", cache, "--quiet"]):
            assert cache_main(argv) == 3, argv
            err = capsys.readouterr().err
            assert f"another process is writing this cache: fame-pipeline build (pid {os.getpid()}" in err
        # Readers do not take the lock and do not trip over its file.
        for argv in (["verify", cache, "--quiet"], ["gc", cache, "--dry-run"], ["info", cache]):
            assert cache_main(argv) == 0, argv
        capsys.readouterr()
        assert cache_main(["ls", str(tmp_path)]) == 0 and "3/4 videos" in capsys.readouterr().out
        assert read_holder(cache) == build
    with pytest.raises(SystemExit):  # --force-unlock without a write is a usage error
        cache_main(["verify", cache, "--force-unlock"])
    assert cache_main(["gc", cache, "--quiet"]) == 0
    assert Cache.open(cache).n_videos == 3
    assert sorted(p.name for p in Path(tmp_path).iterdir() if p.name.startswith("cache.zarr")) == ["cache.zarr"]
    assert not Path(cache, LOCK_NAME).exists()


@pytest.mark.parametrize("store", ["memory", "local"])
def test_lock_excludes_and_release_keeps_a_lock_that_is_not_ours(tmp_path, store):
    url = "memory://locks/c.zarr" if store == "memory" else str(tmp_path / "c.zarr")
    fs, inner = fsspec.core.url_to_fs(url)
    try:
        with writer_lock(url, "fame-cache gc") as mine:
            assert read_holder(url) == mine
            busy = pytest.raises(LockError, match=r"another process is writing this cache: fame-cache gc")
            with busy, writer_lock(url, "fame-pipeline build"):
                pass
            theirs = dataclasses.replace(mine, token="someone else", pid=4242)
            fs.pipe_file(f"{inner}/{LOCK_NAME}", theirs.to_bytes())  # the lock was broken and taken meanwhile
        assert read_holder(url) == theirs
        assert fs.ls(inner, detail=False) == [f"{inner}/{LOCK_NAME}"]  # nothing left beside it
    finally:
        fs.rm(inner, recursive=True)


def test_build_refuses_a_file_as_cache(tiny_dataset, tmp_path):
    out = tmp_path / "c.zarr"
    out.write_text("not a folder")
    with pytest.raises(BuildError, match="is a file, not a cache folder"):
        build_cache(str(tiny_dataset), str(out), TINY, progress=False)

"""Ctrl-C and SIGTERM on real processes: a build and a pretraining run stop within seconds with 130 / 143 and one line
naming --resume, leave no process behind, and resume to exactly what an uninterrupted run gives; `verify --fix`
writes its marks whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import assert_same_cache, make_cache

from pipeline.build import build_cache
from pipeline.cache import DONE, PENDING, Cache
from pipeline.params import BuildParams
from pipeline.signals import Interrupted
from synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
STOP_SECONDS = 10  # from the signal to the exit, on a loaded 2-core machine; a few seconds on an idle one
BUILD_PARAMS = BuildParams(size=(48, 64), clip_len=8, stride=2, clips_per_video=2)
BUILD_VIDEOS = 32
REFERENCE_STEPS = 16  # of the uninterrupted run the resumed ones are compared with
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # on 2 cores torch's threads spin against the DALI worker


def group_members(pgid: int) -> list[str]:
    """The processes still in process group `pgid` (children keep it after their parent dies), as 'pid name'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{entry} {name}")
    return found


def start(args: list[str], stderr: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m ARGS` in a new session: its pid is its process group, which every process it starts inherits.
    stderr goes to a file, which orphans holding it open cannot keep from ending."""
    with open(stderr, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def wait_until(proc: subprocess.Popen, ready, stderr: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before the signal: {stderr.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("not ready in time")
        time.sleep(0.01)


def stop(proc: subprocess.Popen, signum: int, stderr: Path, group: bool = False) -> tuple[int, float, str]:
    """Send the signal (to the whole group: what a terminal's Ctrl-C does) and return (exit code, seconds, stderr);
    then wait until no process of its group is left, failing with the ones that stay."""
    sent = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"did not stop within 60 s: {stderr.read_text()[-2000:]}")
    seconds = time.monotonic() - sent
    deadline = time.monotonic() + 5  # helpers such as multiprocessing's resource tracker leave just after the parent
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_members(proc.pid)
    for member in left:
        os.kill(int(member.split()[0]), signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    return code, seconds, stderr.read_text()


@pytest.fixture(scope="module")
def build_source(tmp_path_factory) -> tuple[Path, str]:
    """BUILD_VIDEOS videos (as many writer groups) and their cache built without interruption: enough work that a
    loaded machine still sees the first group committed well before the last (the signal must land mid-build; a
    local Ray's running tasks may commit their groups while it shuts down)."""
    root = tmp_path_factory.mktemp("signal_build")
    write_dataset(root / "videos", n_classes=2, videos_per_class=BUILD_VIDEOS // 2, n_frames=60, seed=3)
    build_cache(str(root / "videos"), str(root / "ref.zarr"), BUILD_PARAMS, progress=False)
    return root / "videos", str(root / "ref.zarr")


@pytest.mark.parametrize(
    ("signum", "workers"), [(signal.SIGINT, 1), (signal.SIGTERM, 2)], ids=["sigint-in-process", "sigterm-ray"]
)
def test_build_signal_stops_and_resumes_to_clean_bytes(build_source, tmp_path, signum, workers):
    """In-process (groups in a thread pool) and on a local Ray (worker processes; ray.init sets a SIGTERM handler of
    its own): the groups not committed stay pending, no process is left, --resume finishes the clean bytes."""
    src, ref = build_source
    out = str(tmp_path / "out.zarr")
    opts = ["--size", "48x64", "--clip-len", "8", "--clips-per-video", "2", "--workers", str(workers), "--quiet"]
    opts += ["--ray"] if workers > 1 else []  # a job this small would otherwise run in-process
    err_file = tmp_path / "stderr.txt"
    proc = start(["pipeline", "build", str(src), "--out", out, *opts], err_file)

    def first_group_written() -> bool:
        try:
            return bool((zarr.open_group(out, mode="r")["videos/status"][:] == DONE).any())
        except Exception:  # not created yet
            return False

    wait_until(proc, first_group_written, err_file)
    code, seconds, err = stop(proc, signum, err_file)
    assert code == 128 + signum and seconds < STOP_SECONDS, (code, seconds, err)
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "--resume" in err
    status = Cache.open(out).videos("status")
    assert (status == DONE).any() and (status != DONE).any(), status
    assert set(status) <= {DONE, PENDING}, "an interrupted group must stay pending, not failed"
    assert not (Path(out) / "writer.lock").exists()

    report = build_cache(str(src), out, BUILD_PARAMS, resume=True, progress=False)
    assert report.n_done == BUILD_VIDEOS and 0 < report.n_computed < BUILD_VIDEOS
    assert_same_cache(ref, out)


def pretrain_args(cache: str, run: Path, workers: int) -> list[str]:
    """A tiny run (see tests/test_trainer.py); `workers` > 0 starts DALI worker processes."""
    return [
        "pretrain",
        *("--cache", cache, "--out", str(run), "--backbone", "small", "--epochs", "50", "--batch-size", "4"),
        *("--queue-size", "8", "--lr", "0.05", "--warmup-epochs", "1", "--checkpoint-every", "1000"),
        *("--moco-momentum", "0.9", "--crop", "24", "--device", "cpu", "--num-workers", str(workers)),
    ]


def log(run: Path, key: str) -> list:
    return [json.loads(line)[key] for line in (run / "log.jsonl").read_text().splitlines()]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run as the subprocess does: losses repeat to the last bit only with the same number of threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("signal_cache"), n_videos=16, textured=True)


@pytest.fixture(scope="module")
def reference_losses(train_cache, tmp_path_factory) -> list[float]:
    """The losses of an uninterrupted run, in this process without workers (the data does not depend on them)."""
    from trainer.cli import main

    run = tmp_path_factory.mktemp("signal_reference") / "run"
    with one_torch_thread():
        assert main([*pretrain_args(train_cache, run, workers=0), "--max-steps", str(REFERENCE_STEPS)]) == 0
    return log(run, "loss")


@pytest.mark.parametrize(
    ("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "ctrl-c-to-group"]
)
def test_pretrain_signal_stops_workers_and_resumes_without_gaps(train_cache, reference_losses, tmp_path, signum, group):
    """SIGTERM to the trainer alone (a scheduler) or SIGINT to its whole process group (a terminal's Ctrl-C, which
    reaches DALI's worker too): exit 130/143, no worker left, and --resume goes on from the step it stopped at."""
    from trainer.cli import main

    run = tmp_path / "run"
    err_file = tmp_path / "stderr.txt"
    proc = start(["trainer", *pretrain_args(train_cache, run, workers=1)], err_file, env=ONE_THREAD)
    wait_until(proc, lambda: (run / "log.jsonl").exists() and len(log(run, "step")) >= 2, err_file)
    code, seconds, err = stop(proc, signum, err_file, group)
    assert code == 128 + signum and seconds < STOP_SECONDS, (code, seconds, err)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "pretrain:" not in line[:9]]
    assert "Traceback" not in err and len(lines) == 1, err  # the progress bar, then one line
    assert f"interrupted by {signal.Signals(signum).name}" in lines[0] and "--resume" in lines[0]
    done = len(log(run, "step"))
    assert log(run, "step") == list(range(1, done + 1))

    # A kill between checkpoints leaves log lines ahead of the checkpoint, the last one maybe torn: resume drops them.
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": done + 1, "loss": 0.0}) + '\n{"step": ')
    n = done + 3
    assert n <= REFERENCE_STEPS, f"stopped late, after step {done}"
    with one_torch_thread():
        assert main([*pretrain_args(train_cache, run, workers=0), "--resume", "--max-steps", str(n)]) == 0
    assert log(run, "step") == list(range(1, n + 1))
    assert log(run, "loss") == reference_losses[:n]


LOADER_HOLDER = """
import sys, time
from pipeline.loader import FameLoader
from pipeline.loader.params import LoaderParams
loader = FameLoader(sys.argv[1], 2, params=LoaderParams(crop=24, num_workers=1), seed=0)
next(iter(loader))
print("ready", flush=True)
time.sleep(600)
"""


def test_loader_workers_end_with_a_parent_killed_outright(train_cache):
    """SIGKILL (the out-of-memory killer) gives the loader no chance to stop its decoding workers, which block
    SIGTERM: they see their parent gone and end within seconds instead of decoding on as orphans."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOADER_HOLDER, train_cache],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ONE_THREAD,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(group_members(proc.pid)) >= 2, "the loader runs a worker process"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + STOP_SECONDS
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"orphaned after their parent's SIGKILL: {left}"


def test_verify_fix_writes_status_whole_when_signalled(tmp_path, monkeypatch):
    """A SIGTERM that lands between the error column and the status column waits for the status column."""
    from cache_tools.verify import Problem, fix_cache

    url = make_cache(tmp_path, n_videos=6)
    columns = zarr.Array.__setitem__
    written = []

    def setitem(self, key, value):
        columns(self, key, value)
        written.append(self.path)
        if self.path == "videos/error":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    problems = [Problem("checksum", "stored 0, bytes give 1", video=v, clip=2 * v) for v in (1, 4)]

    def unexpected(signum, frame):  # what pytest gets if fix_cache leaves SIGTERM to it: fail, rather than end pytest
        raise AssertionError("SIGTERM reached the caller inside the write")

    previous = signal.signal(signal.SIGTERM, unexpected)
    try:
        with pytest.raises(Interrupted) as stopped:
            fix_cache(url, problems)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.exit_code == 143
    assert written[-2:] == ["videos/error", "videos/status"]
    status = Cache.open(url).videos("status")
    assert list(np.flatnonzero(status == PENDING)) == [1, 4]


def test_stderr_silenced_drops_native_writes_and_puts_fd_2_back(capfd):
    """What Ray's C++ core writes to descriptor 2 while a local Ray shuts down goes nowhere; the descriptor is put
    back after, and a process started with it closed is let through."""
    from pipeline.runners import _stderr_silenced

    with _stderr_silenced():
        os.write(2, b"inside\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    code = "import os; os.close(2)\nfrom pipeline.runners import _stderr_silenced\n"
    code += "with _stderr_silenced(): pass\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done

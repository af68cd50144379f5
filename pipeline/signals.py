"""Ctrl-C and SIGTERM as one exception in the main thread, so `finally` blocks and shut-downs run.

Python turns SIGINT into KeyboardInterrupt but lets SIGTERM end the process on the spot: no `finally`, no atexit,
so worker processes (DALI's, Ray's) are left running. `handle_signals` makes both raise `Interrupted`; `deferred`
holds them over a few lines that must not stop half-way (a commit, a training step); `quiet_children` makes worker
processes started inside it ignore both, so a terminal's Ctrl-C (sent to the whole process group) is handled once,
by the parent, which then stops its workers itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; `exit_code` is the shell's convention (130, 143). A KeyboardInterrupt, so the
    `except Exception` of per-item error handling never swallows it."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted by {name}" + (f": {self.detail}" if self.detail else "")


class _State:
    depth = 0  # open `deferred` blocks
    pending: int | None = None  # a signal held by them
    last: int | None = None  # the latest signal received


def _on_signal(signum: int, frame: object) -> None:
    _State.last = signum
    if _State.depth:
        _State.pending = _State.pending or signum
        return
    raise Interrupted(signum)


def interrupted(exc: KeyboardInterrupt) -> Interrupted:
    """The `Interrupted` behind a KeyboardInterrupt: some blocking calls (Ray's `wait`) raise a KeyboardInterrupt of
    their own in place of the exception the handler raised, so the signal is taken from the handler's record."""
    if isinstance(exc, Interrupted):
        return exc
    return Interrupted(_State.last or signal.SIGINT)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block (main thread only; a signal the process was told to
    ignore, as `cmd &` in a script does for SIGINT, stays ignored). The previous handlers come back after."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise `Interrupted`: the block runs whole or not at all.
    Only for short blocks; a no-op outside the main thread (signals are delivered there only)."""
    if not _main_thread():
        yield
        return
    with handle_signals():
        _State.depth += 1
        try:
            yield
        finally:
            _State.depth -= 1
        if not _State.depth and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise Interrupted(signum)


@contextmanager
def quiet_children() -> Iterator[None]:
    """Processes started inside the block begin with SIGINT and SIGTERM blocked (a blocked mask survives fork and
    exec): their parent stops them. This process still gets the signals (through another of its threads, or when
    the block ends): none is lost."""
    if not _main_thread():
        yield
        return
    # multiprocessing's resource tracker, started on first use, unblocks both signals once it has started: start it
    # before blocking them.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


PARENT_POLL_SECONDS = 1.0


def exit_with_parent(poll: float = PARENT_POLL_SECONDS) -> None:
    """End this process once its parent is gone. A loader's decoding workers start with SIGINT and SIGTERM blocked
    (`quiet_children`: their parent stops them), so a parent killed outright (SIGKILL, the out-of-memory killer)
    left them running as orphans, decoding for no one. A daemon thread watches the parent's pid."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextmanager
def keep_handlers() -> Iterator[None]:
    """Put back the SIGINT and SIGTERM handlers a library call replaced (ray.init makes SIGTERM exit with status 15)."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the name (state, ppid, pgrp, ...), or None when it cannot be read. The
    name may hold spaces and parentheses, so the fields start after its last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of every process /proc shows; nothing where there is no /proc."""
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and (fields := _stat(entry)) is not None and len(fields) > 2:
            yield int(entry), fields


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, theirs, ...), read from /proc; [] where there is no /proc."""
    parents: dict[int, list[int]] = {}
    for child, fields in _processes():
        parents.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def process_group(pgid: int) -> list[int]:
    """Every live process of process group `pgid`, read from /proc; [] where there is no /proc. Finds helpers that
    outlive their parent and are no longer anyone's descendants (reparented to init)."""
    return [pid for pid, fields in _processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def _alive(pid: int) -> bool:
    """Whether the process runs (an ended one not yet waited for, a zombie, does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def reap(pids: list[int], grace: float = 3.0) -> None:
    """Wait up to `grace` seconds for processes to end, then terminate (and at last kill) the ones left. For helpers
    that only notice their parent's end on a timer, such as Ray's per-node agents after `ray.shutdown()`."""
    deadline = time.monotonic() + grace
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 1.0
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return

"""One writer per cache: a lease file, `<cache>/writer.lock`, held while a build, `verify --fix` or `gc` writes.

Two writers on one cache interleave their metadata writes and leave a cache that no tool can read, so every command
that writes takes the lock first and refuses, naming the holder, when another process has it. The file is JSON:
host, pid, where that pid is meaningful (`pid_space`: Linux boot id and pid namespace), start time (UTC, ISO 8601),
what holds it (`purpose`), the command line and a random token. It is not a Zarr node; Zarr and the cache tools
ignore it.

What "atomic" means here, store by store:
- Local disk (and NFS v3+): the file is created with O_CREAT|O_EXCL, so of two processes exactly one gets it.
- fsspec stores: the file is written with `pipe_file(mode="create")`. Where the backend implements that as a
  conditional write (s3fs on AWS S3 and S3 servers that honour `If-None-Match: *`), one writer gets it. Elsewhere
  (fsspec's default: look, then write) two writers that look at the same moment may both write; so every writer on
  an fsspec store reads the file back after a pause and goes on only if its own token is there, which closes most
  but not all of that window.

A lock whose holder ran on this machine (same host name, boot and pid namespace) and whose pid is gone is stale: it
is taken over with a warning that names the dead holder, so a killed build can be resumed without ceremony. A lock
from another machine cannot be checked from here: it is refused until the user, having checked that its holder is
dead, passes `force=True` (`--force-unlock`). Locks are released on exit only if their token is still the one we
wrote; a process killed with SIGKILL leaves its lock behind, which the stale rule above handles on its own machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["LOCK_NAME", "Holder", "LockError", "is_lock_file", "read_holder", "remove_all_but_lock", "writer_lock"]

LOCK_NAME = "writer.lock"
SETTLE_SECONDS = 0.5  # pause before the read-back on fsspec stores, where a rival's write may land just after ours
READ_TRIES = 10  # a lock file just created locally is empty until its creator has written it


class LockError(OSError):
    """The cache's writer lock is held by another process, or cannot be taken; the message says by whom and what to
    do."""


def _pid_space() -> str:
    """Where a pid names one process: this boot of the kernel and this pid namespace (Linux); '' elsewhere."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, it is someone else's
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a cache's writer lock."""

    host: str
    pid: int
    pid_space: str
    started: str
    purpose: str
    command: str
    token: str

    @classmethod
    def me(cls, purpose: str) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_space=_pid_space(),
            started=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            purpose=purpose,
            command=" ".join(sys.argv)[:500],
            token=uuid.uuid4().hex,
        )

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    def on_this_machine(self) -> bool:
        return self.host == socket.gethostname() and self.pid_space == _pid_space()

    def is_stale(self) -> bool:
        """Certainly dead: it ran here and its pid is gone. A holder on another machine is never called stale."""
        return self.on_this_machine() and not _alive(self.pid)

    def describe(self) -> str:
        where = "this host" if self.host == socket.gethostname() else f"host {self.host!r}"
        return f"{self.purpose} (pid {self.pid} on {where}, since {self.started}; command: {self.command})"


def is_lock_file(path: str) -> bool:
    """Whether a path (a listing entry) is the writer lock or one of its short-lived companions, not cache data."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".")


def _lock_path(url: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
    fs, inner = fsspec.core.url_to_fs(url)
    inner = inner.rstrip("/")
    return fs, inner, f"{inner}/{LOCK_NAME}"


def _read_raw(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        if isinstance(fs, LocalFileSystem):
            with open(path, "rb") as f:
                return f.read()
        fs.invalidate_cache(path.rsplit("/", 1)[0])
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _parse(raw: bytes, path: str) -> Holder:
    try:
        data = json.loads(raw)
        fields = {k: str(data[k]) for k in Holder.__dataclass_fields__}
        return Holder(**{**fields, "pid": int(data["pid"])})
    except (ValueError, TypeError, KeyError) as exc:
        raise LockError(
            f"{path}: unreadable writer lock ({type(exc).__name__}: {exc}); if no build, `verify --fix` or `gc` is "
            "writing this cache, run again with --force-unlock"
        ) from exc


def _read(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, Holder] | None:
    """The lock's bytes and holder, or None when there is no lock. Waits out a lock that is being written."""
    for _ in range(READ_TRIES - 1):
        raw = _read_raw(fs, path)
        if raw is None:
            return None
        try:
            return raw, _parse(raw, path)
        except LockError:
            time.sleep(0.05)
    raw = _read_raw(fs, path)
    return None if raw is None else (raw, _parse(raw, path))


def read_holder(url: str) -> Holder | None:
    """Who holds the writer lock of the cache at url; None when nobody does."""
    fs, _, path = _lock_path(url)
    found = _read(fs, path)
    return found[1] if found else None


def _create(fs: fsspec.AbstractFileSystem, inner: str, path: str, data: bytes) -> bool:
    """Write the lock unless one exists; whether we got it."""
    if isinstance(fs, LocalFileSystem):
        if os.path.exists(inner) and not os.path.isdir(inner):
            raise LockError(f"{inner}: is a file, not a cache folder")
        os.makedirs(inner, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError:  # a refused conditional write (S3: 412 PreconditionFailed) arrives as a plain OSError
        fs.invalidate_cache(inner)
        if fs.exists(path):
            return False
        raise
    time.sleep(SETTLE_SECONDS)
    return _read_raw(fs, path) == data


def _remove_if(fs: fsspec.AbstractFileSystem, path: str, expected: bytes) -> bool:
    """Delete the lock only if it still holds `expected`; whether it was deleted.

    Local disk: the file is renamed aside first (atomic), checked, and put back if it was not the expected one, so a
    lock that another process took in the meantime survives. Other stores: read, compare, delete (not atomic)."""
    if not isinstance(fs, LocalFileSystem):
        if _read_raw(fs, path) != expected:
            return False
        fs.rm(path)
        return True
    aside = f"{path}.{uuid.uuid4().hex}.gone"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    with open(aside, "rb") as f:
        ours = f.read() == expected
    if not ours:
        with suppress(FileExistsError):  # put it back, unless yet another writer has taken the lock since
            os.link(aside, path)
    os.unlink(aside)
    return ours


def _acquire(url: str, purpose: str, force: bool) -> tuple[fsspec.AbstractFileSystem, str, Holder]:
    fs, inner, path = _lock_path(url)
    me = Holder.me(purpose)
    data = me.to_bytes()
    for _ in range(3):  # a lock released or cleared while we looked: look again
        try:
            if _create(fs, inner, path, data):
                return fs, path, me
        except LockError:
            raise
        except OSError as exc:
            raise LockError(f"{path}: cannot write the writer lock: {exc}") from exc
        if force:
            raw = _read_raw(fs, path)
            if raw is not None and _remove_if(fs, path, raw):
                warnings.warn(f"{url}: --force-unlock removed the writer lock: {_shown(raw)}", stacklevel=4)
            continue
        found = _read(fs, path)
        if found is None:
            continue
        raw, holder = found
        if holder.is_stale():
            if _remove_if(fs, path, raw):
                warnings.warn(
                    f"{url}: taking over a stale writer lock: {holder.describe()} is no longer running; the cache may "
                    "hold its half-written groups, which a build with --resume recomputes",
                    stacklevel=4,
                )
            continue
        raise LockError(_busy_message(url, holder))
    found = _read(fs, path)
    raise LockError(_busy_message(url, found[1]) if found else f"{url}: could not take the writer lock; try again")


def _shown(raw: bytes) -> str:
    try:
        return _parse(raw, LOCK_NAME).describe()
    except LockError:
        return f"unreadable ({raw[:80]!r})"


def _busy_message(url: str, holder: Holder) -> str:
    if holder.on_this_machine():
        state = "that pid is still running"
    elif holder.host == socket.gethostname():
        state = "it ran in another container or before a reboot, so whether it still runs cannot be checked from here"
    else:
        state = "it runs (or ran) on another machine, so whether it still runs cannot be checked from here"
    return (
        f"{url}: another process is writing this cache: {holder.describe()}; {state}. Wait for it to finish; if that "
        "process is dead, run again with --force-unlock"
    )


@contextmanager
def writer_lock(url: str, purpose: str, force: bool = False) -> Iterator[Holder]:
    """Hold the writer lock of the cache at url (its folder is made if missing) for the `with` block.

    Raises LockError, naming the holder and what to do, when another live process holds it. force=True removes any
    lock first (for a holder known to be dead); a stale lock of this machine is taken over without it."""
    fs, path, me = _acquire(url, purpose, force)
    try:
        yield me
    finally:
        _remove_if(fs, path, me.to_bytes())


def remove_all_but_lock(url: str) -> None:
    """Delete everything under url except the writer lock: how a lock holder starts a cache afresh (Zarr's mode "w"
    would delete the lock with the rest)."""
    fs, inner = fsspec.core.url_to_fs(url)
    if not fs.isdir(inner):
        return
    entries = fs.ls(inner, detail=False)
    doomed = [e for e in entries if not is_lock_file(e)]
    if doomed:
        fs.rm(doomed, recursive=True)

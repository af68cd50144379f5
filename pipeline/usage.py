"""Usage errors shared by the command lines: a bad option value, or a path that names nothing, exits 2 with one line
naming it and what is allowed, before any work starts (a traceback tells a user nothing about their command)."""

from __future__ import annotations

import os


class UsageError(ValueError):
    """A bad option value or a path that names nothing, found after parsing: the command must change, so exit 2."""


def require_path(path: str | None, flag: str, expected: str) -> None:
    """Refuse a local `path` that names nothing; URLs (s3://...) are left to their readers, which name the miss."""
    if path and "://" not in path and not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file or folder; expected {expected}")

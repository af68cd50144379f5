"""Usage errors shared by the command lines: a bad option value, or a path that names nothing, exits 2 with one line
naming it and what is allowed, before any work starts (a traceback tells a user nothing about their command).

Also the options every command line spells the same way (`--json [FILE]`, `--quiet`, `--device`, `--videos-root`),
so one concept has one name and one help text across `fame-pipeline`, `fame-train` and `fame-cache`."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, NoReturn

STDOUT = "-"  # `--json` without a file: the JSON goes to stdout
DEVICES = ("auto", "cpu", "gpu")  # what --device offers; `cuda` (and `cuda:N` where one GPU is named) mean `gpu`


class UsageError(ValueError):
    """A bad option value or a path that names nothing, found after parsing: the command must change, so exit 2."""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: ...; see prog --help`) and exit 2, without the
    usage block: the line names the bad value, and --help is one flag away. Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(json_file_or_stdout(sys.argv[1:] if args is None else list(args)), namespace)


def json_file_or_stdout(args: list[str]) -> list[str]:
    """A bare `--json` before a positional (`fame-cache info --json CACHE`) must not take the positional as its file:
    `--json` takes the next word as FILE only when it names a .json file; otherwise it means stdout."""
    out = []
    for i, word in enumerate(args):
        out.append(word)
        following = args[i + 1] if i + 1 < len(args) else None
        names_a_file = following is not None and (following.lower().endswith(".json") or following == STDOUT)
        if word == "--json" and following is not None and not following.startswith("-") and not names_a_file:
            out.append(STDOUT)
    return out


def fail(prog: str, message: str) -> int:
    """Print a usage error as its one line; returns the exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def require_path(path: str | None, flag: str, expected: str) -> None:
    """Refuse a local `path` that names nothing; URLs (s3://...) are left to their readers, which name the miss."""
    if path and "://" not in path and not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file or folder; expected {expected}")


def require_source(path: str | None, flag: str, expected: str) -> None:
    """As require_path, for sources that may be a quoted glob of list files: the pattern must match something."""
    if path and "://" not in path and glob.has_magic(path):
        if not glob.glob(path):
            raise UsageError(f"{flag} {path}: the pattern matches no file; expected {expected}")
        return
    require_path(path, flag, expected)


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    """`--json [FILE]`: write `what` as JSON to FILE, or print it to stdout when no FILE is given."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=STDOUT,
        default=None,
        metavar="FILE",
        help=f"write {what} as JSON to FILE, a name ending in .json (keys in the README); without FILE print the "
        "JSON to stdout instead of the table",
    )


def write_json(data: Any, target: str) -> None:
    """`data` as indented JSON to the file `target`, or to stdout when it is `-` (add_json's no-file value)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    if target == STDOUT:
        print(text)
        return
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def check_json_target(target: str | None) -> None:
    """Refuse a --json FILE that cannot be written (a folder), before the work it would report on."""
    if target and target != STDOUT and os.path.isdir(target):
        raise UsageError(f"--json {target} is a folder; give the file to write, e.g. {os.path.join(target, 'x.json')}")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars (errors and final lines still print)")


def device_name(value: str) -> str:
    """An argparse type for --device: auto, cpu or gpu; torch's spellings `cuda` and `cuda:N` are kept as given."""
    name = value.strip().lower()
    if name not in DEVICES and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(DEVICES)})")
    return name


def add_hidden_alias(parser: argparse.ArgumentParser, flag: str, dest: str, **kwargs: Any) -> None:
    """An older spelling of an option, still read but not shown in --help (one name per concept is shown)."""
    parser.add_argument(flag, dest=dest, default=None, help=argparse.SUPPRESS, **kwargs)

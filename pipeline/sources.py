"""Where the videos come from: a folder, a list file, or an fsspec URL of either.

A source resolves to a root and a sorted list of entries whose paths are relative to that root, so a cache can
move with its videos. The class of a video is the parent folder's name unless a list file gives a label.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass

import fsspec

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl")


class SourceError(ValueError):
    """A source that cannot be read or holds an entry that is not allowed."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # relative to the source root, '/'-separated
    label: str


@dataclass(frozen=True)
class Source:
    root: str  # local absolute path or URL
    entries: tuple[VideoEntry, ...]
    # Files found but left out, as (path as shown, why): a name that is not valid UTF-8 cannot be stored in a cache.
    left_out: tuple[tuple[str, str], ...] = ()

    def full_path(self, rel: str) -> str:
        return join(self.root, rel)

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries})


def is_url(path: str) -> bool:
    """Whether a path names its scheme (`s3://`, `file://`, ...): such paths are kept as written, not made absolute."""
    return "://" in path


def is_remote(path: str) -> bool:
    """Whether a path is opened through fsspec: a URL other than `file://`, which names a local file."""
    return is_url(path) and not path.startswith("file://")


def join(root: str, rel: str) -> str:
    """The full path of a video given relative to `root`: the one way builds and readers turn a list's or a cache's
    relative path into a file to open, so neither can be made to open files elsewhere.

    Refuses (SourceError, naming the path and the root) a path that leads outside the root: an absolute path or a
    `..` segment by its text, and on a local disk a symbolic link out of the root, found by comparing real paths.
    Object stores have no links, so the text check is the whole check there.
    """
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts:
        raise SourceError(f"{rel!r} escapes the source root {root!r} (a video path must be relative, without '..')")
    if is_remote(root):
        return root.rstrip("/") + "/" + rel
    local = root.removeprefix("file://")
    full = os.path.join(local, *parts)
    real, real_root = os.path.realpath(full), os.path.realpath(local)
    if os.path.commonpath([real, real_root]) != real_root:
        raise SourceError(
            f"{rel!r} resolves to {real!r}, outside the source root {root!r} (a symbolic link out of it); "
            "use a source root that holds the file itself"
        )
    return root.rstrip("/") + "/" + rel if is_url(root) else full


def _normalise_root(path: str) -> str:
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def _relative(path: str, root: str, list_file: str, line_no: int) -> str:
    """The entry's path relative to root; refuses entries that escape it."""
    path = path.strip().replace("\\", "/")
    if is_url(path):
        if not path.startswith(root.rstrip("/") + "/"):
            raise SourceError(f"{list_file}:{line_no}: {path!r} is outside the source root {root!r}")
        path = path[len(root.rstrip("/")) + 1 :]
    elif os.path.isabs(path):
        rel = os.path.relpath(path, root)
        path = rel.replace(os.sep, "/")
    norm = posixpath.normpath(path)
    if norm.startswith("../") or norm == ".." or norm.startswith("/"):
        raise SourceError(f"{list_file}:{line_no}: {path!r} escapes the source root {root!r}")
    return norm


def _parent_label(rel: str) -> str:
    parent = posixpath.basename(posixpath.dirname(rel))
    return parent or ""


def _printable(rel: str) -> str:
    """A path whose undecodable bytes (kept by Python as surrogates) are shown as \\xNN escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_utf8(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _list_folder(root: str) -> list[VideoEntry]:
    if is_url(root):
        fs, inner = fsspec.core.url_to_fs(root)
        files = [p for p in fs.find(inner) if p.lower().endswith(VIDEO_EXTENSIONS)]
        base = inner.rstrip("/") + "/"
        rels = [p[len(base) :] if p.startswith(base) else p for p in files]
    else:
        rels = []
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.lower().endswith(VIDEO_EXTENSIONS):
                    rels.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return [VideoEntry(rel, _parent_label(rel)) for rel in sorted(rels)]


def _read_text(path: str) -> str:
    with fsspec.open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def _parse_list(text: str, list_file: str, root: str) -> list[VideoEntry]:
    entries: list[VideoEntry] = []
    if list_file.lower().endswith(".jsonl"):
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                path = record["path"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SourceError(f"{list_file}:{no}: expected a JSON object with a 'path' key ({exc})") from exc
            rel = _relative(str(path), root, list_file, no)
            label = record.get("label")
            entries.append(VideoEntry(rel, str(label) if label is not None else _parent_label(rel)))
        return entries
    for no, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) == 1:
            # UCF101/HMDB51 split files end a line with a space and the class index; paths may hold spaces.
            parts = row[0].strip().rsplit(None, 1)
            fields = parts if len(parts) == 2 and parts[1].isdigit() else [row[0].strip()]
        else:
            fields = [f.strip() for f in row]
        if no == 1 and fields[0].lower() == "path":
            continue  # a CSV header
        rel = _relative(fields[0], root, list_file, no)
        label = fields[1] if len(fields) > 1 and fields[1] else _parent_label(rel)
        if len(fields) > 1 and fields[1].isdigit():
            label = _parent_label(rel) or fields[1]  # UCF101 class indices: the folder name is the readable label
        entries.append(VideoEntry(rel, label))
    return entries


def list_source(src: str, root: str | None = None) -> Source:
    """Resolve SRC (folder, list file or URL of either) into a Source.

    For a list file, paths are relative to `root`, by default the list file's folder.
    """
    if not src:
        raise SourceError("no source given")
    is_list = src.lower().endswith(LIST_EXTENSIONS)
    if is_list:
        if is_url(src):
            fs, inner = fsspec.core.url_to_fs(src)
            if not fs.exists(inner):
                raise SourceError(f"{src}: list file not found")
            default_root = src.rsplit("/", 1)[0]
        else:
            if not os.path.isfile(src):
                raise SourceError(f"{src}: list file not found")
            default_root = os.path.dirname(os.path.abspath(src))
        base = _normalise_root(root or default_root)
        entries = _parse_list(_read_text(src), src, base)
    else:
        if is_url(src):
            fs, inner = fsspec.core.url_to_fs(src)
            if not fs.isdir(inner):
                raise SourceError(f"{src}: not a folder or list file ({', '.join(LIST_EXTENSIONS)})")
        elif not os.path.isdir(src):
            if os.path.exists(src):
                raise SourceError(f"{src}: not a folder or list file ({', '.join(LIST_EXTENSIONS)})")
            raise SourceError(f"{src}: no such folder or list file")
        base = _normalise_root(src)
        entries = _list_folder(base)
    unique = {e.path: e for e in entries if _valid_utf8(e.path)}
    left_out = tuple(
        (_printable(e.path), "the file name is not valid UTF-8 (a cache stores names as UTF-8): rename the file")
        for e in entries
        if not _valid_utf8(e.path)
    )
    for rel in unique:
        join(base, rel)  # refuses links out of the root
    return Source(root=base, entries=tuple(unique[p] for p in sorted(unique)), left_out=left_out)


def stat_source(path: str) -> tuple[int, float]:
    """(bytes, mtime) of a source file, recorded at build time so readers can refuse changed sources.

    Local files use os.stat (the numbers the loader compares); stores without a modification time give 0.0.
    Raises FileNotFoundError when the file is missing.
    """
    if not is_remote(path):
        st = os.stat(path.removeprefix("file://"))
        return int(st.st_size), float(st.st_mtime)
    fs, inner = fsspec.core.url_to_fs(path)
    info = fs.info(inner)
    stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "created") if k in info), 0.0)
    if hasattr(stamp, "timestamp"):
        stamp = stamp.timestamp()
    try:
        mtime = float(stamp)
    except (TypeError, ValueError):
        mtime = 0.0
    return int(info.get("size") or 0), mtime

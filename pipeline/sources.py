"""Where the videos come from: a folder, a list file (or a glob of list files), or an fsspec URL of either.

A source resolves to a root and a sorted list of entries whose paths are relative to that root, so a cache can
move with its videos. The class of a video is the parent folder's name unless a list file gives a label.

List files are read as the datasets define them, so their official files work unchanged:
- `path[,label]` lines (`.txt`/`.csv`), UCF101 split files (`path index`) included, and `.jsonl` records;
- HMDB51 split files (`<class>_test_split<N>.txt`, lines `name.avi ID`): the class is in the file's name, the video
  is `<class>/name.avi`, and ID says the part (1 train, 2 test, 0 unused), so a `split` must be chosen;
- Kinetics CSVs (header `label,youtube_id,time_start,time_end,split`): the video is
  `<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`, as the official downloaders name it.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass, field

import fsspec

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl")
FINGERPRINT_BYTES = 4096  # read from each end of a file for its content fingerprint (`fingerprint_source`)
SPLITS = ("train", "test")  # the parts of an HMDB51 split file
HMDB_SPLIT_IDS = {"train": 1, "test": 2}  # HMDB51's ids; 0 marks a video the split does not use
_HMDB_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<fold>\d+)\.txt$")
_KINETICS_NEEDS = ("youtube_id", "time_start", "time_end")
_GLOB_CHARS = ("*", "?", "[")


class SourceError(ValueError):
    """A source that cannot be read or holds an entry that is not allowed."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # relative to the source root, '/'-separated
    label: str
    # Where the entry came from, `list_file:line`, so an error about the video can name the line to fix ('' for a
    # folder's files). Not part of the entry's identity.
    origin: str = field(default="", compare=False)


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


def hmdb_split_file(list_file: str) -> tuple[str, int] | None:
    """(class, split number) when `list_file` is named as HMDB51 names its split files, else None."""
    match = _HMDB_FILE.match(posixpath.basename(list_file.replace("\\", "/")))
    return (match["label"], int(match["fold"])) if match else None


def _parse_hmdb(text: str, list_file: str, root: str, split: str | None) -> list[VideoEntry]:
    """An HMDB51 split file: `name.avi ID` lines of one class; keeps the part `split` names (ID 1 train, 2 test)."""
    label, _ = hmdb_split_file(list_file) or ("", 0)
    if split not in HMDB_SPLIT_IDS:
        raise SourceError(
            f"{list_file}: an HMDB51 split file lists train (1) and test (2) videos: choose one part "
            f"(--split train|test), got {split!r}"
        )
    want = HMDB_SPLIT_IDS[split]
    entries = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or "/" in parts[0] or "\\" in parts[0]:
            raise SourceError(
                f"{list_file}:{no}: expected 'NAME.avi ID' with ID 0, 1 or 2 (an HMDB51 split file), got {line!r}"
            )
        if int(parts[1]) == want:
            rel = _relative(f"{label}/{parts[0]}", root, list_file, no)
            entries.append(VideoEntry(rel, label, f"{list_file}:{no}"))
    return entries


def _is_kinetics(text: str) -> bool:
    header = next(csv.reader(io.StringIO(text)), [])
    return all(name in [h.strip() for h in header] for name in _KINETICS_NEEDS)


def _whole_seconds(value: str, name: str, list_file: str, no: int) -> int:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds >= 0 and seconds == int(seconds)):
        raise SourceError(f"{list_file}:{no}: {name} must be whole seconds >= 0, got {value!r}")
    return int(seconds)


def _parse_kinetics(text: str, list_file: str, root: str) -> list[VideoEntry]:
    """A Kinetics CSV (`label,youtube_id,time_start,time_end,split`, any column order, `is_cc` allowed): each row is
    the video `<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`, or without a label column the file at the root."""
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows)]
    col = {name: header.index(name) for name in (*_KINETICS_NEEDS, "label") if name in header}
    entries = []
    for no, row in enumerate(rows, 2):
        if not row or not any(f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise SourceError(
                f"{list_file}:{no}: expected {len(header)} fields ({','.join(header)}), got {len(row)}: {row!r}"
            )
        youtube_id = row[col["youtube_id"]].strip()
        if not youtube_id or "/" in youtube_id or "\\" in youtube_id:
            raise SourceError(f"{list_file}:{no}: youtube_id must be a non-empty name without '/', got {youtube_id!r}")
        start = _whole_seconds(row[col["time_start"]].strip(), "time_start", list_file, no)
        end = _whole_seconds(row[col["time_end"]].strip(), "time_end", list_file, no)
        label = row[col["label"]].strip() if "label" in col else ""
        if "label" in col and not label:
            raise SourceError(f"{list_file}:{no}: empty label")
        name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
        rel = _relative(f"{label}/{name}" if label else name, root, list_file, no)
        entries.append(VideoEntry(rel, label, f"{list_file}:{no}"))
    return entries


def _parse_list(text: str, list_file: str, root: str, split: str | None = None) -> list[VideoEntry]:
    if hmdb_split_file(list_file):
        return _parse_hmdb(text, list_file, root, split)
    if list_file.lower().endswith(".csv") and _is_kinetics(text):
        return _parse_kinetics(text, list_file, root)
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
            entries.append(
                VideoEntry(rel, str(label) if label is not None else _parent_label(rel), f"{list_file}:{no}")
            )
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
        entries.append(VideoEntry(rel, label, f"{list_file}:{no}"))
    return entries


def _is_glob(src: str) -> bool:
    return any(c in src for c in _GLOB_CHARS)


def _list_files(src: str) -> list[str]:
    """The list files SRC names: itself, or the files its glob pattern matches (sorted). Refuses a missing file, a
    pattern that matches none, and a pattern that matches HMDB51 files of several splits (their videos overlap)."""
    if not _is_glob(src):
        if is_url(src):
            fs, inner = fsspec.core.url_to_fs(src)
            found = fs.exists(inner)
        else:
            found = os.path.isfile(src)
        if not found:
            raise SourceError(f"{src}: list file not found")
        return [src]
    if is_url(src):
        fs, inner = fsspec.core.url_to_fs(src)
        protocol = src.split("://", 1)[0]
        files = sorted(f"{protocol}://{p}" for p in fs.glob(inner))
    else:
        files = sorted(p for p in glob.glob(src) if os.path.isfile(p))
    if not files:
        raise SourceError(f"{src}: no list file matches this pattern")
    folds = sorted({found[1] for found in map(hmdb_split_file, files) if found})
    if len(folds) > 1:
        raise SourceError(
            f"{src}: matches HMDB51 split files of splits {', '.join(map(str, folds))}: name one, "
            f"e.g. {posixpath.dirname(src) or '.'}/*_test_split{folds[0]}.txt"
        )
    return files


def _folder_hint(folder: str) -> str:
    """Why a local folder without videos may have been given: it holds HMDB51 split files (name one split)."""
    if is_url(folder) or not os.path.isdir(folder):
        return ""
    folds = sorted({found[1] for name in os.listdir(folder) if (found := hmdb_split_file(name))})
    if not folds:
        return ""
    return (
        f"; it holds HMDB51 split files: give one split as '{folder.rstrip('/')}/*_test_split{folds[0]}.txt' "
        "(quoted) with --videos-root"
    )


def list_source(src: str, root: str | None = None, split: str | None = None) -> Source:
    """Resolve SRC (folder, list file, glob of list files, or URL of any) into a Source.

    For list files, paths are relative to `root`, by default the (first) list file's folder. `split` (train or
    test) chooses the part of HMDB51 split files, which list both; other sources ignore it.
    """
    if not src:
        raise SourceError("no source given")
    if split is not None and split not in SPLITS:
        raise SourceError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    is_list = src.lower().endswith(LIST_EXTENSIONS)
    if is_list:
        files = _list_files(src)
        default_root = files[0].rsplit("/", 1)[0] if is_url(src) else os.path.dirname(os.path.abspath(files[0]))
        base = _normalise_root(root or default_root)
        entries = [e for f in files for e in _parse_list(_read_text(f), f, base, split)]
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
        if not entries and _folder_hint(src):
            raise SourceError(f"{src}: no videos in this folder{_folder_hint(src)}")
    unique = {e.path: e for e in entries if _valid_utf8(e.path)}
    left_out = tuple(
        (_printable(e.path), "the file name is not valid UTF-8 (a cache stores names as UTF-8): rename the file")
        for e in entries
        if not _valid_utf8(e.path)
    )
    for rel in unique:
        join(base, rel)  # refuses links out of the root
    return Source(root=base, entries=tuple(unique[p] for p in sorted(unique)), left_out=left_out)


def check_videos_exist(source: Source, shown: int = 3) -> None:
    """Refuse a source whose listed videos are missing, naming the list line and the path looked for: a list read
    against the wrong root would otherwise be skipped video by video. Local roots only (a stat per video on an
    object store is a round trip each; readers there report each video they cannot open)."""
    if is_remote(source.root):
        return
    full = {e.path: source.full_path(e.path) for e in source.entries}
    missing = [(e, full[e.path]) for e in source.entries if not os.path.isfile(full[e.path].removeprefix("file://"))]
    if not missing:
        return
    lines = "; ".join(f"{e.origin or e.path}: video not found: {full}" for e, full in missing[:shown])
    more = f"; and {len(missing) - shown} more" if len(missing) > shown else ""
    raise SourceError(
        f"{len(missing)} of {len(source.entries)} listed videos missing: {lines}{more} "
        f"(list paths are looked up under {source.root}: set --videos-root to the folder that holds them)"
    )


def stat_source(path: str) -> tuple[int, float]:
    """(bytes, mtime) of a source file. Local files use os.stat; stores without a modification time give 0.0.
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


def _ends(path: str, size: int) -> tuple[bytes, bytes]:
    """The first and last FINGERPRINT_BYTES of a file of `size` bytes (the whole file twice when it is smaller)."""
    tail_start = max(0, size - FINGERPRINT_BYTES)
    if not is_remote(path):
        with open(path.removeprefix("file://"), "rb") as handle:
            head = handle.read(FINGERPRINT_BYTES)
            handle.seek(tail_start)
            return head, handle.read(FINGERPRINT_BYTES)
    fs, inner = fsspec.core.url_to_fs(path)
    # By keyword: some stores (s3fs) take a version id second.
    head = fs.cat_file(inner, start=0, end=min(size, FINGERPRINT_BYTES))
    return head, fs.cat_file(inner, start=tail_start, end=size)


def fingerprint_source(path: str, size: int) -> str:
    """A cheap content fingerprint of a source file of `size` bytes: BLAKE2b-128 (hex) of the size (8 bytes,
    little-endian), the first 4 KiB and the last 4 KiB. Two small reads, whatever the file's length; a copy or a
    `touch` keeps it, and any re-encode, truncation or append changes it (a container's header and its trailing index
    or last packets lie at the ends). Raises FileNotFoundError when the file is missing."""
    head, tail = _ends(path, size)
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()


@dataclass(frozen=True)
class SourceStamp:
    """What a build records of a source file: its size, its content fingerprint (which readers compare), and its
    modification time (kept for a person to read; never compared: a copy or a `touch` changes it)."""

    bytes: int
    fingerprint: str
    mtime: float


def stamp_source(path: str) -> SourceStamp:
    """The SourceStamp of a file; FileNotFoundError when it is missing."""
    size, mtime = stat_source(path)
    return SourceStamp(size, fingerprint_source(path, size), mtime)

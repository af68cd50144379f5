"""What a build did: counts, failures with reasons, timings. Written as JSON by `--json` and printed as a summary."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from pipeline.sources import is_url

# fame-pipeline's exit codes (documented in the README): a build's report decides between the first and the last.
EXIT_OK, EXIT_FAILED_JOB, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3


def check_report_path(path: str) -> None:
    """Refuse, before a build starts rather than after it, a report path that cannot be written: a folder, or a file
    in a folder that is missing or read-only. Object stores are asked only whether the path is a folder. Errors name
    the option as `--json`, the one shown (`--report` is its older, hidden spelling)."""
    if is_url(path):
        fs, inner = fsspec.core.url_to_fs(path)
        if fs.isdir(inner):
            raise ValueError(f"--json {path}: is a folder; give a file name, e.g. {path.rstrip('/')}/report.json")
        return
    if os.path.isdir(path):
        raise ValueError(f"--json {path}: is a folder; give a file name, e.g. {os.path.join(path, 'report.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--json {path}: folder {folder} does not exist")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise ValueError(f"--json {path}: not writable (permissions)")


@dataclass
class BuildReport:
    n_videos: int
    n_done: int
    n_failed: int
    failures: list[tuple[str, str]]  # (video path relative to the source root, reason)
    n_clips: int  # clips readable in the cache after the run
    seconds: float
    out: str
    n_computed: int = 0  # videos computed in this run (the rest were already done)
    clips_computed: int = 0  # clips computed in this run
    params: dict[str, Any] = field(default_factory=dict)
    params_hash: str = ""
    plan_seconds: float = 0.0
    compute_seconds: float = 0.0
    workers: int = 1
    mode: str = "in-process"  # or "ray"
    nodes: int = 0  # Ray nodes that ran group tasks (0 in-process)
    plan_driver_seconds: float = 0.0  # the driver's own time planning (on Ray the workers probe: see pipeline.planner)
    probe_seconds: float = 0.0  # the workers' time probing, summed over probe tasks (0 when the driver probed)
    first_group_seconds: float = 0.0  # from the start to the first writer group's outcome

    @property
    def clips_per_s(self) -> float:
        return self.clips_computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every video is done, 3 when some failed (the cache is still usable)."""
        return EXIT_OK if self.n_failed == 0 else EXIT_SOME_FAILED

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        out["clips_per_s"] = round(self.clips_per_s, 3)
        return out

    def write(self, path: str) -> None:
        with fsspec.open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"cache      {self.out}",
            f"videos     {self.n_done} done, {self.n_failed} failed, {self.n_videos} in all "
            f"({self.n_computed} computed this run)",
            f"clips      {self.n_clips} readable, {self.clips_computed} computed at {self.clips_per_s:.1f} clips/s",
            f"time       {self.seconds:.1f} s (plan {self.plan_seconds:.1f} s, compute {self.compute_seconds:.1f} s, "
            f"{self.mode}, {self.workers} worker{'s' if self.workers != 1 else ''})",
        ]
        if self.failures:
            lines.append("failed:")
            lines += [f"  {p}: {r}" for p, r in self.failures[:limit]]
            if len(self.failures) > limit:
                lines.append(f"  ... and {len(self.failures) - limit} more (see --json)")
        return "\n".join(lines)

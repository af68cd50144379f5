"""`fame-cache info`: what a cache holds, as a dict (the JSON contract) and as text for a person."""

from __future__ import annotations

from typing import Any

import numpy as np

from cache_tools.api import disk_bytes
from cache_tools.find import cache_sources, planning_record
from cache_tools.verify import resume_command
from pipeline.cache import DONE, FAILED, PENDING, Cache, Committed
from pipeline.params import FOREGROUND_THRESHOLD


def cache_info(cache: Cache, with_bytes: bool = True) -> dict[str, Any]:
    """Parameters, counts, failures and sizes of the committed cache (`Cache.committed`: an append growing it, or
    stopped before its status, is not part of it). Keys are documented in the README (`info --json`). In a cache a
    Ray build is still planning, or was stopped while planning, the committed rows are the planned ones: `planning`
    says how many of how many ({planned, videos}; None once the plan is finished), so the counts are not taken for
    the whole cache's."""
    view = cache.committed()
    attrs, table = view.attrs, view.table
    status, errors, paths = table["status"], table["error"], table["path"]
    source_bytes = int(table["bytes"].sum())
    on_disk = disk_bytes(cache.url) if with_bytes else None
    return {
        "url": cache.url,
        "format_version": attrs["format_version"],
        "tool_version": attrs.get("tool_version", ""),
        "created": attrs.get("created", ""),
        "method": attrs.get("method", ""),
        "params": attrs["params"],
        "params_hash": cache.params_hash,
        "size": list(cache.size),
        "clip_len": cache.clip_len,
        "source_root": cache.source_root,
        "sources": cache_sources(cache, view),
        "fingerprints": "fingerprint" in cache.video_fields,
        "layout": attrs.get("layout", {}),
        "planning": planning_record(cache, view),
        "videos": {
            "total": len(status),
            "done": int((status == DONE).sum()),
            "failed": int((status == FAILED).sum()),
            "pending": int((status == PENDING).sum()),
        },
        "clips": {
            "readable": len(view.readable),
            "planned": int(table["n_clips"].sum()),
            "slots": view.n_slots,
        },
        "failures": [{"path": str(paths[v]), "error": str(errors[v])} for v in np.flatnonzero(status == FAILED)],
        "bytes": {
            "on_disk": on_disk,
            "source": source_bytes,
            "ratio": round(on_disk / source_bytes, 4) if on_disk is not None and source_bytes else None,
        },
        "masks": mask_statistics(cache, view),
    }


AREA_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STAT_CLIPS = 500  # masks read for the statistics at most (evenly spaced over the readable clips)


def clip_areas(cache: Cache, clips: np.ndarray) -> np.ndarray:
    """(n,) foreground share (mask >= the default threshold) of each clip, over all its frames."""
    return np.array([float((cache.mask(int(c)) >= FOREGROUND_THRESHOLD).mean()) for c in clips], np.float64)


def area_summary(areas: np.ndarray) -> dict[str, Any]:
    """How many clips, the share with an empty mask (no foreground pixel in any frame), and the quantiles and mean
    of the foreground area (share of the pixels) over the clips."""
    if len(areas) == 0:
        return {"clips": 0, "empty_rate": None, "mean_area": None, "area_quantiles": {}}
    return {
        "clips": len(areas),
        "empty_rate": round(float((areas == 0).mean()), 4),
        "mean_area": round(float(areas.mean()), 4),
        "area_quantiles": {f"{q:g}": round(float(np.quantile(areas, q)), 4) for q in AREA_QUANTILES},
    }


def mask_statistics(cache: Cache, committed: Committed, max_clips: int = STAT_CLIPS) -> dict[str, Any]:
    """What the masks say, so a failing method shows in `info`: the empty-mask rate and the foreground-area
    distribution over the readable clips of `committed` (up to `max_clips`, evenly spaced, which `sampled` counts),
    overall and per class where the videos have labels."""
    clip_video, readable = committed.clip_video, committed.readable
    picked = readable[np.unique(np.linspace(0, len(readable) - 1, min(len(readable), max_clips)).astype(int))]
    areas = clip_areas(cache, picked)
    out = {"threshold": FOREGROUND_THRESHOLD, "readable": len(readable), "sampled": len(picked)}
    out |= area_summary(areas)
    labels = committed.table.get("label")
    if labels is not None and len(picked) and any(str(x) for x in labels):
        by_video = np.array([str(x) for x in labels])[clip_video[picked]]
        out["by_class"] = {label: area_summary(areas[by_video == label]) for label in sorted(set(by_video))}
    return out


def format_mask_statistics(stats: dict[str, Any]) -> list[str]:
    """`info`'s lines on the masks: empty-mask rate and area quantiles, then one line per class."""
    if not stats["clips"]:
        return ["masks        no readable clip"]
    sampled = "" if stats["sampled"] == stats["readable"] else f" ({stats['sampled']} of {stats['readable']} read)"

    def line(summary: dict[str, Any]) -> str:
        q = summary["area_quantiles"]
        spread = " ".join(f"{key}:{100 * value:.1f}%" for key, value in q.items())
        return (
            f"{100 * summary['empty_rate']:.1f}% empty, area mean {100 * summary['mean_area']:.1f}%, quantiles {spread}"
        )

    lines = [f"masks        {stats['clips']} clips{sampled}: {line(stats)}"]
    for label, summary in stats.get("by_class", {}).items():
        lines.append(f"  {label}: {summary['clips']} clips, {line(summary)}")
    return lines


def describe_source(record: dict[str, Any]) -> str:
    """One `sources` record for a person: what was given, its split, how many videos it added and when (UTC)."""
    split = f" (split {record['split']})" if record.get("split") else ""
    added = f", added {record['added']}" if record.get("added") else ""
    return f"{record.get('source', '?')}{split}: {record.get('videos', '?')} videos{added}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def format_planning(info: dict[str, Any]) -> list[str]:
    """`info`'s line on a plan not finished (none once it is): the counts above are the planned videos' only."""
    plan = info.get("planning")
    if not plan:
        return []
    return [
        f"planning     unfinished: {plan['planned']} of {plan['videos']} videos planned (a Ray build is planning the "
        "cache, or was stopped while planning; the counts are the planned videos'): once no build is running, "
        f"`{resume_command(info['url'])}` plans the rest"
    ]


def format_info(info: dict[str, Any], max_failures: int = 20) -> str:
    v, c, b = info["videos"], info["clips"], info["bytes"]
    p = info["params"]
    clips_per_video = p.get("clips_per_video") or "all"
    ratio = f" ({100 * b['ratio']:.1f}% of the source)" if b["ratio"] is not None else ""
    lines = [
        f"cache        {info['url']}",
        f"format       v{info['format_version']} (written by {info['tool_version']}, {info['created']})",
        f"params hash  {info['params_hash']}",
        f"method       {info['method']}",
        f"clips        size {info['size'][0]}x{info['size'][1]}, clip_len {info['clip_len']}, "
        f"stride {p.get('stride')}, clips/video {clips_per_video}",
        f"source       {info['source_root']}"
        + ("" if info["fingerprints"] else " (built before content fingerprints: checked by size alone)"),
        *(f"  from       {describe_source(record)}" for record in info["sources"]),
        f"videos       {v['total']} total: {v['done']} done, {v['failed']} failed, {v['pending']} pending",
        *format_planning(info),
        f"clip count   {c['readable']} readable of {c['planned']} planned ({c['slots']} slots)",
        f"bytes        {human_bytes(b['on_disk'])} on disk, source {human_bytes(b['source'])}{ratio}",
    ]
    if "masks" in info:
        lines += format_mask_statistics(info["masks"])
    if info["failures"]:
        lines.append(f"failures     {len(info['failures'])}:")
        lines += [f"  {f['path']}: {f['error']}" for f in info["failures"][:max_failures]]
        if len(info["failures"]) > max_failures:
            lines.append(f"  ... and {len(info['failures']) - max_failures} more (see --json)")
    return "\n".join(lines)

"""`fame-cache info`: what a cache holds, as a dict (the JSON contract) and as text for a person."""

from __future__ import annotations

from typing import Any

import numpy as np

from cache_tools.api import disk_bytes
from cache_tools.find import cache_sources
from pipeline.cache import DONE, FAILED, PENDING, Cache


def cache_info(cache: Cache, with_bytes: bool = True) -> dict[str, Any]:
    """Parameters, counts, failures and sizes. Keys are documented in the README (`info --json`)."""
    attrs = cache.attrs
    status = cache.videos("status")
    errors, paths = cache.videos("error"), cache.videos("path")
    n_clips = cache.videos("n_clips")
    source_bytes = int(cache.videos("bytes").sum())
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
        "sources": cache_sources(cache),
        "fingerprints": "fingerprint" in cache.video_fields,
        "layout": attrs.get("layout", {}),
        "videos": {
            "total": len(status),
            "done": int((status == DONE).sum()),
            "failed": int((status == FAILED).sum()),
            "pending": int((status == PENDING).sum()),
        },
        "clips": {
            "readable": len(cache.readable_clips()),
            "planned": int(n_clips.sum()),
            "slots": cache.n_slots,
        },
        "failures": [{"path": str(paths[v]), "error": str(errors[v])} for v in np.flatnonzero(status == FAILED)],
        "bytes": {
            "on_disk": on_disk,
            "source": source_bytes,
            "ratio": round(on_disk / source_bytes, 4) if on_disk is not None and source_bytes else None,
        },
    }


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
        f"clip count   {c['readable']} readable of {c['planned']} planned ({c['slots']} slots)",
        f"bytes        {human_bytes(b['on_disk'])} on disk, source {human_bytes(b['source'])}{ratio}",
    ]
    if info["failures"]:
        lines.append(f"failures     {len(info['failures'])}:")
        lines += [f"  {f['path']}: {f['error']}" for f in info["failures"][:max_failures]]
        if len(info["failures"]) > max_failures:
            lines.append(f"  ... and {len(info['failures']) - max_failures} more (see --json)")
    return "\n".join(lines)

"""The cache format in one package: its nodes and version (`layout`), opening, creating, reading and committing
(`store`), the plate codec (`codecs`, registered on import), the writer lock (`lock`), whether the source videos are
still the ones a cache was built from (`fingerprint`), finding a cache by its parameters (`find`), and removing an
append stopped before it committed (`unfinished`). The build, the loader and the cache tools all go through it;
nothing else opens a cache's Zarr group."""

from pipeline.cache import codecs  # registers the plates' "fame.jpeg" Zarr codec for every reader of a cache
from pipeline.cache.find import cache_urls, default_cache_path, find_cache
from pipeline.cache.store import (
    DONE,
    FAILED,
    MASK_COMPRESSOR,
    PENDING,
    PLATE_QUALITY,
    STATUSES,
    VIDEO_FIELDS,
    Cache,
    CacheError,
    ClipDamaged,
    Committed,
    Group,
    clip_checksum,
    committed_rows,
)

__all__ = [
    "DONE",
    "FAILED",
    "MASK_COMPRESSOR",
    "PENDING",
    "PLATE_QUALITY",
    "STATUSES",
    "VIDEO_FIELDS",
    "Cache",
    "CacheError",
    "ClipDamaged",
    "Committed",
    "Group",
    "cache_urls",
    "clip_checksum",
    "codecs",
    "committed_rows",
    "default_cache_path",
    "find_cache",
]

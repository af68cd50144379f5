"""Read-mostly tools over FAME caches: info, verify, show, diff, ls, gc (command line: `fame-cache`)."""

from cache_tools.api import open_cache
from cache_tools.find import list_caches
from pipeline.cache import default_cache_path, find_cache

__all__ = ["default_cache_path", "find_cache", "list_caches", "open_cache"]

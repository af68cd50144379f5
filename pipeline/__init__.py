"""Offline FAME preprocessing (videos -> Zarr cache of masks and plates) and the DALI loader that reads it."""

from pipeline import cache  # the cache format; importing it registers the plates' "fame.jpeg" Zarr codec
from pipeline.params import BuildParams

__all__ = ["BuildParams", "cache"]

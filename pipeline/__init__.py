"""Offline FAME preprocessing (videos -> Zarr cache of masks and plates) and the DALI loader that reads it."""

from pipeline import codecs  # registers the plates' "fame.jpeg" Zarr codec for every reader of a cache
from pipeline.params import BuildParams

__all__ = ["BuildParams", "codecs"]

"""Offline FAME preprocessing (videos -> Zarr cache of masks and plates) and the DALI loader that reads it."""

from pipeline.params import BuildParams

__all__ = ["BuildParams"]

"""The DALI loader: FAME-merged training clips composed on the fly from a cache."""

from pipeline.loader.catalog import LoaderError
from pipeline.loader.loader import FameLoader
from pipeline.loader.params import LoaderParams

__all__ = ["FameLoader", "LoaderError", "LoaderParams"]

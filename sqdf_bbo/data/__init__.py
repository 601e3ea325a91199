"""Data sets built at run time from files that ship inside installed wheels (no downloads)."""
from sqdf_bbo.data.patches import SOURCES, build_patches, load_source_images

__all__ = ["SOURCES", "build_patches", "load_source_images"]

"""PLACEHOLDER (being written): tifffile + zarr reader. Until then every TIFF goes to the plain reader."""

from __future__ import annotations

from viewer.slide.source import NotThisBackend


class TiffSlide:
    @classmethod
    def open(cls, path, head, *, max_pixels=None):
        raise NotThisBackend("not yet")

"""The plain reader: a small image (JPEG, PNG, or a TIFF that is not a tiled RGB slide)
decoded whole into memory, behind the same :class:`SlideSource` interface as slides.

Its coarse levels are virtual (built lazily by the base class), so a 20k x 20k PNG is browsed
like a slide even though its pixels were decoded at once (PNG and JPEG cannot be read by regions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viewer.slide.decode import decode_image
from viewer.slide.source import Level, SlideSource

_VENDOR_BY_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"))


class PlainSlide(SlideSource):
    """An image held in RAM as one (H, W, 3) uint8 array."""

    backend = "plain"

    def __init__(self, path: str | Path, pixels: np.ndarray, notes: list[str] | tuple[str, ...] = (), vendor: str = "image") -> None:
        super().__init__()
        self.path = Path(path)
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        pixels.setflags(write=False)
        self._pixels = pixels
        self.vendor = vendor
        self.notes.extend(notes)
        height, width = pixels.shape[:2]
        self.native_levels = (Level(width, height, 1.0),)
        self.tile_size = (min(width, 512), min(height, 512))
        self._finish_levels()

    @classmethod
    def open(cls, path: str | Path, head: bytes, *, max_pixels: int | None = None) -> PlainSlide:
        pixels, notes = decode_image(path, max_pixels=max_pixels, head=head)
        vendor = next((name for magic, name in _VENDOR_BY_MAGIC if head.startswith(magic)), "tiff")
        return cls(path, pixels, notes, vendor=vendor)

    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._pixels[y : y + h, x : x + w]

    def read_all(self, level: int = 0, *, max_pixels: int | None = None) -> np.ndarray:
        if level == 0:
            return self._pixels  # already whole and read-only: no copy
        return super().read_all(level, max_pixels=max_pixels)

"""A procedural slide for canvas tests: any size, no file, and it counts what is read.

Pixels encode their level-0 position (red = x / 64, green = y / 64, blue = ``tint``), so a test
can tell which slide and which place a drawn tile came from. Reads can be held at a gate, and
chosen tiles can be made to fail like a corrupt file.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np

from viewer.errors import ImageError
from viewer.slide.source import Level, SlideSource

TILE = 512


class SyntheticSlide(SlideSource):
    """A slide with native levels of the given downsamples (powers of 2 or 4 in real files)."""

    backend = "test"
    vendor = "synthetic"

    def __init__(self, width: int = 16384, height: int = 12288, downsamples: tuple[int, ...] = (1, 4, 16, 64),
                 *, mpp: tuple[float, float] | None = None, tint: int = 200, name: str = "synthetic.tif",
                 broken: set[tuple[int, int, int]] | frozenset = frozenset(),
                 gated_levels: set[int] | frozenset = frozenset()) -> None:
        super().__init__()
        self.path = Path("/nonexistent") / name
        self.mpp = mpp
        self.tint = tint
        self.tile_size = (TILE, TILE)
        self.native_levels = tuple(Level(-(-width // d), -(-height // d), float(d)) for d in downsamples)
        self._finish_levels()
        self.broken = set(broken)
        """(level, column, row) of file tiles (``tile_size``) that cannot be decoded: any read
        touching one raises ImageError, as a real reader does."""
        self.gated_levels = set(gated_levels)
        self.gate = threading.Event()
        """Reads of ``gated_levels`` wait until this is set."""
        self.reads: Counter[int] = Counter()
        self.regions: list[tuple[int, int, int, int, int]] = []
        self.thumbnails = 0
        self._lock = threading.Lock()

    def pattern(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        d = self.levels[level].downsample
        out = np.empty((h, w, 3), np.uint8)
        out[..., 0] = ((np.arange(x, x + w) * d) // 64 % 256).astype(np.uint8)[None, :]
        out[..., 1] = ((np.arange(y, y + h) * d) // 64 % 256).astype(np.uint8)[:, None]
        out[..., 2] = self.tint
        return out

    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        with self._lock:
            self.reads[level] += 1
            self.regions.append((level, x, y, w, h))
        if level in self.gated_levels:
            self.gate.wait(30)
        tw, th = self.tile_size
        for row in range(y // th, (y + h - 1) // th + 1):
            for column in range(x // tw, (x + w - 1) // tw + 1):
                if (level, column, row) in self.broken:
                    problem = f"level {level} tile ({column}, {row}) is corrupt (JPEG data ends early)"
                    raise ImageError(problem, self.path)
        return self.pattern(level, x, y, w, h)

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        # Not through read_region, so tile reads can be counted exactly.
        self.thumbnails += 1
        level = len(self.levels) - 1
        info = self.levels[level]
        return self.pattern(level, 0, 0, info.width, info.height)

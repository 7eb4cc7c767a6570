"""The one slide interface every reader implements: levels, resolution, and region reads.

A :class:`SlideSource` never holds the whole image. Callers ask for a rectangle of one pyramid
level with :meth:`SlideSource.read_region` and get a ``(h, w, 3)`` uint8 RGB array; the backend
decodes only the tiles under that rectangle. Readers (``tiff``: tifffile + zarr, ``openslide``:
OpenSlide, ``plain``: small JPEG/PNG/odd TIFFs decoded in RAM) implement
:meth:`_read_native` for the levels their file really has.

When a file has no small level (a plain 40k x 40k TIFF, or a 1360x1024 BreCaHAD image), the base
class adds *virtual* levels, each half the size of the one below, built lazily tile by tile from
the level below and kept in a byte-bounded cache, so the display and the tissue detector never
need the full-resolution pixels at once.

Coordinates: ``read_region(level, x, y, w, h)`` takes ``x, y, w, h`` in **that level's pixels**
(level 0 = full resolution). Level ``k`` pixel ``(x, y)`` covers level-0 pixels
``[x*d, (x+1)*d)`` with ``d = levels[k].downsample``. Parts of the rectangle outside the level
are white (slide glass), so callers can read fixed-size tiles at the edges.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from viewer.cache import ByteLRU, half_size
from viewer.errors import ImageError

BACKGROUND = 255
"""Value of pixels outside the image: white, like the glass around the tissue."""

VIRTUAL_TILE = 512
"""Side of the tiles virtual levels are built and cached in, in that level's pixels."""

COARSEST_SIDE = 1024
"""Virtual levels are added until the coarsest level's longer side is at most this."""

VIRTUAL_CACHE_BYTES = 64 * 1024 * 1024
"""Default byte budget of one slide's cache of virtual-level tiles."""

MAX_MPP = 4.0
"""Pixel sizes coarser than this (µm per pixel) cannot describe a microscope slide scan.

Ordinary image tools write a 72-dpi resolution tag by default, which reads as ~353 µm per pixel;
such values are treated as unknown (with a note), like a file that records none."""


@dataclass(frozen=True)
class Level:
    """One level of a slide pyramid: its size in pixels and level-0 pixels per level pixel."""

    width: int
    height: int
    downsample: float
    virtual: bool = False
    """True for levels built by HistoViewer from the level below (not stored in the file)."""

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "downsample": self.downsample}


def checked_mpp(mpp: tuple[float, float] | None, notes: list[str], what: str = "the file") -> tuple[float, float] | None:
    """``mpp`` if it can describe a microscope scan, else ``None`` with a note saying why."""
    if mpp is None:
        return None
    x, y = (float(v) for v in mpp)
    if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
        notes.append(f"{what} records an invalid pixel size; treated as unknown")
        return None
    if x > MAX_MPP or y > MAX_MPP:
        notes.append(
            f"{what} records {x:.3g} µm per pixel, too coarse for a microscope scan "
            "(a default resolution tag of an image tool); treated as unknown"
        )
        return None
    return (x, y)


class SlideSource(ABC):
    """An opened slide or image. Thread-safe: :meth:`read_region` may be called from any thread.

    Subclasses set, in ``__init__``: ``path``, ``backend``, ``vendor``, ``native_levels``
    (tuple of :class:`Level`, level 0 first), ``mpp`` (``(x, y)`` µm per level-0 pixel, or
    ``None``), ``notes`` (list of one-line remarks), ``properties`` (raw metadata, str -> str),
    ``tile_size`` (the file's natural tile ``(width, height)``), then call
    :meth:`_finish_levels`. They implement :meth:`_read_native`, and optionally
    :meth:`associated_names` / :meth:`read_associated` and :meth:`close`.
    """

    path: Path
    backend: str = "?"
    vendor: str = "?"
    mpp: tuple[float, float] | None = None
    tile_size: tuple[int, int] = (VIRTUAL_TILE, VIRTUAL_TILE)
    native_levels: tuple[Level, ...] = ()
    levels: tuple[Level, ...] = ()

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.properties: dict[str, str] = {}
        self._virtual_cache: ByteLRU[np.ndarray] = ByteLRU(VIRTUAL_CACHE_BYTES)
        self._virtual_locks: dict[tuple, threading.Lock] = {}
        self._virtual_guard = threading.Lock()

    # Description --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.width, self.height

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def associated_names(self) -> tuple[str, ...]:
        """Names of the associated images the file holds (``thumbnail``, ``label``, ``macro``)."""
        return ()

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image as (h, w, 3) uint8."""
        raise KeyError(name)

    def close(self) -> None:
        """Release file handles. Reading after closing is an error."""

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.width}x{self.height} {len(self.levels)} levels>"

    def info(self) -> dict:
        """What was read, as JSON-ready data (the ``info`` command prints it)."""
        return {
            "file": str(self.path),
            "width": self.width,
            "height": self.height,
            "levels": [level.as_dict() | ({"virtual": True} if level.virtual else {}) for level in self.levels],
            "mpp": None if self.mpp is None else [float(self.mpp[0]), float(self.mpp[1])],
            "backend": self.backend,
            "vendor": self.vendor,
            "tile_size": list(self.tile_size),
            "associated_images": list(self.associated_names()),
            "notes": list(self.notes),
        }

    # Level choice -------------------------------------------------------------------------
    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (never coarser than asked)."""
        best = 0
        for index, level in enumerate(self.levels):
            if level.downsample <= downsample * (1 + 1e-6):
                best = index
        return best

    # Reading ------------------------------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y, y+h) x [x, x+w)`` of ``level`` as a new C-contiguous (h, w, 3) uint8 array.

        Coordinates are in that level's pixels; outside the level is white. Raises
        :class:`ImageError` (one line naming the file) when a tile cannot be decoded.
        """
        level, x, y, w, h = int(level), int(x), int(y), int(w), int(h)
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level must be in 0..{len(self.levels) - 1}, got {level}")
        if w < 0 or h < 0:
            raise ValueError(f"region size must be >= 0, got {w}x{h}")
        out = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        info = self.levels[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, info.width), min(y + h, info.height)
        if x1 <= x0 or y1 <= y0:
            return out
        if info.virtual:
            block = self._read_virtual(level, x0, y0, x1 - x0, y1 - y0)
        else:
            block = self._read_native(level, x0, y0, x1 - x0, y1 - y0)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = block
        return out

    def read_all(self, level: int = 0, *, max_pixels: int | None = None) -> np.ndarray:
        """A whole level as one read-only array: for images that fit in memory (training,
        small-image tests). Refuses levels above ``max_pixels`` (default: the configured limit)."""
        from viewer.slide.decode import max_pixels_setting

        info = self.levels[level]
        limit = max_pixels_setting() if max_pixels is None else int(max_pixels)
        if info.width * info.height > limit:
            raise ImageError(
                f"level {level} is {info.width}x{info.height} px, too large to load whole "
                f"(limit {limit} px; raise HISTOVIEWER_MAX_PIXELS or read it by regions)",
                self.path,
            )
        pixels = self.read_region(level, 0, 0, info.width, info.height)
        pixels.setflags(write=False)
        return pixels

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole slide, at most ``max_side`` px on its longer side, from the best level."""
        target = max(self.width, self.height) / max(1, int(max_side))
        level = self.best_level_for_downsample(max(1.0, target))
        info = self.levels[level]
        pixels = self.read_region(level, 0, 0, info.width, info.height)
        if max(pixels.shape[:2]) > max_side:
            from PIL import Image

            scale = max_side / max(pixels.shape[:2])
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
        return np.ascontiguousarray(pixels)

    @abstractmethod
    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of a native level; the rectangle lies inside the level. (h, w, 3) uint8."""

    # Virtual levels -----------------------------------------------------------------------
    def _finish_levels(self, *, coarsest_side: int = COARSEST_SIDE) -> None:
        """Set :attr:`levels`: the native ones, then virtual halvings until the coarsest level
        fits in ``coarsest_side``."""
        levels = list(self.native_levels)
        while max(levels[-1].width, levels[-1].height) > coarsest_side:
            last = levels[-1]
            levels.append(Level(-(-last.width // 2), -(-last.height // 2), last.downsample * 2, virtual=True))
        self.levels = tuple(levels)

    def _read_virtual(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), dtype=np.uint8)
        t = VIRTUAL_TILE
        for ty in range(y // t, (y + h - 1) // t + 1):
            for tx in range(x // t, (x + w - 1) // t + 1):
                tile = self._virtual_tile(level, tx, ty)
                ox, oy = tx * t, ty * t
                sx0, sy0 = max(x, ox), max(y, oy)
                sx1, sy1 = min(x + w, ox + tile.shape[1]), min(y + h, oy + tile.shape[0])
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox]
        return out

    def _virtual_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        key = (level, tx, ty)
        tile = self._virtual_cache.get(key)
        if tile is not None:
            return tile
        with self._virtual_guard:  # one builder per tile; others wait for it instead of repeating it
            lock = self._virtual_locks.setdefault(key, threading.Lock())
        with lock:
            tile = self._virtual_cache.get(key)
            if tile is None:
                info, below = self.levels[level], self.levels[level - 1]
                t = VIRTUAL_TILE
                x0, y0 = tx * t, ty * t
                w, h = min(t, info.width - x0), min(t, info.height - y0)
                # The level below, read through read_region so a virtual parent is built the same way.
                parent = self.read_region(level - 1, 2 * x0, 2 * y0, min(2 * w, below.width - 2 * x0), min(2 * h, below.height - 2 * y0))
                tile = half_size(parent)[:h, :w]
                tile.setflags(write=False)
                # The coarsest level is what every overview shows: keep it resident.
                self._virtual_cache.put(key, tile, pin=level == len(self.levels) - 1)
        with self._virtual_guard:
            self._virtual_locks.pop(key, None)
        return tile


class NotThisBackend(Exception):
    """Raised by a reader's ``open`` when the file is not of its kind: the next reader is tried.

    Distinct from :class:`ImageError`, which means the file *is* of that kind but broken."""

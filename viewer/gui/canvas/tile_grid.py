"""Which tiles of which pyramid level cover a part of the slide: pure geometry, no Qt.

The display cuts every level into a grid of tiles in *that level's* pixels. A tile is named by
``TileKey(level, column, row)``; its pixels are ``read_region(level, column * w, row * h, ...)``
and it is drawn over the level-0 rectangle ``downsample`` times larger, so every layer of the
canvas keeps drawing in level-0 pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from viewer.slide.source import SlideSource

DISPLAY_TILE = 512
"""Preferred side of a display tile in level pixels: one setImage of 768 kB, and few enough
tiles (a few dozen) to cover a screen."""

_MAX_FILE_TILE = 1024
"""Larger file tiles are split: a 4096-px strip would make each display tile a 48 MB read."""


class TileKey(NamedTuple):
    level: int
    column: int
    row: int


def grid_size(slide: SlideSource, level: int) -> tuple[int, int]:
    """``(width, height)`` of display tiles on ``level``, in that level's pixels.

    Native levels use a multiple of the file's own tile close to :data:`DISPLAY_TILE`, so a
    display tile never decodes a file tile only to throw most of it away; virtual levels are
    built in 512-px tiles (``VIRTUAL_TILE``) and use those.
    """
    if slide.levels[level].virtual:
        return DISPLAY_TILE, DISPLAY_TILE
    return _aligned(slide.tile_size[0]), _aligned(slide.tile_size[1])


def _aligned(file_tile: int) -> int:
    if not 16 <= file_tile <= _MAX_FILE_TILE:
        return DISPLAY_TILE
    multiple = max(1, round(DISPLAY_TILE / file_tile))
    return file_tile * multiple


def grid_shape(slide: SlideSource, level: int) -> tuple[int, int]:
    """``(columns, rows)`` of display tiles on ``level``."""
    info = slide.levels[level]
    tw, th = grid_size(slide, level)
    return -(-info.width // tw), -(-info.height // th)


def coarsest_level(slide: SlideSource) -> int:
    return len(slide.levels) - 1


def level_for_view(slide: SlideSource, level0_per_screen_px: float) -> int:
    """The level to draw when one screen pixel spans ``level0_per_screen_px`` level-0 pixels:
    the coarsest one that still has at least one pixel per screen pixel (never blurrier)."""
    return slide.best_level_for_downsample(max(level0_per_screen_px, 1e-9))


def tile_region(slide: SlideSource, key: TileKey) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the tile in its level's pixels, clipped to the level (edge tiles are
    smaller: reading past the edge would paint white glass over the dark background)."""
    info = slide.levels[key.level]
    tw, th = grid_size(slide, key.level)
    x, y = key.column * tw, key.row * th
    return x, y, max(0, min(tw, info.width - x)), max(0, min(th, info.height - y))


def tile_rect(slide: SlideSource, key: TileKey) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` of the tile in level-0 pixels: where it is drawn."""
    x, y, w, h = tile_region(slide, key)
    d = slide.levels[key.level].downsample
    return x * d, y * d, w * d, h * d


def tiles_in_rect(
    slide: SlideSource, level: int, left: float, top: float, right: float, bottom: float
) -> list[TileKey]:
    """Tiles of ``level`` that intersect the level-0 rectangle, nearest the centre first (the
    order they are requested in: what the user looks at arrives first)."""
    info = slide.levels[level]
    d = info.downsample
    # Clip to the image: nothing to load outside it.
    left, top = max(left, 0.0), max(top, 0.0)
    right, bottom = min(right, info.width * d), min(bottom, info.height * d)
    if right <= left or bottom <= top:
        return []
    tw, th = grid_size(slide, level)
    columns, rows = grid_shape(slide, level)
    c0, r0 = int(left / d // tw), int(top / d // th)
    # A tile whose left edge is exactly the rectangle's right edge is not visible.
    c1 = min(columns - 1, math.ceil(right / d / tw) - 1)
    r1 = min(rows - 1, math.ceil(bottom / d / th) - 1)
    cx, cy = (left + right) / 2 / d, (top + bottom) / 2 / d
    keys = [TileKey(level, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
    keys.sort(key=lambda k: ((k.column + 0.5) * tw - cx) ** 2 + ((k.row + 0.5) * th - cy) ** 2)
    return keys


def all_tiles(slide: SlideSource, level: int) -> list[TileKey]:
    columns, rows = grid_shape(slide, level)
    return [TileKey(level, c, r) for r in range(rows) for c in range(columns)]


def covering_tiles(slide: SlideSource, key: TileKey, level: int) -> list[TileKey]:
    """Tiles of another ``level`` that together cover the area of ``key``."""
    x, y, w, h = tile_rect(slide, key)
    return tiles_in_rect(slide, level, x, y, x + w, y + h)

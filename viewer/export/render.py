"""The overlay of a slide region at a downsample, rendered block by block.

:class:`OverlayRenderer` reads each output block from the slide level that is closest to the
downsample without being coarser (area-averaging the remainder), then paints the heatmap, the
annotation regions and rings with :func:`viewer.overlay.paint_layers`, the same painter as
:func:`viewer.overlay.compose`. At downsample 1 on a whole plain image the two are equal pixel
for pixel. Memory is one block (a strip of rows, or a tile) at a time, never the whole output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from viewer.overlay import CellSampler, OutputFrame, OverlayStyle, annotation_points, annotation_regions, paint_layers

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.data import HeatmapData
    from viewer.slide.source import SlideSource

BLOCK_PIXELS = 1 << 20
"""Output pixels rendered at once (about 3 MB of RGB plus a few float planes for the heatmap)."""

SOURCE_PIXELS = 1 << 18
"""Slide pixels read at once while resampling a block (about 4 MB with their float copy)."""

_EXACT = 1e-9


def whole_region(slide: SlideSource) -> tuple[int, int, int, int]:
    return (0, 0, slide.width, slide.height)


def read_slide_block(slide: SlideSource, frame: OutputFrame, block: tuple[int, int, int, int]) -> np.ndarray:
    """The slide under output block ``(ox, oy, w, h)`` of ``frame`` as (h, w, 3) uint8.

    Reads the coarsest level not coarser than the downsample; when the block falls exactly on
    that level's pixels (downsample 1 on level 0, or a pyramid level's own downsample) the
    pixels are returned as read, otherwise each output pixel is the area-weighted mean of the
    level pixels under it. Outside the slide is white.
    """
    ox, oy, w, h = (int(v) for v in block)
    d = frame.downsample
    if d < 1 - _EXACT:
        raise ValueError(f"downsample must be at least 1 (got {d:g}); outputs are never enlarged")
    level = slide.best_level_for_downsample(d)
    ds = slide.levels[level].downsample
    lx0, ly0 = (frame.x + ox * d) / ds, (frame.y + oy * d) / ds
    if abs(d / ds - 1) < _EXACT and _whole(lx0) and _whole(ly0):
        return slide.read_region(level, round(lx0), round(ly0), w, h)
    jx, wx = _area_weights(frame.x, d, ds, ox, w)
    rx0, source_width = int(jx.min()), int(jx.max()) - int(jx.min()) + 1
    # Level pixels per output row, so a band of output rows reads at most SOURCE_PIXELS of them
    # (up to 4 x 4 level pixels per output pixel between levels 4x apart, as in SVS files).
    per_row = source_width * (math.ceil(d / ds) + 1)
    band = max(1, SOURCE_PIXELS // per_row)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for r0 in range(0, h, band):
        rows_here = min(band, h - r0)
        jy, wy = _area_weights(frame.y, d, ds, oy + r0, rows_here)
        ry0 = int(jy.min())
        source = slide.read_region(level, rx0, ry0, source_width, int(jy.max()) - ry0 + 1).astype(np.float32)
        rows = sum(wy[:, t, None, None] * source[jy[:, t] - ry0] for t in range(jy.shape[1]))
        del source
        mixed = sum(wx[None, :, t, None] * rows[:, jx[:, t] - rx0] for t in range(jx.shape[1]))
        out[r0 : r0 + rows_here] = np.clip(np.floor(mixed + 0.5), 0, 255)
    return out


def _area_weights(start: float, step: float, level_downsample: float, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For output pixels ``first .. first+count-1`` along one axis: the level pixels each one
    overlaps ``(count, taps)`` and their weights (overlap length, normalised).

    Every output pixel's edges come from its own global index (``start + k*step``), never from
    the block's origin, so a pixel gets the same weights, hence the same value, in any block.
    """
    k = np.arange(first, first + count + 1, dtype=np.float64)
    edges = (start + k * step) / level_downsample
    a, b = edges[:-1], edges[1:]
    j0 = np.floor(a).astype(np.int64)
    taps = int(np.max(np.ceil(b) - j0))
    j = j0[:, None] + np.arange(taps)[None, :]
    weights = np.clip(np.minimum(b[:, None], j + 1) - np.maximum(a[:, None], j), 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    j = np.where(weights > 0, j, j0[:, None])  # unused taps point at a pixel that is read anyway
    return j, weights.astype(np.float32)


def _whole(value: float) -> bool:
    return abs(value - round(value)) < _EXACT


class OverlayRenderer:
    """Renders blocks of the overlay of ``slide`` in ``frame``: image, heatmap, markers.

    ``heatmap``: any :class:`~viewer.heatmap.data.HeatmapData` (cells placed by its grid) or
    ``None``. ``annotations``: an :class:`~viewer.annotations.Annotations` (normalised points,
    placed on level 0) or a mapping ``{class: level-0 (N, 2) x, y}``.
    """

    def __init__(
        self,
        slide: SlideSource,
        heatmap: HeatmapData | None,
        annotations: Any,
        style: OverlayStyle,
        frame: OutputFrame,
    ) -> None:
        self.slide = slide
        self.heatmap = heatmap if style.show_heatmap else None
        # One sampler for every block and pyramid level: a store's overview is read once.
        self._cells = None if self.heatmap is None else CellSampler(self.heatmap)
        self.style = style
        self.frame = frame
        self._level0_points: dict[str, np.ndarray] = {}
        self._level0_regions: list = []
        if style.show_annotations and annotations is not None:
            self._level0_points = annotation_points(annotations, slide.width, slide.height, style.visible_classes)
            self._level0_regions = annotation_regions(annotations, style.visible_classes)
        self.markers = frame.to_output(self._level0_points)
        self.regions = frame.regions_to_output(self._level0_regions)

    @classmethod
    def for_region(
        cls,
        slide: SlideSource,
        heatmap: HeatmapData | None,
        annotations: Any,
        style: OverlayStyle,
        *,
        region: tuple[int, int, int, int] | None = None,
        downsample: float = 1.0,
    ) -> OverlayRenderer:
        return cls(slide, heatmap, annotations, style, OutputFrame.for_region(region or whole_region(slide), downsample))

    def at(self, frame: OutputFrame) -> OverlayRenderer:
        """The same layers in another frame (a pyramid level), without re-reading annotations."""
        other = object.__new__(OverlayRenderer)
        other.slide, other.heatmap, other.style, other.frame = self.slide, self.heatmap, self.style, frame
        other._cells = self._cells
        other._level0_points = self._level0_points
        other._level0_regions = self._level0_regions
        other.markers = frame.to_output(self._level0_points)
        other.regions = frame.regions_to_output(self._level0_regions)
        return other

    def class_counts(self) -> dict[str, int]:
        """Points per drawn class inside the frame's area (edges included): the legend's counts."""
        x0, y0, x1, y1 = self.frame.level0_box()
        counts = {}
        for name, pts in self._level0_points.items():
            inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
            if inside.any():
                counts[name] = int(inside.sum())
        return counts

    def block(self, ox: int, oy: int, w: int, h: int) -> np.ndarray:
        """Output pixels ``[oy, oy+h) x [ox, ox+w)`` as a new (h, w, 3) uint8 array."""
        out = np.array(read_slide_block(self.slide, self.frame, (ox, oy, w, h)), dtype=np.uint8, copy=True, order="C")
        paint_layers(out, self.frame, (ox, oy), self._cells, self.markers, self.style, self.regions)
        return out

    def strips(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(y, strip)`` for full-width strips of ``rows`` rows (default: about
        :data:`BLOCK_PIXELS` pixels each), top to bottom."""
        width, height = self.frame.size
        rows = max(1, BLOCK_PIXELS // max(1, width)) if rows is None else max(1, int(rows))
        for y in range(0, height, rows):
            yield y, self.block(0, y, width, min(rows, height - y))


def render_overlay(
    slide: SlideSource,
    heatmap: HeatmapData | None,
    annotations: Any,
    style: OverlayStyle,
    *,
    region: tuple[int, int, int, int] | None = None,
    downsample: float = 1.0,
    rows: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The overlay of ``region`` (level-0 ``(x, y, w, h)``, default the whole slide) at
    ``downsample``, as ``(y, strip)`` full-width strips of a bounded number of rows."""
    return OverlayRenderer.for_region(slide, heatmap, annotations, style, region=region, downsample=downsample).strips(rows)


def render_array(renderer: OverlayRenderer) -> np.ndarray:
    """The whole output of ``renderer`` as one array: only for outputs that fit in memory."""
    width, height = renderer.frame.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    for y, strip in renderer.strips():
        out[y : y + strip.shape[0]] = strip
    return out

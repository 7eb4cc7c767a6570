"""The heatmap layer: probabilities coloured into RGBA and drawn over the slide at every zoom.

The heatmap is read through :class:`~viewer.heatmap.data.HeatmapData` (an array for images, a
zarr store for whole slides) and drawn by two items, like the image's pyramid:

- *cells*: the exact cells of the visible area (plus a margin), one RGBA pixel per cell, placed
  by the heatmap's grid (cell (r, c) is a stride-wide square centred on its window centre, in
  level-0 pixels). Small heatmaps are shown whole this way, as before.
- *overview*: at low zoom, where a cell would be smaller than a screen pixel, each block of
  8 x 8 cells is drawn as one, by the mean of its computed cells (or their maximum, so a small
  tumour focus stays visible on a whole slide). Not-computed cells are ignored, never taken as 0.

Cells not computed (NaN) and cells below the threshold are transparent, so the display data is
NaN-free uint8 RGBA (pyqtgraph's fast path). Opacity is the items' opacity: the slider recolours
nothing. "Smooth" draws both items with bilinear filtering, for presentation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QTimer
from PySide6.QtGui import QPainter

from viewer.colormaps import colour_index
from viewer.gui.canvas import Z_HEATMAP, Canvas
from viewer.heatmap.data import HeatmapData, cell_span

OVERVIEW_FACTOR = 8
"""Cells per overview cell along each axis (the store's overview arrays use the same)."""

MAX_CELL_ITEM = 2048
"""Most cells along a side drawn as exact cells; beyond that the overview is drawn."""

MIN_CELL_SCREEN_PX = 0.5
"""Below this many screen pixels per cell, the overview is drawn instead of the cells."""


def colour_cells(probs: np.ndarray, lut: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) probabilities -> (h, w, 4) uint8 RGBA; NaN or below threshold is transparent."""
    # One 32-bit RGBA word per cell from a packed LUT: a 4-byte gather is ~3x faster than
    # filling RGB and alpha separately, and a whole slide's overview is coloured on the main
    # thread when a run starts.
    packed = np.empty((len(lut), 4), dtype=np.uint8)
    packed[:, :3] = lut
    packed[:, 3] = 255
    words = packed.view(np.uint32).ravel()[colour_index(probs)]  # the exporter's rule, so screen and file agree
    clear_alpha = np.frombuffer(bytes((255, 255, 255, 0)), dtype=np.uint32)[0]
    with np.errstate(invalid="ignore"):
        words[~(probs >= threshold)] &= clear_alpha  # NaN compares False: transparent
    return words.view(np.uint8).reshape(probs.shape + (4,))


def reduce_blocks(probs: np.ndarray, factor: int, kind: str) -> np.ndarray:
    """NaN-ignoring mean or max over ``factor`` x ``factor`` blocks (partial blocks at the edges)."""
    rows, cols = probs.shape
    pad_r, pad_c = -rows % factor, -cols % factor
    padded = np.pad(probs, ((0, pad_r), (0, pad_c)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        reduced = np.nanmax(blocks, axis=(1, 3)) if kind == "max" else np.nanmean(blocks, axis=(1, 3))
    return reduced.astype(np.float32)


class _ImageItem(pg.ImageItem):
    """An ImageItem that can draw with bilinear filtering (Qt's smooth pixmap transform)."""

    smooth = False

    def paint(self, painter: QPainter, *args) -> None:  # noqa: D401 - Qt override
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.smooth)
        super().paint(painter, *args)


class HeatmapLayer:
    """Draws a (possibly partly computed) heatmap on a canvas, exact cells or overview by zoom."""

    def __init__(self, canvas: Canvas) -> None:
        self._canvas = canvas
        self.item = _ImageItem(axisOrder="row-major")  # exact cells
        self.overview_item = _ImageItem(axisOrder="row-major")
        canvas.add_item(self.overview_item, Z_HEATMAP)
        canvas.add_item(self.item, Z_HEATMAP + 0.5)
        self._data: HeatmapData | None = None
        self._lut = np.zeros((256, 3), dtype=np.uint8)
        self._threshold = 0.0
        self._visible = True
        self._coarse_kind = "mean"
        self._span: tuple[slice, slice] | None = None  # cells shown by self.item
        self._probs: np.ndarray | None = None  # their probabilities (a view of an array heatmap)
        self._rgba: np.ndarray | None = None
        self._overview: dict[str, np.ndarray] = {}
        self._overview_rgba: np.ndarray | None = None  # coloured overview of the kind shown
        self._overview_dirty = False
        self._mode = "cells"
        self._read_generation = 0  # of the latest background read of cells (stores)
        self._reading: tuple[slice, slice] | None = None
        # Parented to the canvas, so it dies with it and never fires into deleted items.
        self._refresh_timer = QTimer(canvas, singleShot=True, interval=40)
        self._refresh_timer.timeout.connect(self.refresh)
        canvas.view.sigRangeChanged.connect(lambda *_: self._refresh_timer.start())
        # New tiles recolour their part of the overview at once, but it is handed to Qt at most
        # every 150 ms: a whole-slide overview is a few MB of RGBA.
        self._overview_timer = QTimer(canvas, singleShot=True, interval=150)
        self._overview_timer.timeout.connect(self._push_overview)

    # Data -----------------------------------------------------------------------------------
    @property
    def data(self) -> HeatmapData | None:
        return self._data

    @property
    def mode(self) -> str:
        """``"cells"`` or ``"overview"``: what is drawn at the current zoom."""
        return self._mode

    def set_data(self, data: HeatmapData | None, overviews: dict[str, np.ndarray] | None = None) -> None:
        """Show ``data`` (NaN = not computed); later tiles arrive through :meth:`update_cells`.

        ``overviews``: the 1/8 overview arrays ``{"mean", "max"}`` when the caller read them
        already (off the main thread, for a store); otherwise they are built here from the data."""
        self._data = data
        self._span = self._probs = self._rgba = None
        self._overview = {}
        self._overview_rgba = None
        self._read_generation += 1
        self._reading = None
        self.item.clear()
        self.overview_item.clear()
        if data is None:
            return
        if not self._small(data):
            for kind in ("mean", "max"):
                given = None if overviews is None else overviews.get(kind)
                self._overview[kind] = (np.array(given, dtype=np.float32) if given is not None
                                        else self._initial_overview(data, kind))
        self.refresh(force=True)

    def set_heatmap(self, probs: np.ndarray | None, stride: int) -> None:
        """Show a plain image's heatmap array (older entry point, used by tests)."""
        if probs is None:
            self.set_data(None)
            return
        from viewer.heatmap.analysis import AnalysisGrid
        from viewer.heatmap.data import ArrayHeatmap
        from viewer.heatmap.engine import PATCH_SIZE

        rows, cols = probs.shape
        grid = AnalysisGrid((0, 0), 1.0, (cols - 1) * stride + PATCH_SIZE, (rows - 1) * stride + PATCH_SIZE, stride)
        self.set_data(ArrayHeatmap(probs, grid))

    def update_cells(self, rows: slice, cols: slice, probabilities: np.ndarray | None = None) -> None:
        """A tile was computed: recolour what of it is shown, and fold it into the overview.

        ``probabilities``: the tile's values (needed for stores; an array heatmap is read back)."""
        data = self._data
        if data is None:
            return
        if probabilities is None:
            probabilities = data.read(rows, cols)
        if self._overview:
            self._fold_into_overview(rows, cols, probabilities)
        span = self._span
        if span is None:
            return
        r0, r1 = max(rows.start, span[0].start), min(rows.stop, span[0].stop)
        c0, c1 = max(cols.start, span[1].start), min(cols.stop, span[1].stop)
        if r1 <= r0 or c1 <= c0:
            return
        local = (slice(r0 - span[0].start, r1 - span[0].start), slice(c0 - span[1].start, c1 - span[1].start))
        if not np.shares_memory(self._probs, probabilities):
            self._probs[local] = probabilities[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start]
        self._rgba[local] = colour_cells(self._probs[local], self._lut, self._threshold)
        self.item.setImage(self._rgba, autoLevels=False, levels=None)

    # Style ----------------------------------------------------------------------------------
    def set_style(self, lut: np.ndarray, threshold: float, opacity: float, visible: bool,
                  smooth: bool = False, coarse: str = "mean") -> None:
        recolour = threshold != self._threshold or not np.array_equal(lut, self._lut) or coarse != self._coarse_kind
        self._lut = np.asarray(lut, dtype=np.uint8)
        self._threshold = threshold
        self._coarse_kind = coarse if coarse in ("mean", "max") else "mean"
        self._visible = visible
        for item in (self.item, self.overview_item):
            item.setOpacity(opacity)
            item.smooth = bool(smooth)
            item.update()
        self.item.setVisible(visible and self._mode == "cells")
        self.overview_item.setVisible(visible and self._mode == "overview")
        if recolour and self._data is not None:
            if self._probs is not None:
                self._rgba = colour_cells(self._probs, self._lut, self._threshold)
                self.item.setImage(self._rgba, autoLevels=False, levels=None)
            self._overview_rgba = None
            self._show_overview()

    # Level of detail ------------------------------------------------------------------------
    def _small(self, data: HeatmapData) -> bool:
        rows, cols = data.shape
        return rows <= MAX_CELL_ITEM and cols <= MAX_CELL_ITEM

    def refresh(self, force: bool = False) -> None:
        """Pick cells or overview for the current view, reading cells only when needed."""
        data = self._data
        if data is None:
            return
        if self._small(data):
            if self._span is None or force:
                rows, cols = data.shape
                self._show_cells((slice(0, rows), slice(0, cols)))
            self._set_mode("cells")
            return
        rect = self._canvas.view.viewRect()
        grid = data.grid
        width_px = max(1.0, self._canvas.view.boundingRect().width())
        cell_screen = grid.stride * grid.scale * width_px / max(rect.width(), 1e-9)
        rows, cols = cell_span(grid, rect.left(), rect.top(), rect.right(), rect.bottom())
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        if cell_screen < MIN_CELL_SCREEN_PX or max(n_r, n_c) * 1.5 > MAX_CELL_ITEM or n_r <= 0 or n_c <= 0:
            self._show_overview()
            self._set_mode("overview")
            return
        shown = self._span
        if force or shown is None or not (shown[0].start <= rows.start and rows.stop <= shown[0].stop
                                          and shown[1].start <= cols.start and cols.stop <= shown[1].stop):
            # The visible cells plus half a view around them, so small pans need no new read.
            total_r, total_c = data.shape
            m_r, m_c = n_r // 2 + 1, n_c // 2 + 1
            span = (slice(max(0, rows.start - m_r), min(total_r, rows.stop + m_r)),
                    slice(max(0, cols.start - m_c), min(total_c, cols.stop + m_c)))
            if hasattr(data, "store"):
                self._read_in_background(span)
                if shown is None:  # nothing exact to show yet: keep the overview meanwhile
                    self._show_overview()
                    self._set_mode("overview")
                return
            self._show_cells(span)
        self._set_mode("cells")

    def _read_in_background(self, span: tuple[slice, slice]) -> None:
        """Read a store's cells in a worker: on the main thread the read would wait behind the
        running heatmap's chunk writes (zarr serialises its I/O), freezing the window."""
        if self._reading == span:
            return
        from viewer.gui.worker import run_in_background

        self._read_generation += 1
        self._reading = span
        data, generation = self._data, self._read_generation
        run_in_background(data.read, *span, on_result=lambda probs: self._on_read(generation, span, probs),
                          on_error=lambda _exc: None)

    def _on_read(self, generation: int, span: tuple[slice, slice], probs: np.ndarray) -> None:
        if generation != self._read_generation:
            return  # another heatmap, or the view moved on and asked for other cells
        self._reading = None
        self._show_cells(span, probs)
        self._set_mode("cells")

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        self.item.setVisible(self._visible and mode == "cells")
        self.overview_item.setVisible(self._visible and mode == "overview")

    def _show_cells(self, span: tuple[slice, slice], probs: np.ndarray | None = None) -> None:
        data = self._data
        rows, cols = span
        self._span = span
        self._probs = data.read(rows, cols) if probs is None else probs
        if not np.isfinite(self._probs).any():  # a run just started: all transparent, and cheap
            self._rgba = np.zeros(self._probs.shape + (4,), dtype=np.uint8)
        else:
            self._rgba = colour_cells(self._probs, self._lut, self._threshold)
        self.item.setImage(self._rgba, autoLevels=False, levels=None)
        self.item.setRect(self._cell_rect(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start, 1))

    def _cell_rect(self, row: int, col: int, n_rows: int, n_cols: int, factor: int) -> QRectF:
        """Level-0 rectangle of ``n_rows`` x ``n_cols`` items of ``factor`` cells from (row, col)."""
        grid = self._data.grid
        cell = grid.stride * grid.scale
        x0 = grid.origin[0] + (16 - grid.stride / 2 + grid.stride * col) * grid.scale
        y0 = grid.origin[1] + (16 - grid.stride / 2 + grid.stride * row) * grid.scale
        return QRectF(x0, y0, n_cols * factor * cell, n_rows * factor * cell)

    # Overview -------------------------------------------------------------------------------
    def _initial_overview(self, data: HeatmapData, kind: str) -> np.ndarray:
        stored = data.overview(kind)
        if stored is not None and stored[1] == OVERVIEW_FACTOR:
            return np.array(stored[0], dtype=np.float32)
        rows, cols = data.shape
        out = np.full((-(-rows // OVERVIEW_FACTOR), -(-cols // OVERVIEW_FACTOR)), np.nan, dtype=np.float32)
        step = OVERVIEW_FACTOR * 64  # read in bounded blocks, aligned to the overview
        for r in range(0, rows, step):
            for c in range(0, cols, step):
                block = data.read(slice(r, min(rows, r + step)), slice(c, min(cols, c + step)))
                reduced = reduce_blocks(block, OVERVIEW_FACTOR, kind)
                out[r // OVERVIEW_FACTOR : r // OVERVIEW_FACTOR + reduced.shape[0],
                    c // OVERVIEW_FACTOR : c // OVERVIEW_FACTOR + reduced.shape[1]] = reduced
        return out

    def _fold_into_overview(self, rows: slice, cols: slice, probabilities: np.ndarray) -> None:
        f = OVERVIEW_FACTOR
        # Tiles are store chunks (multiples of 8 cells from a multiple of 8), so each overview
        # cell they touch is entirely theirs; an unaligned tile is folded approximately.
        r0, c0 = rows.start // f, cols.start // f
        for kind, overview in self._overview.items():
            reduced = reduce_blocks(probabilities, f, kind)
            block = (slice(r0, r0 + reduced.shape[0]), slice(c0, c0 + reduced.shape[1]))
            overview[block] = reduced
            if kind == self._coarse_kind and self._overview_rgba is not None:
                self._overview_rgba[block] = colour_cells(reduced, self._lut, self._threshold)
                self._overview_dirty = True
        if self._overview_dirty and self._mode == "overview" and not self._overview_timer.isActive():
            self._overview_timer.start()

    def _push_overview(self) -> None:
        if self._overview_dirty and self._overview_rgba is not None:
            self._overview_dirty = False
            self.overview_item.setImage(self._overview_rgba, autoLevels=False, levels=None)

    def _show_overview(self) -> None:
        """Show the overview of the kind chosen; coloured once, then kept up to date per tile."""
        overview = self._overview.get(self._coarse_kind)
        if overview is None:
            return
        if self._overview_rgba is None or self._overview_dirty:
            if self._overview_rgba is None:
                self._overview_rgba = colour_cells(overview, self._lut, self._threshold)
            self._overview_dirty = False
            self.overview_item.setImage(self._overview_rgba, autoLevels=False, levels=None)
            self.overview_item.setRect(self._cell_rect(0, 0, overview.shape[0], overview.shape[1], OVERVIEW_FACTOR))

    def probability_at(self, x: float, y: float) -> float | None:
        """The probability of the cell drawn at level-0 point (x, y) (None outside the heatmap),
        from the cells in memory when possible."""
        data = self._data
        if data is None or not (math.isfinite(x) and math.isfinite(y)):
            return None
        grid = data.grid
        col = math.floor(((x - grid.origin[0]) / grid.scale - (16 - grid.stride / 2)) / grid.stride)
        row = math.floor(((y - grid.origin[1]) / grid.scale - (16 - grid.stride / 2)) / grid.stride)
        rows, cols = data.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return None
        span = self._span
        if span is not None and span[0].start <= row < span[0].stop and span[1].start <= col < span[1].stop:
            return float(self._probs[row - span[0].start, col - span[1].start])
        return float(data.read(slice(row, row + 1), slice(col, col + 1))[0, 0])

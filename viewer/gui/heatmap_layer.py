"""The heatmap layer: probabilities coloured into an RGBA buffer shown by one ImageItem.

Cells not computed yet (NaN) and cells below the threshold get alpha 0, so the display data is
NaN-free uint8 RGBA: pyqtgraph's fastest path. A new tile recolours only its own
sub-rectangle; style changes recolour the whole (small: one cell per 8x8 pixels) buffer.
Opacity is the item's opacity, so dragging the slider recolours nothing.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF

from viewer.colormaps import colour_index
from viewer.heatmap import heatmap_rect
from viewer.gui.canvas import Z_HEATMAP, Canvas


def colour_cells(probs: np.ndarray, lut: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) probabilities -> (h, w, 4) uint8 RGBA; NaN or below threshold is transparent."""
    rgba = np.empty(probs.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = lut[colour_index(probs)]  # the exporter's rule, so screen and file agree
    with np.errstate(invalid="ignore"):
        rgba[..., 3] = np.where(probs >= threshold, 255, 0)  # NaN compares False: transparent
    return rgba


class HeatmapLayer:
    """Draws a (possibly partly computed) heatmap array on a canvas."""

    def __init__(self, canvas: Canvas) -> None:
        self.item = pg.ImageItem(axisOrder="row-major")
        canvas.add_item(self.item, Z_HEATMAP)
        self._probs: np.ndarray | None = None
        self._rgba: np.ndarray | None = None
        self._lut = np.zeros((256, 3), dtype=np.uint8)
        self._threshold = 0.0

    def set_heatmap(self, probs: np.ndarray | None, stride: int) -> None:
        """Show ``probs`` (NaN = not computed); the array is read again by :meth:`update_cells`."""
        self._probs = probs
        if probs is None:
            self._rgba = None
            self.item.clear()
            return
        if np.isfinite(probs).any():
            self._rgba = colour_cells(probs, self._lut, self._threshold)
        else:  # a run just started: all transparent, and 30x cheaper than colouring 10^6 NaNs
            self._rgba = np.zeros(probs.shape + (4,), dtype=np.uint8)
        self.item.setImage(self._rgba, autoLevels=False, levels=None)
        # Cell (r, c) is a stride-wide square centred on its window centre (core geometry).
        self.item.setRect(QRectF(*heatmap_rect(probs.shape[0], probs.shape[1], stride)))

    def update_cells(self, rows: slice, cols: slice) -> None:
        """Recolour one tile after its probabilities were written into the array."""
        if self._probs is None or self._rgba is None:
            return
        self._rgba[rows, cols] = colour_cells(self._probs[rows, cols], self._lut, self._threshold)
        self.item.setImage(self._rgba, autoLevels=False, levels=None)

    def set_style(self, lut: np.ndarray, threshold: float, opacity: float, visible: bool) -> None:
        recolour = threshold != self._threshold or not np.array_equal(lut, self._lut)
        self._lut = np.asarray(lut, dtype=np.uint8)
        self._threshold = threshold
        self.item.setOpacity(opacity)
        self.item.setVisible(visible)
        if recolour and self._probs is not None:
            self._rgba = colour_cells(self._probs, self._lut, self._threshold)
            self.item.setImage(self._rgba, autoLevels=False, levels=None)

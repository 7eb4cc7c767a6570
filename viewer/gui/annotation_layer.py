"""Annotation markers: one pair of ScatterPlotItems per class, sized in screen pixels.

Each marker is a coloured ring over a slightly wider dark ring, so it reads on pale glass, on
dark nuclei and on any heatmap colour, at every zoom level (pxMode keeps the size constant).
"""

from __future__ import annotations

import pyqtgraph as pg

from viewer.annotations import Annotations, class_colour
from viewer.gui.canvas import Z_ANNOTATIONS, Canvas

MARKER_SIZE = 13  # px on screen: about one nucleus at fit-to-window on a 1360 x 1024 image
_OUTLINE = pg.mkPen(10, 10, 10, 220, width=4.5)


class AnnotationLayer:
    def __init__(self, canvas: Canvas) -> None:
        self._canvas = canvas
        self._items: dict[str, tuple[pg.ScatterPlotItem, pg.ScatterPlotItem]] = {}
        self._visible = True
        self._hidden: frozenset[str] = frozenset()

    def set_annotations(self, annotations: Annotations | None, width: int, height: int) -> None:
        for outline, ring in self._items.values():
            self._canvas.view.removeItem(outline)
            self._canvas.view.removeItem(ring)
        self._items.clear()
        if annotations is None:
            return
        for order, name in enumerate(annotations.classes):
            points = annotations.pixel_points(name, width, height)
            if not len(points):
                continue
            colour = class_colour(name)
            outline = pg.ScatterPlotItem(
                pos=points, size=MARKER_SIZE, symbol="o", pen=_OUTLINE, brush=None, pxMode=True, antialias=True
            )
            ring = pg.ScatterPlotItem(
                pos=points, size=MARKER_SIZE, symbol="o", pen=pg.mkPen(*colour, width=2.0), brush=None,
                pxMode=True, antialias=True,
            )
            # Later classes above earlier ones; each ring above its own outline.
            self._canvas.add_item(outline, Z_ANNOTATIONS + 2 * order)
            self._canvas.add_item(ring, Z_ANNOTATIONS + 2 * order + 1)
            self._items[name] = (outline, ring)
        self._apply()

    def set_visibility(self, visible: bool, hidden_classes: frozenset[str]) -> None:
        self._visible = visible
        self._hidden = hidden_classes
        self._apply()

    def is_class_shown(self, name: str) -> bool:
        """True if markers of ``name`` are currently drawn (used by tests and the legend)."""
        items = self._items.get(name)
        return bool(items and items[1].isVisible())

    def _apply(self) -> None:
        for name, items in self._items.items():
            shown = self._visible and name not in self._hidden
            for item in items:
                item.setVisible(shown)

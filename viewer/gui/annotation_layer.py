"""Annotation markers and regions on the canvas, and how the selection is highlighted.

Each point marker is a coloured ring over a slightly wider dark ring, so it reads on pale glass,
on dark nuclei and on any heatmap colour, at every zoom level (pxMode keeps the size constant).
Regions are outlines in their class colour with a light fill; ``ignore`` regions are grey and
hatched. Selected points get a white halo, selected regions a dashed white outline. Everything
is in level-0 pixel coordinates, so it stays in place at every zoom and on whole slides.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsPathItem

from viewer.annotations import IGNORE_CLASS, Annotations, Region, class_colour
from viewer.annotations.edits import Selection
from viewer.gui.canvas import Z_ANNOTATIONS, Canvas

MARKER_SIZE = 13  # px on screen: about one nucleus at fit-to-window on a 1360 x 1024 image
_OUTLINE = pg.mkPen(10, 10, 10, 220, width=4.5)
_SELECTED = pg.mkPen(255, 255, 255, 255, width=2.5)
_SELECTED_BRUSH = pg.mkBrush(255, 255, 255, 90)
Z_REGIONS = Z_ANNOTATIONS - 5  # under the points, over the heatmap
Z_SELECTION = Z_ANNOTATIONS + 40


def region_path(region: Region) -> QPainterPath:
    """All rings in one path with the odd-even fill rule, like :func:`points_in_regions`."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    for ring in region.rings:
        path.moveTo(float(ring[0, 0]), float(ring[0, 1]))
        for x, y in ring[1:]:
            path.lineTo(float(x), float(y))
        path.closeSubpath()
    return path


def region_style(name: str, selected: bool = False) -> tuple[QPen, QBrush]:
    r, g, b = class_colour(name)
    pen = QPen(QColor(255, 255, 255) if selected else QColor(r, g, b), 3.0 if selected else 2.0)
    pen.setCosmetic(True)  # width in screen pixels at every zoom
    if selected:
        pen.setStyle(Qt.PenStyle.DashLine)
    if name == IGNORE_CLASS:
        brush = QBrush(QColor(40, 40, 40, 150), Qt.BrushStyle.BDiagPattern)
    else:
        brush = QBrush(QColor(r, g, b, 45))
    return pen, brush


class AnnotationLayer:
    """Draws an :class:`Annotations` value; redraws only what changed since the last one.

    Edits replace only the arrays of the classes they touch and the regions they change (the
    rest is shared between the old and new value), so comparing by identity finds what to
    redraw: a click on a slide with 100,000 points rebuilds one class, not all of them.
    """

    def __init__(self, canvas: Canvas) -> None:
        self._canvas = canvas
        self._items: dict[str, tuple[pg.ScatterPlotItem, pg.ScatterPlotItem]] = {}
        self._drawn_points: dict[str, tuple[np.ndarray, int]] = {}  # class -> (array drawn, stacking order)
        self._region_items: list[tuple[Region, bool, QGraphicsPathItem]] = []  # (region, selected, item)
        self._selection_item: pg.ScatterPlotItem | None = None
        self._size = (0, 0)
        self._visible = True
        self._hidden: frozenset[str] = frozenset()
        self._regions: tuple[Region, ...] = ()

    def set_annotations(self, annotations: Annotations | None, width: int, height: int,
                        selection: Selection | None = None) -> None:
        if annotations is None or (width, height) != self._size:
            self._clear()
            self._size = (width, height)
        if annotations is None:
            return
        self._draw_points(annotations, width, height)
        self._draw_regions(annotations, selection)
        self._draw_selection(annotations, width, height, selection)
        self._apply()

    def _draw_points(self, annotations: Annotations, width: int, height: int) -> None:
        view = self._canvas.view
        wanted = {}
        for order, name in enumerate(annotations.classes):
            if len(annotations.normalised(name)):
                wanted[name] = (annotations.points[name], order)
        for name in list(self._items):
            drawn = self._drawn_points[name]
            if name not in wanted or wanted[name][0] is not drawn[0] or wanted[name][1] != drawn[1]:
                for item in self._items.pop(name):
                    view.removeItem(item)
                del self._drawn_points[name]
        for name, (array, order) in wanted.items():
            if name in self._items:
                continue  # unchanged: the same array as drawn
            points = annotations.pixel_points(name, width, height)
            colour = class_colour(name)
            outline = pg.ScatterPlotItem(
                pos=points, size=MARKER_SIZE, symbol="o", pen=_OUTLINE, brush=None, pxMode=True, antialias=True
            )
            ring = pg.ScatterPlotItem(
                pos=points, size=MARKER_SIZE, symbol="o", pen=pg.mkPen(*colour, width=2.0), brush=None,
                pxMode=True, antialias=True,
            )
            # Later classes above earlier ones; each ring above its own outline.
            self._canvas.add_item(outline, Z_ANNOTATIONS + 2 * order, ignore_bounds=True)
            self._canvas.add_item(ring, Z_ANNOTATIONS + 2 * order + 1, ignore_bounds=True)
            self._items[name] = (outline, ring)
            self._drawn_points[name] = (array, order)

    def _draw_regions(self, annotations: Annotations, selection: Selection | None) -> None:
        view = self._canvas.view
        chosen = set(selection.regions) if selection else set()
        old = self._region_items
        self._region_items = []
        for k, region in enumerate(annotations.regions):
            selected = k in chosen
            if k < len(old) and old[k][0] is region and old[k][1] == selected:
                self._region_items.append(old[k])
                old[k] = None  # kept
                continue
            item = QGraphicsPathItem(region_path(region))
            pen, brush = region_style(region.name, selected)
            item.setPen(pen)
            item.setBrush(brush)
            self._canvas.add_item(item, Z_REGIONS + (1 if selected else 0), ignore_bounds=True)
            self._region_items.append((region, selected, item))
        for entry in old:
            if entry is not None:
                view.removeItem(entry[2])
        self._regions = annotations.regions

    def _draw_selection(self, annotations: Annotations, width: int, height: int, selection: Selection | None) -> None:
        if self._selection_item is not None:
            self._canvas.view.removeItem(self._selection_item)
            self._selection_item = None
        if selection and selection.points:
            chosen = [annotations.pixel_points(n, width, height)[list(i)] for n, i in selection.points.items()]
            self._selection_item = pg.ScatterPlotItem(
                pos=np.concatenate(chosen), size=MARKER_SIZE + 8, symbol="o", pen=_SELECTED, brush=_SELECTED_BRUSH,
                pxMode=True, antialias=True,
            )
            self._canvas.add_item(self._selection_item, Z_SELECTION, ignore_bounds=True)

    def _clear(self) -> None:
        view = self._canvas.view
        for outline, ring in self._items.values():
            view.removeItem(outline)
            view.removeItem(ring)
        self._items.clear()
        self._drawn_points.clear()
        for _, _, item in self._region_items:
            view.removeItem(item)
        self._region_items.clear()
        self._regions = ()
        if self._selection_item is not None:
            view.removeItem(self._selection_item)
            self._selection_item = None

    def set_visibility(self, visible: bool, hidden_classes: frozenset[str]) -> None:
        self._visible = visible
        self._hidden = hidden_classes
        self._apply()

    def is_class_shown(self, name: str) -> bool:
        """True if markers of ``name`` are currently drawn (used by tests and the legend)."""
        items = self._items.get(name)
        return bool(items and items[1].isVisible())

    def shown_classes(self) -> set[str]:
        """Classes whose points and regions are drawn now (hidden ones cannot be selected)."""
        if not self._visible:
            return set()
        return {n for n in self._items if n not in self._hidden} | {
            r.name for r in self._regions if r.name not in self._hidden}

    def region_count(self) -> int:
        return len(self._region_items)

    def _apply(self) -> None:
        for name, items in self._items.items():
            shown = self._visible and name not in self._hidden
            for item in items:
                item.setVisible(shown)
        for region, _, item in self._region_items:
            item.setVisible(self._visible and region.name not in self._hidden)
        if self._selection_item is not None:
            self._selection_item.setVisible(self._visible)

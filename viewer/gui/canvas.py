"""The image canvas: a pyqtgraph ViewBox in image coordinates (y down, square pixels).

Layers are separate items stacked with ``setZValue`` (image 0, heatmap 10, annotations 20+);
this module owns the view (zoom, pan, fit) and the image layer, whose large images are drawn
from a display pyramid, cropped to the visible area, so a 10k x 10k slide never becomes one
400 MB QImage.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QMouseEvent
from PySide6.QtWidgets import QWidget

from viewer.gui.qt_workarounds import apply_workarounds

# Before anything emits signals: see qt_workarounds (PySide6 6.12.0 loses a reference per emit).
apply_workarounds()

# Row-major arrays are what numpy, tifffile and the core hand us; say so once, globally.
pg.setConfigOptions(imageAxisOrder="row-major")

BACKGROUND = QColor(38, 38, 40)
Z_IMAGE, Z_HEATMAP, Z_ANNOTATIONS = 0, 10, 20
MAX_ZOOM = 40.0  # screen pixels per image pixel: beyond this nothing new is visible
MIN_RANGE = 16.0  # image pixels across the view at the deepest wheel zoom
ZOOM_STEP = 1.25


class Canvas(pg.GraphicsView):
    """Shows one image and any number of overlay items; emits the cursor in image pixels."""

    cursor_moved = Signal(float, float)
    """Cursor position in image coordinates (throttled to ~30 Hz)."""
    cursor_left = Signal()
    zoom_changed = Signal(float)
    """Screen pixels per image pixel (1.0 = 100 %)."""

    _pyramid: tuple[np.ndarray, ...] = ()  # class default: GraphicsView.__init__ already resizes

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background=BACKGROUND)
        self.view = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False, defaultPadding=0.0)
        self.setCentralItem(self.view)
        self.setMinimumSize(200, 150)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setZValue(Z_IMAGE)
        self.view.addItem(self.image_item)
        self._shown: tuple[int, int, int, int, int] | None = None  # level, x0, y0, x1, y1
        self._last_cursor: QPointF | None = None
        # Mouse moves arrive at hundreds of Hz; the readout only needs ~30.
        self._mouse_proxy = pg.SignalProxy(self.scene().sigMouseMoved, rateLimit=30, slot=self._on_mouse_moved)
        self.view.sigRangeChanged.connect(self._on_range_changed)
        # Re-cropping a pyramid level is cheap but not free: do it once the view settles.
        self._lod_timer = QTimer(self, singleShot=True, interval=15)
        self._lod_timer.timeout.connect(self._update_level_of_detail)

    # Image ----------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the image shown, or (0, 0)."""
        if not self._pyramid:
            return 0, 0
        return int(self._pyramid[0].shape[1]), int(self._pyramid[0].shape[0])

    def set_image(self, pyramid: tuple[np.ndarray, ...]) -> None:
        """Show an image given as a display pyramid (level 0 = full resolution) and fit it."""
        self._pyramid = pyramid
        self._shown = None
        width, height = self.image_size
        # Keep the image findable: limited zoom-out and panning; generous for small images so
        # that 100 % still works in a large window.
        pad = 2 * max(width, height, 1000)
        self.view.setLimits(
            xMin=-pad, xMax=width + pad, yMin=-pad, yMax=height + pad,
            minXRange=MIN_RANGE, maxXRange=width + 2 * pad, minYRange=MIN_RANGE, maxYRange=height + 2 * pad,
        )
        if len(pyramid) == 1:
            self._show_region(0, 0, 0, width, height)
        self.fit()
        self._update_level_of_detail()

    def clear_image(self) -> None:
        self._pyramid = ()
        self._shown = None
        self.image_item.clear()

    def _show_region(self, level: int, x0: int, y0: int, x1: int, y1: int) -> None:
        """Display the image-coordinate box [x0, x1) x [y0, y1) from a pyramid level."""
        scale = 1 << level
        data = self._pyramid[level][y0 // scale : -(-y1 // scale), x0 // scale : -(-x1 // scale)]
        self.image_item.setImage(np.ascontiguousarray(data), autoLevels=False, levels=None)
        self.image_item.setRect(QRectF(x0, y0, data.shape[1] * scale, data.shape[0] * scale))
        self._shown = (level, x0, y0, x1, y1)

    def _update_level_of_detail(self) -> None:
        if len(self._pyramid) <= 1:
            return
        width, height = self.image_size
        rect = self.view.viewRect()
        # Image pixels per screen pixel, from the range itself: viewPixelSize() lags behind
        # setRange() until the next paint.
        pixel = rect.width() / max(1.0, self.view.boundingRect().width())
        level = min(len(self._pyramid) - 1, max(0, int(math.floor(math.log2(max(pixel, 1e-9))))))
        # Crop the visible area plus half a screen around it, so small pans need no new crop.
        margin_x, margin_y = rect.width() / 2, rect.height() / 2
        scale = 1 << level
        x0 = max(0, int(rect.left() - margin_x) // scale * scale)
        y0 = max(0, int(rect.top() - margin_y) // scale * scale)
        x1 = min(width, int(rect.right() + margin_x) + 1)
        y1 = min(height, int(rect.bottom() + margin_y) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        shown = self._shown
        if shown and shown[0] == level:
            _, sx0, sy0, sx1, sy1 = shown
            visible = (max(0, rect.left()), max(0, rect.top()), min(width, rect.right()), min(height, rect.bottom()))
            if sx0 <= visible[0] and sy0 <= visible[1] and sx1 >= visible[2] and sy1 >= visible[3]:
                return  # what is visible is already covered at the right resolution
        self._show_region(level, x0, y0, x1, y1)

    # View -----------------------------------------------------------------------------------
    def add_item(self, item: pg.GraphicsObject, z: float) -> None:
        item.setZValue(z)
        self.view.addItem(item)

    def fit(self) -> None:
        width, height = self.image_size
        if width:
            self.view.setRange(QRectF(0, 0, width, height), padding=0.02)

    def zoom_level(self) -> float:
        """Screen pixels per image pixel."""
        width = self.view.viewRect().width()
        return self.view.boundingRect().width() / width if width > 0 else 1.0

    def zoom_to(self, level: float) -> None:
        """Set screen pixels per image pixel, keeping the view centre fixed."""
        centre = self.view.viewRect().center()
        size = self.view.boundingRect().size()
        w, h = size.width() / level, size.height() / level
        self.view.setRange(QRectF(centre.x() - w / 2, centre.y() - h / 2, w, h), padding=0)

    def zoom_by(self, factor: float) -> None:
        """Zoom in (factor > 1) around the cursor when it is over the image, else the centre."""
        centre = self._last_cursor if self._cursor_inside() else self.view.viewRect().center()
        factor = min(factor, MAX_ZOOM / self.zoom_level()) if factor > 1 else factor
        self.view.scaleBy((1 / factor, 1 / factor), center=centre)

    def visible_centre(self) -> tuple[float, float] | None:
        """Centre of the visible part of the image, in image pixels (None without an image)."""
        width, height = self.image_size
        if not width:
            return None
        rect = self.view.viewRect().intersected(QRectF(0, 0, width, height))
        if rect.isEmpty():
            return width / 2, height / 2
        return rect.center().x(), rect.center().y()

    def _cursor_inside(self) -> bool:
        return self._last_cursor is not None and self.underMouse()

    def _on_range_changed(self, *_args: object) -> None:
        self.zoom_changed.emit(self.zoom_level())
        if len(self._pyramid) > 1:
            self._lod_timer.start()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if self._pyramid and event is not None:
            self.zoom_changed.emit(self.zoom_level())

    # Cursor ---------------------------------------------------------------------------------
    def _on_mouse_moved(self, args: tuple) -> None:
        scene_pos = args[0]
        if not self.view.sceneBoundingRect().contains(scene_pos):
            self._last_cursor = None
            self.cursor_left.emit()
            return
        point = self.view.mapSceneToView(scene_pos)
        self._last_cursor = point
        self.cursor_moved.emit(point.x(), point.y())

    def leaveEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().leaveEvent(event)
        self._last_cursor = None
        self.cursor_left.emit()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        # A double click fits the image, as in most viewers.
        if event.button() == Qt.MouseButton.LeftButton:
            self.fit()
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

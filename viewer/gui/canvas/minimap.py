"""Overview (minimap): a thumbnail of the whole slide over a corner of the canvas, with the part
in view outlined. Clicking or dragging in it moves the view there.

The thumbnail (``slide.thumbnail(256)``) is read on a worker thread by the canvas; this widget
only draws it. It stays hidden while the whole image is in view, where it would add nothing.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QWidget

THUMBNAIL_SIDE = 256
"""Longer side of the thumbnail read from the slide."""

MAX_SIDE = 200
"""Longer side of the thumbnail on screen, in pixels."""


class Minimap(QWidget):
    navigate = Signal(float, float)
    """A level-0 point the user clicked or dragged to: centre the view there."""

    _MARGIN = 4

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")
        self._image: QImage | None = None
        self._pixmap: QPixmap | None = None  # the thumbnail scaled once to the widget, not per paint
        self._slide_size = (0, 0)  # level-0 (width, height)
        self._view = QRectF()
        self.hide()

    # Content --------------------------------------------------------------------------------
    @property
    def has_thumbnail(self) -> bool:
        return self._image is not None

    def set_thumbnail(self, pixels: np.ndarray, slide_width: int, slide_height: int) -> None:
        """Show ``pixels`` ((h, w, 3) uint8) as the overview of a slide of the given level-0 size."""
        pixels = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
        h, w = pixels.shape[:2]
        # copy(): the QImage must own its bytes, not borrow the array's.
        self._image = QImage(pixels.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self._slide_size = (int(slide_width), int(slide_height))
        scale = MAX_SIDE / max(slide_width, slide_height, 1)
        self.resize(max(16, round(slide_width * scale)) + 2 * self._MARGIN,
                    max(16, round(slide_height * scale)) + 2 * self._MARGIN)
        area = self.image_rect().size().toSize()
        self._pixmap = QPixmap.fromImage(self._image.scaled(
            area, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation))
        self.update()

    def clear(self) -> None:
        self._image = self._pixmap = None
        self._slide_size = (0, 0)
        self.hide()

    def set_view_rect(self, rect: QRectF) -> None:
        """The level-0 rectangle in view."""
        if rect != self._view:
            self._view = QRectF(rect)
            self.update()

    # Geometry -------------------------------------------------------------------------------
    def image_rect(self) -> QRectF:
        """Where the thumbnail is drawn, in widget pixels."""
        m = self._MARGIN
        return QRectF(m, m, self.width() - 2 * m, self.height() - 2 * m)

    def to_slide(self, pos: QPointF) -> tuple[float, float]:
        """Widget pixel -> level-0 pixel (clamped to the slide)."""
        area, (width, height) = self.image_rect(), self._slide_size
        x = (pos.x() - area.left()) / max(area.width(), 1) * width
        y = (pos.y() - area.top()) / max(area.height(), 1) * height
        return min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))

    def to_widget(self, x: float, y: float) -> QPointF:
        """Level-0 pixel -> widget pixel."""
        area, (width, height) = self.image_rect(), self._slide_size
        return QPointF(area.left() + x / max(width, 1) * area.width(), area.top() + y / max(height, 1) * area.height())

    # Events ---------------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        if self._pixmap is None:
            return
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(20, 20, 22, 210))
        painter.drawPixmap(self.image_rect().topLeft(), self._pixmap)
        view = QRectF(self.to_widget(self._view.left(), self._view.top()),
                      self.to_widget(self._view.right(), self._view.bottom())).intersected(self.image_rect())
        if not view.isEmpty():
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(QPen(QColor(255, 214, 0), 2))  # yellow: visible on pink tissue and on glass
            painter.setBrush(Qt.BrushStyle.NoBrush)
            # At least a few pixels: at high zoom the view is a dot on the overview.
            centre = view.center()
            view.setWidth(max(view.width(), 4))
            view.setHeight(max(view.height(), 4))
            view.moveCenter(centre)
            painter.drawRect(view)
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton and self._image is not None:
            self.navigate.emit(*self.to_slide(event.position()))
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.buttons() & Qt.MouseButton.LeftButton and self._image is not None:
            self.navigate.emit(*self.to_slide(event.position()))
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        event.accept()  # not the canvas's double click (fit)

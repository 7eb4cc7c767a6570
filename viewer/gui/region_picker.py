"""Choosing a rectangle of the slide to analyse: a movable, resizable box on the canvas.

Analysis › Analyse a Rectangle places a box over the middle of the view; the user drags it and
its handles into place and presses Enter (or double-clicks inside it) to analyse the chunks under
it; choosing the menu item again puts it away. The rectangle is in level-0 pixels, like everything
on the canvas.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut

from viewer.gui.canvas import Z_ANNOTATIONS, Canvas

BOX_PEN = pg.mkPen((40, 200, 255), width=2)


class RegionPicker(QObject):
    chosen = Signal(float, float, float, float)
    """x, y, width, height of the rectangle, in level-0 pixels (clipped to the image)."""
    closed = Signal()
    """The box was put away (accepted or not)."""

    def __init__(self, canvas: Canvas) -> None:
        super().__init__(canvas)
        self._canvas = canvas
        self.roi: pg.RectROI | None = None
        # Enter only while the box is shown (Esc stays the heatmap's Cancel, which also hides it).
        self._accept = [QShortcut(QKeySequence(key), canvas) for key in (Qt.Key.Key_Return, Qt.Key.Key_Enter)]
        for shortcut in self._accept:
            shortcut.setEnabled(False)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(self.accept)

    @property
    def active(self) -> bool:
        return self.roi is not None

    def start(self) -> None:
        """Show the box over the middle half of the view."""
        self.cancel()
        rect = self._canvas.view.viewRect()
        centre = rect.center()
        size = QPointF(rect.width() / 2, rect.height() / 2)
        self.roi = pg.RectROI(centre - size / 2, size, pen=BOX_PEN, removable=False)
        self.roi.addScaleHandle((0, 0), (1, 1))
        self.roi.addScaleHandle((1, 0), (0, 1))
        self.roi.addScaleHandle((0, 1), (1, 0))
        self.roi.setToolTip("Drag to move, drag the handles to resize; Enter (or double-click) analyses it, Esc cancels")
        self.roi.sigClicked.connect(self._clicked)
        self.roi.setAcceptedMouseButtons(Qt.MouseButton.LeftButton)
        self._canvas.add_item(self.roi, Z_ANNOTATIONS + 10)
        for shortcut in self._accept:
            shortcut.setEnabled(True)

    def rect(self) -> QRectF | None:
        """The box in level-0 pixels, clipped to the image (None when not shown or empty)."""
        if self.roi is None:
            return None
        pos, size = self.roi.pos(), self.roi.size()
        box = QRectF(pos.x(), pos.y(), size.x(), size.y()).normalized()
        width, height = self._canvas.image_size
        box = box.intersected(QRectF(0, 0, width, height))
        return None if box.isEmpty() else box

    def accept(self) -> None:
        box = self.rect()
        self.cancel()
        if box is not None:
            self.chosen.emit(box.x(), box.y(), box.width(), box.height())

    def cancel(self) -> None:
        if self.roi is not None:
            self._canvas.view.removeItem(self.roi)
            self.roi = None
            self.closed.emit()
        for shortcut in self._accept:
            shortcut.setEnabled(False)

    def _clicked(self, _roi, event) -> None:
        if event.double():
            self.accept()

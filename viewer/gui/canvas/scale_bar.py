"""Scale bar: a round length in µm or mm, drawn over the bottom-left corner of the canvas.

Shown only when the slide records its pixel size (``slide.mpp``); a bar computed from a guessed
resolution would mislead a measurement, so without one there is no bar.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QWidget

NICE_LENGTHS_UM = tuple(round(m * 10.0**e, 6) for e in range(-1, 6) for m in (1, 2, 5))
"""0.1 µm ... 50 cm: the lengths a bar may show (1-2-5 steps, like a ruler)."""

MAX_BAR_PX = 160
"""Longest bar in screen pixels; the bar is the longest nice length that fits."""


def nice_length(um_per_screen_px: float, max_px: float = MAX_BAR_PX) -> float:
    """The longest of :data:`NICE_LENGTHS_UM` that is at most ``max_px`` screen pixels long
    (the shortest one when even that is longer)."""
    fitting = [length for length in NICE_LENGTHS_UM if length / um_per_screen_px <= max_px]
    return fitting[-1] if fitting else NICE_LENGTHS_UM[0]


def format_length(um: float) -> str:
    """``"50 µm"``, ``"0.5 µm"``, ``"1 mm"``, ``"20 mm"``."""
    if um >= 1000:
        return f"{um / 1000:g} mm"
    return f"{um:g} µm"


class ScaleBar(QWidget):
    """A bar of a round physical length; :meth:`set_scale` keeps it right as the zoom changes."""

    _PAD, _BAR_HEIGHT = 6, 4

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)  # pans go to the view
        self.setToolTip("Scale bar (from the slide's recorded pixel size)")
        self._label = ""
        self._bar_px = 0.0
        self._enabled = True
        self._has_scale = False
        self.hide()

    def text(self) -> str:
        """The label shown, e.g. ``"100 µm"`` ("" without a known pixel size)."""
        return self._label if self._has_scale else ""

    def bar_width(self) -> float:
        """Length of the bar in screen pixels."""
        return self._bar_px

    def set_enabled_by_user(self, on: bool) -> None:
        self._enabled = bool(on)
        self.setVisible(self._enabled and self._has_scale)

    def set_scale(self, um_per_screen_px: float | None) -> None:
        """µm covered by one screen pixel, or None when the slide has no pixel size."""
        self._has_scale = bool(um_per_screen_px) and um_per_screen_px > 0
        if self._has_scale:
            length = nice_length(um_per_screen_px)
            label, bar = format_length(length), length / um_per_screen_px
            if (label, round(bar, 1)) != (self._label, round(self._bar_px, 1)):
                self._label, self._bar_px = label, bar
                metrics = self.fontMetrics()
                width = max(round(bar), metrics.horizontalAdvance(label)) + 2 * self._PAD
                self.resize(width, metrics.height() + self._BAR_HEIGHT + 3 * self._PAD)
                self.update()
        self.setVisible(self._enabled and self._has_scale)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(255, 255, 255, 200))  # readable on tissue and on the dark background
        painter.drawRoundedRect(QRectF(self.rect()), 4, 4)
        metrics = self.fontMetrics()
        painter.setPen(QColor(20, 20, 20))
        text_rect = QRectF(0, self._PAD, self.width(), metrics.height())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter, self._label)
        x = (self.width() - self._bar_px) / 2
        y = self._PAD * 2 + metrics.height()
        painter.fillRect(QRectF(x, y, self._bar_px, self._BAR_HEIGHT), QColor(20, 20, 20))
        painter.end()

"""The application icon, drawn in code so it needs no resource files: a pink H&E disc with a
purple nucleus ring and a warm heatmap spot."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPen, QPixmap, QRadialGradient


def _draw(size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 64
    p.setPen(QPen(QColor(90, 40, 110), 2.5 * s))
    p.setBrush(QColor(236, 178, 204))
    p.drawEllipse(QRectF(3 * s, 3 * s, 58 * s, 58 * s))
    glow = QRadialGradient(QPointF(38 * s, 26 * s), 18 * s)
    glow.setColorAt(0, QColor(252, 200, 40, 230))
    glow.setColorAt(0.5, QColor(220, 70, 60, 160))
    glow.setColorAt(1, QColor(120, 20, 90, 0))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QBrush(glow))
    p.drawEllipse(QPointF(38 * s, 26 * s), 18 * s, 18 * s)
    p.setBrush(QColor(110, 50, 140))
    for x, y, r in ((20, 40, 6), (30, 48, 4.5), (44, 44, 5)):
        p.drawEllipse(QPointF(x * s, y * s), r * s, r * s)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.setPen(QPen(QColor(15, 15, 15), 4 * s))
    p.drawEllipse(QPointF(38 * s, 26 * s), 7 * s, 7 * s)
    p.setPen(QPen(QColor(0, 220, 255), 2 * s))
    p.drawEllipse(QPointF(38 * s, 26 * s), 7 * s, 7 * s)
    p.end()
    return pixmap


def app_icon() -> QIcon:
    icon = QIcon()
    for size in (16, 32, 48, 64, 128, 256):
        icon.addPixmap(_draw(size))
    return icon

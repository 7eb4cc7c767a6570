"""The application icon, drawn in code so it needs no resource files: a pink H&E disc with a
purple nucleus ring and a warm heatmap spot."""

from __future__ import annotations

from collections.abc import Callable

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


def _glyph(kind: str, size: int = 32) -> QPixmap:
    """Small monochrome-ish toolbar glyphs (the platform theme has no zoom icons everywhere)."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 32
    ink = QColor(60, 60, 70)
    p.setPen(QPen(ink, 2.4 * s))
    if kind in ("zoom_in", "zoom_out"):
        p.drawEllipse(QPointF(13 * s, 13 * s), 8.5 * s, 8.5 * s)
        p.setPen(QPen(ink, 4 * s))
        p.drawLine(QPointF(19.5 * s, 19.5 * s), QPointF(28 * s, 28 * s))
        p.setPen(QPen(ink, 2.4 * s))
        p.drawLine(QPointF(9 * s, 13 * s), QPointF(17 * s, 13 * s))
        if kind == "zoom_in":
            p.drawLine(QPointF(13 * s, 9 * s), QPointF(13 * s, 17 * s))
    elif kind == "fit":
        for x, y, dx, dy in ((4, 4, 1, 1), (28, 4, -1, 1), (4, 28, 1, -1), (28, 28, -1, -1)):
            p.drawLine(QPointF(x * s, y * s), QPointF((x + 8 * dx) * s, y * s))
            p.drawLine(QPointF(x * s, y * s), QPointF(x * s, (y + 8 * dy) * s))
        p.fillRect(QRectF(10 * s, 10 * s, 12 * s, 12 * s), QColor(236, 178, 204))
    elif kind == "actual":
        font = p.font()
        font.setPixelSize(int(15 * s))
        font.setBold(True)
        p.setFont(font)
        p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, "1:1")
    elif kind == "annotations":
        for x, y in ((10, 11), (22, 9), (15, 23)):
            p.setPen(QPen(QColor(15, 15, 15), 4.5 * s))
            p.drawEllipse(QPointF(x * s, y * s), 5 * s, 5 * s)
            p.setPen(QPen(QColor(0, 200, 240), 2.2 * s))
            p.drawEllipse(QPointF(x * s, y * s), 5 * s, 5 * s)
    elif kind == "heatmap":
        glow = QRadialGradient(QPointF(16 * s, 16 * s), 14 * s)
        glow.setColorAt(0, QColor(252, 255, 164))
        glow.setColorAt(0.35, QColor(245, 125, 21))
        glow.setColorAt(0.7, QColor(120, 28, 109))
        glow.setColorAt(1, QColor(0, 0, 4))
        p.setPen(QPen(ink, 1.2 * s))
        p.setBrush(QBrush(glow))
        p.drawRoundedRect(QRectF(3 * s, 3 * s, 26 * s, 26 * s), 4 * s, 4 * s)
    p.end()
    return pixmap


def multi_size_icon(paint: Callable[[int], QPixmap]) -> QIcon:
    """An icon drawn crisp at each toolbar size (16, 24, 32, 48 px) by ``paint(size)``."""
    icon = QIcon()
    for size in (16, 24, 32, 48):
        icon.addPixmap(paint(size))
    return icon


def toolbar_icon(kind: str) -> QIcon:
    """Icon for a toolbar action: zoom_in, zoom_out, fit, actual, annotations, heatmap."""
    return multi_size_icon(lambda size: _glyph(kind, size))

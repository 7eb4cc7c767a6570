"""What the window shows before an image is open: how to open one."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget


class Placeholder(QWidget):
    open_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        title = QLabel("<h2>No image open</h2>")
        hint = QLabel(
            "Open an H&amp;E image (TIFF, JPEG or PNG) with <b>File › Open…</b> (Ctrl+O),<br>"
            "or drop it here. BreCaHAD annotations in <tt>groundTruth/</tt> load with it,<br>"
            "and the tumour heatmap starts by itself."
        )
        button = QPushButton("Open Image…")
        button.clicked.connect(self.open_requested)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        for widget in (title, hint, button):
            layout.addWidget(widget, 0, Qt.AlignmentFlag.AlignHCenter)
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setEnabled(False)
        layout.addStretch(2)

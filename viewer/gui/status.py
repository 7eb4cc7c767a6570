"""Status bar: cursor readout (pixel, RGB, probability), zoom, and heatmap progress + Cancel."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar, QWidget


class StatusBar(QStatusBar):
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # Fixed-width digits keep the readout from jittering as the cursor moves.
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.position_label = QLabel()
        self.rgb_label = QLabel()
        self.probability_label = QLabel()
        self.zoom_label = QLabel()
        for label, sample in ((self.position_label, "x 10000  y 10000"), (self.rgb_label, "RGB 255 255 255"),
                              (self.probability_label, "p 0.000"), (self.zoom_label, "4000 %")):
            label.setFont(mono)
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance(sample) + 8)
            self.addPermanentWidget(label)
        self.position_label.setToolTip("Image pixel under the cursor")
        self.rgb_label.setToolTip("Colour of that pixel")
        self.probability_label.setToolTip("Tumour probability of the heatmap cell under the cursor")
        self.zoom_label.setToolTip("Zoom: screen pixels per image pixel")
        self.progress = QProgressBar()
        # Wide enough for the longest whole-slide text (it was clipped at 160 px).
        longest = "Tissue 100 % · 88 Mpx/s · 88 min 88 s left"
        self.progress.setFixedWidth(self.progress.fontMetrics().horizontalAdvance(longest) + 32)
        self.progress.setFormat("Heatmap %p %")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop computing the heatmap (Esc)")
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.addPermanentWidget(self.progress)
        self.addPermanentWidget(self.cancel_button)
        self.show_progress(None)
        self.clear_cursor()

    def show_cursor(self, x: int, y: int, rgb: tuple[int, int, int] | None, probability: float | None) -> None:
        self.position_label.setText(f"x {x}  y {y}")
        self.rgb_label.setText("RGB %3d %3d %3d" % rgb if rgb is not None else "")
        if probability is None:
            self.probability_label.setText("")
        else:
            self.probability_label.setText("p   –  " if probability != probability else f"p {probability:.3f}")

    def clear_cursor(self) -> None:
        for label in (self.position_label, self.rgb_label, self.probability_label):
            label.setText("")

    def show_zoom(self, level: float | None) -> None:
        self.zoom_label.setText("" if level is None else f"{level * 100:.0f} %")

    def show_progress(self, fraction: float | None) -> None:
        """Show the heatmap progress (0..1) with a Cancel button, or hide both (None)."""
        running = fraction is not None
        self.progress.setVisible(running)
        self.cancel_button.setVisible(running)
        if running:
            self.progress.setValue(round(fraction * 100))

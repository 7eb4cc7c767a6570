"""What File › Export… writes, through the same core functions as ``histoviewer export``, and the
small dialog that asks which part of a slide and at what size.

The writers run in a worker thread on snapshots taken on the main thread, so a heatmap tile
arriving during the export cannot change the file half-way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import (
    QButtonGroup, QCheckBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
    QLabel, QRadioButton, QSpinBox, QVBoxLayout, QWidget,
)

from viewer.annotations import Annotations
from viewer.export.figure import MAX_FIGURE_PIXELS, ExportSettings, export_overlay
from viewer.heatmap.data import HeatmapData
from viewer.overlay import OutputFrame, OverlayStyle
from viewer.slide.source import SlideSource

Region = tuple[int, int, int, int]


def write_overlay(
    slide: SlideSource, heatmap: HeatmapData | None, annotations: Annotations | None, style: OverlayStyle,
    path: Path, force: bool, settings: ExportSettings = ExportSettings(),
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Render and save the overlay (file type by suffix) exactly as ``histoviewer export`` does;
    returns the path written."""
    export_overlay(slide, heatmap, annotations, style, path, settings, force=force, progress=progress)
    return path


def write_heatmap(
    heatmap: np.ndarray, path: Path, stride: int, image_shape: tuple[int, ...], image_path: Path,
    model_path: str | None, force: bool, analysis: dict | None = None, precision: str = "float32",
) -> Path:
    """Save the heatmap (.npy or float TIFF, by suffix) and its JSON sidecar; returns the array's path."""
    from viewer.heatmap import save_heatmap
    from viewer.model import bundled_model_path

    array_path, _sidecar = save_heatmap(
        heatmap, path, stride=stride, image_shape=image_shape, image_path=image_path,
        # The sidecar records the model's SHA-256, so name the bundled file explicitly.
        model_path=model_path if model_path else bundled_model_path(), force=force, analysis=analysis,
        precision=precision,
    )
    return array_path


# ---------------------------------------------------------------------------------------------
# Export Overlay options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlayChoice:
    """What the options dialog returns: the core's settings plus the heatmap drawing."""

    settings: ExportSettings
    smooth: bool


def visible_region(rect: tuple[float, float, float, float], width: int, height: int) -> Region | None:
    """The whole level-0 pixels of the view rectangle ``(x, y, w, h)`` inside the slide, or
    None when the view shows none of it."""
    x, y, w, h = rect
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def default_downsample(region: Region) -> float:
    """A downsample that makes a PNG of ``region`` fit the in-memory limit (1 when it already does)."""
    _, _, w, h = region
    return max(1.0, math.ceil(math.sqrt(w * h / MAX_FIGURE_PIXELS) * 100) / 100)


class OverlayOptionsDialog(QDialog):
    """Whole slide or visible area; downsample or longest side; cell squares or smooth."""

    def __init__(self, slide_size: tuple[int, int], visible: Region | None, smooth: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export Overlay")
        self._whole: Region = (0, 0, *slide_size)
        self._visible = visible
        area = QGroupBox("Area")
        self.whole_button = QRadioButton(f"Whole image ({slide_size[0]} × {slide_size[1]} px)")
        self.visible_button = QRadioButton(
            "Visible area" + (f" ({visible[2]} × {visible[3]} px)" if visible else " (none on screen)"))
        self.visible_button.setEnabled(visible is not None)
        self.whole_button.setChecked(True)
        box = QVBoxLayout(area)
        box.addWidget(self.whole_button)
        box.addWidget(self.visible_button)
        size = QGroupBox("Size")
        self.downsample_button = QRadioButton("Downsample")
        self.downsample_spin = QDoubleSpinBox()
        self.downsample_spin.setRange(1.0, 100_000.0)
        self.downsample_spin.setDecimals(2)
        self.downsample_spin.setToolTip("Level-0 pixels per output pixel (1 = full resolution)")
        self.max_size_button = QRadioButton("Longest side")
        self.max_size_spin = QSpinBox()
        self.max_size_spin.setRange(16, 1_000_000)
        self.max_size_spin.setSuffix(" px")
        self.max_size_spin.setValue(4096)
        self.downsample_button.setChecked(True)
        self._size_group = QButtonGroup(self)
        for button in (self.downsample_button, self.max_size_button):
            self._size_group.addButton(button)
        form = QFormLayout(size)
        form.addRow(self.downsample_button, self.downsample_spin)
        form.addRow(self.max_size_button, self.max_size_spin)
        self.smooth_box = QCheckBox("Smooth heatmap (interpolate between cells)")
        self.smooth_box.setChecked(smooth)
        self.output_label = QLabel()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(area)
        row.addWidget(size)
        layout.addLayout(row)
        layout.addWidget(self.smooth_box)
        layout.addWidget(self.output_label)
        layout.addWidget(buttons)
        for signal in (self.whole_button.toggled, self.downsample_button.toggled, self.downsample_spin.valueChanged,
                       self.max_size_spin.valueChanged):
            signal.connect(self._update_output)
        self.downsample_spin.setValue(default_downsample(self._whole))
        self._update_output()

    def region(self) -> Region:
        return self._visible if self.visible_button.isChecked() and self._visible else self._whole

    def choice(self) -> OverlayChoice:
        region = self.region()
        settings = ExportSettings(
            region=None if region == self._whole else region,
            downsample=self.downsample_spin.value() if self.downsample_button.isChecked() else None,
            max_size=self.max_size_spin.value() if self.max_size_button.isChecked() else None,
        )
        return OverlayChoice(settings, self.smooth_box.isChecked())

    def _update_output(self, *_args: object) -> None:
        self.downsample_spin.setEnabled(self.downsample_button.isChecked())
        self.max_size_spin.setEnabled(self.max_size_button.isChecked())
        region = self.region()
        settings = self.choice().settings
        d = settings.downsample if settings.downsample is not None else max(1.0, max(region[2:]) / settings.max_size)
        w, h = OutputFrame.for_region(region, d).size
        fits = w * h <= MAX_FIGURE_PIXELS
        self.output_label.setText(
            f"Output: {w} × {h} px" + ("" if fits else " — too large for PNG/JPEG: save as a pyramidal .tif"))

    @classmethod
    def ask(cls, parent: QWidget, slide_size: tuple[int, int], visible: Region | None, smooth: bool) -> OverlayChoice | None:
        """Show the dialog; the choice, or None if cancelled. (Tests replace this method.)"""
        dialog = cls(slide_size, visible, smooth, parent)
        return dialog.choice() if dialog.exec() == QDialog.DialogCode.Accepted else None

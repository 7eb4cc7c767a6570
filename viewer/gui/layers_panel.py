"""The Layers dock: image, annotation classes (legend with counts) and heatmap controls.

The panel holds no state of its own beyond its widgets: it emits a new
:class:`~viewer.gui.layers.LayerState` on every change and can be set from one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from viewer.annotations import CLASSES, IGNORE_CLASS, class_colour, class_label
from viewer.colormaps import COLORMAPS, colormap_lut
from viewer.gui.layers import LayerState


def ring_icon(rgb: tuple[int, int, int], size: int = 16) -> QIcon:
    """A legend swatch drawn like the markers on the canvas: coloured ring, dark outline."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(QColor(10, 10, 10), 4.5))
    painter.drawEllipse(QRectF(3, 3, size - 6, size - 6))
    painter.setPen(QPen(QColor(*rgb), 2.0))
    painter.drawEllipse(QRectF(3, 3, size - 6, size - 6))
    painter.end()
    return QIcon(pixmap)


def lut_image(lut: np.ndarray, height: int = 1) -> QImage:
    """A 256 x height QImage of a colour LUT (kept alive by copying)."""
    rgb = np.ascontiguousarray(np.repeat(np.asarray(lut, np.uint8)[None, :, :], height, axis=0))
    return QImage(rgb.data, 256, height, 256 * 3, QImage.Format.Format_RGB888).copy()


class ColourBar(QWidget):
    """Probability 0..1 as colours, with the range hidden by the threshold hatched out."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image = lut_image(colormap_lut(COLORMAPS[0]))
        self._threshold = 0.0
        self.setMinimumHeight(38)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Tumour probability; cells below the threshold are not drawn")

    def set_colormap(self, lut: np.ndarray, threshold: float) -> None:
        self._image = lut_image(lut)
        self._threshold = threshold
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        bar = QRectF(6, 2, self.width() - 12, 16)
        painter.drawImage(bar, self._image)
        if self._threshold > 0:
            hidden = QRectF(bar.left(), bar.top(), bar.width() * self._threshold, bar.height())
            painter.fillRect(hidden, QColor(60, 60, 60, 200))
            painter.fillRect(hidden, Qt.BrushStyle.BDiagPattern)
        painter.setPen(self.palette().windowText().color())
        painter.drawRect(bar)
        for value in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = bar.left() + bar.width() * value
            painter.drawLine(int(x), int(bar.bottom()), int(x), int(bar.bottom()) + 3)
            text = f"{value:g}"
            width = painter.fontMetrics().horizontalAdvance(text)
            left = min(max(0, x - width / 2), self.width() - width)
            painter.drawText(int(left), int(bar.bottom()) + 4 + painter.fontMetrics().ascent(), text)
        painter.end()


class LayersPanel(QWidget):
    """Controls for every layer; ``changed`` carries the complete new state."""

    changed = Signal(object)
    current_class_chosen = Signal(str)
    """The class new points and regions get (the editing row's class box)."""
    reclass_requested = Signal(str)
    """Apply to Selected: give the selected points and regions this class."""

    def __init__(self, state: LayerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._state = state
        layout = QVBoxLayout(self)

        self.image_box = QCheckBox("Image")
        self.image_box.setToolTip("Show the slide image")
        layout.addWidget(self.image_box)

        self.annotations_group = QGroupBox("Annotations  (A)")
        self.annotations_group.setCheckable(True)
        self._class_grid = QGridLayout(self.annotations_group)
        self._class_grid.setColumnStretch(0, 1)
        self._class_boxes: dict[str, QCheckBox] = {}
        self._count_labels: dict[str, QLabel] = {}
        self._region_labels: dict[str, QLabel] = {}
        self.annotations_source = QLabel()
        self.annotations_source.setWordWrap(True)
        self.annotations_source.setEnabled(False)
        self._build_edit_row()
        layout.addWidget(self.annotations_group)

        self.heatmap_group = QGroupBox("Tumour heatmap  (H)")
        self.heatmap_group.setCheckable(True)
        grid = QGridLayout(self.heatmap_group)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, singleStep=5, pageStep=10)
        self.opacity_label = QLabel()
        self.colormap_combo = QComboBox()
        for name in COLORMAPS:
            self.colormap_combo.addItem(QIcon(QPixmap.fromImage(lut_image(colormap_lut(name), 12).scaled(48, 12))), name)
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, singleStep=1, pageStep=10)
        self.threshold_slider.setToolTip("Cells with a probability below the threshold are not drawn")
        self.threshold_label = QLabel()
        for label in (self.opacity_label, self.threshold_label):
            label.setMinimumWidth(label.fontMetrics().horizontalAdvance("100 %") + 4)
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.colour_bar = ColourBar()
        self.heatmap_info = QLabel("No heatmap yet")
        self.heatmap_info.setWordWrap(True)
        self.heatmap_info.setEnabled(False)
        grid.addWidget(QLabel("Opacity"), 0, 0)
        grid.addWidget(self.opacity_slider, 0, 1)
        grid.addWidget(self.opacity_label, 0, 2)
        grid.addWidget(QLabel("Colours"), 1, 0)
        grid.addWidget(self.colormap_combo, 1, 1, 1, 2)
        grid.addWidget(QLabel("Threshold"), 2, 0)
        grid.addWidget(self.threshold_slider, 2, 1)
        grid.addWidget(self.threshold_label, 2, 2)
        grid.addWidget(self.colour_bar, 3, 0, 1, 3)
        grid.addWidget(self.heatmap_info, 4, 0, 1, 3)
        layout.addWidget(self.heatmap_group)
        layout.addStretch(1)

        self.set_counts(None)
        self.set_state(state)
        self.image_box.toggled.connect(self._emit)
        self.annotations_group.toggled.connect(self._emit)
        self.heatmap_group.toggled.connect(self._emit)
        self.opacity_slider.valueChanged.connect(self._emit)
        self.threshold_slider.valueChanged.connect(self._emit)
        self.colormap_combo.currentIndexChanged.connect(self._emit)

    @property
    def state(self) -> LayerState:
        return self._state

    def set_state(self, state: LayerState) -> None:
        """Show ``state`` in the widgets without emitting ``changed``."""
        self._state = state
        widgets = [self.image_box, self.annotations_group, self.heatmap_group, self.opacity_slider,
                   self.threshold_slider, self.colormap_combo, *self._class_boxes.values()]
        for widget in widgets:
            widget.blockSignals(True)
        self.image_box.setChecked(state.show_image)
        self.annotations_group.setChecked(state.show_annotations)
        self.heatmap_group.setChecked(state.show_heatmap)
        self.opacity_slider.setValue(round(state.opacity * 100))
        self.threshold_slider.setValue(round(state.threshold * 100))
        self.colormap_combo.setCurrentIndex(max(0, self.colormap_combo.findText(state.colormap)))
        for name, box in self._class_boxes.items():
            box.setChecked(name not in state.hidden_classes)
        for widget in widgets:
            widget.blockSignals(False)
        self._refresh_labels()

    def set_counts(self, counts: dict[str, int] | None, source: str = "",
                   regions: dict[str, int] | None = None) -> None:
        """List the classes of the loaded annotations (or all BreCaHAD classes as a legend), then
        one row per class of regions (they show and hide with their class)."""
        while self._class_grid.count():
            item = self._class_grid.takeAt(0)
            if item.widget() is not None and item.widget() not in (self.annotations_source, self.edit_row):
                item.widget().deleteLater()
        self._class_boxes.clear()
        self._count_labels.clear()
        self._region_labels: dict[str, QLabel] = {}
        names = list(counts) if counts else list(CLASSES)
        for row, name in enumerate(names):
            box = QCheckBox(class_label(name))
            box.setIcon(ring_icon(class_colour(name)))
            box.setChecked(name not in self._state.hidden_classes)
            box.toggled.connect(self._emit)
            count = QLabel("–" if counts is None else f"{counts[name]:,}")
            count.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            empty = counts is None or counts[name] == 0
            count.setEnabled(not empty)
            box.setToolTip(f"{counts[name]:,} annotated points" if counts else "No annotations loaded")
            self._class_grid.addWidget(box, row, 0)
            self._class_grid.addWidget(count, row, 1)
            self._class_boxes[name] = box
            self._count_labels[name] = count
        row = len(names)
        for name, n in (regions or {}).items():
            label = QLabel(("Ignore" if name == IGNORE_CLASS else class_label(name)) + " regions")
            label.setToolTip("Ignore regions: their windows count as neither tumour nor non-tumour"
                             if name == IGNORE_CLASS else f"Regions of class {class_label(name)}")
            label.setIndent(24)
            count = QLabel(f"{n:,}")
            count.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self._class_grid.addWidget(label, row, 0)
            self._class_grid.addWidget(count, row, 1)
            self._region_labels[name] = count
            row += 1
        self.annotations_source.setText(source or "No annotations loaded")
        self.annotations_source.setToolTip(
            "Loaded from groundTruth/<image name>.json when present; File › Open Annotations… loads any other file"
        )
        self._class_grid.addWidget(self.annotations_source, row, 0, 1, 2)
        self._class_grid.addWidget(self.edit_row, row + 1, 0, 1, 2)
        self._fill_class_combo(names)

    def update_counts(self, counts: dict[str, int] | None, source: str = "",
                      regions: dict[str, int] | None = None) -> None:
        """Live counts while editing: only the numbers change unless the classes did."""
        regions = regions or {}
        if counts is None or list(counts) != list(self._count_labels) or list(regions) != list(self._region_labels):
            self.set_counts(counts, source, regions)
            return
        for name, n in counts.items():
            label = self._count_labels[name]
            label.setText(f"{n:,}")
            label.setEnabled(n > 0)
            self._class_boxes[name].setToolTip(f"{n:,} annotated points")
        for name, n in regions.items():
            self._region_labels[name].setText(f"{n:,}")
        self.annotations_source.setText(source or "No annotations loaded")

    def count_text(self, name: str) -> str:
        """The count shown for ``name`` (tests read it)."""
        return self._count_labels[name].text()

    # Editing row: the class of new points and regions, and reclassing the selection -----------
    def _build_edit_row(self) -> None:
        self.edit_row = QWidget()
        row = QHBoxLayout(self.edit_row)
        row.setContentsMargins(0, 4, 0, 0)
        self.class_combo = QComboBox()
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_combo.setMinimumContentsLength(8)
        self.class_combo.setToolTip("Class of new points and regions (keys 1–7; 0 for Ignore regions)")
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Give the selected points and regions this class (or press its number key)")
        self.apply_button.setEnabled(False)
        row.addWidget(QLabel("Class"))
        row.addWidget(self.class_combo, 1)
        row.addWidget(self.apply_button)
        self.class_combo.currentIndexChanged.connect(
            lambda _i: self.current_class_chosen.emit(self.class_combo.currentData() or ""))
        self.apply_button.clicked.connect(lambda: self.reclass_requested.emit(self.class_combo.currentData() or ""))

    def _fill_class_combo(self, names: list[str]) -> None:
        current = self.class_combo.currentData()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for name in [*dict.fromkeys([*CLASSES, *names]), IGNORE_CLASS]:
            label = "Ignore (regions)" if name == IGNORE_CLASS else class_label(name)
            self.class_combo.addItem(ring_icon(class_colour(name)), label, name)
        index = self.class_combo.findData(current) if current else 0
        self.class_combo.setCurrentIndex(max(0, index))
        self.class_combo.blockSignals(False)

    def set_current_class(self, name: str) -> None:
        """Show ``name`` as the class of new points (without emitting)."""
        index = self.class_combo.findData(name)
        if index < 0:
            self.class_combo.addItem(ring_icon(class_colour(name)), class_label(name), name)
            index = self.class_combo.count() - 1
        self.class_combo.blockSignals(True)
        self.class_combo.setCurrentIndex(index)
        self.class_combo.blockSignals(False)

    def set_selection_count(self, count: int) -> None:
        self.apply_button.setEnabled(count > 0)
        self.apply_button.setToolTip(f"Give the {count:,} selected points and regions this class (or press its "
                                     "number key)" if count else "Select points or regions first (Annotate › Select)")

    def set_heatmap_info(self, text: str) -> None:
        self.heatmap_info.setText(text)

    def _emit(self) -> None:
        hidden = {n for n, box in self._class_boxes.items() if not box.isChecked()}
        # Classes not listed now (another annotation file) keep their saved visibility.
        hidden |= {n for n in self._state.hidden_classes if n not in self._class_boxes}
        self._state = replace(
            self._state,
            show_image=self.image_box.isChecked(),
            show_annotations=self.annotations_group.isChecked(),
            hidden_classes=frozenset(hidden),
            show_heatmap=self.heatmap_group.isChecked(),
            opacity=self.opacity_slider.value() / 100,
            threshold=self.threshold_slider.value() / 100,
            colormap=self.colormap_combo.currentText() or self._state.colormap,
        )
        self._refresh_labels()
        self.changed.emit(self._state)

    def _refresh_labels(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()} %")
        self.threshold_label.setText(f"{self.threshold_slider.value() / 100:.2f}")
        self.colour_bar.set_colormap(colormap_lut(self._state.colormap), self._state.threshold)

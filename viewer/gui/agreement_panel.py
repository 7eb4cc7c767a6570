"""The Agreement dock: how the heatmap scores each class's annotated points, and its AUC."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from viewer.agreement import AgreementResult
from viewer.annotations import class_colour, class_label
from viewer.gui.layers_panel import ring_icon


def _number(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class AgreementPanel(QWidget):
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Class", "Points", "Mean p", "Before"])
        self.before: tuple[str, AgreementResult] | None = None
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.horizontalHeaderItem(2).setToolTip("Mean heatmap tumour probability at the class's points")
        self.table.horizontalHeaderItem(3).setToolTip("Mean p with the model before Analysis › Improve Model")
        self.table.setColumnHidden(3, True)
        self.auc_label = QLabel()
        self.auc_label.setWordWrap(True)  # never let this line widen the dock
        self.auc_label.setToolTip(
            "ROC AUC of the heatmap against the tumour points, with the windows of 'histoviewer evaluate'"
        )
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(self.export_requested)
        row = QHBoxLayout()
        row.addWidget(self.auc_label, 1)
        row.addWidget(self.export_button)
        layout.addWidget(self.message)
        layout.addWidget(self.table)
        layout.addLayout(row)
        layout.addStretch(1)
        self.show_result(None, "Open an image with annotations and run the heatmap to compare them.")

    def show_result(self, result: AgreementResult | None, message: str = "",
                    before: tuple[str, AgreementResult] | None = None) -> None:
        """Fill the table from ``result``; with None, explain in ``message`` what is missing.

        ``before``: (model name, result) of the same image with the model before a fine-tune,
        shown as a "Before" column and next to the AUC."""
        self.before = before
        self.table.setColumnHidden(3, before is None)
        self.message.setText(message)
        self.message.setVisible(bool(message))
        self.export_button.setEnabled(result is not None)
        self.table.setRowCount(0)
        if result is None:
            self.auc_label.setText("")
            self._fit_table()
            return
        # Classes without points have nothing to compare; the Layers legend still lists them.
        rows = [entry for entry in result.classes if entry.points]
        self.table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            name = QTableWidgetItem(ring_icon(class_colour(entry.name)), class_label(entry.name))
            points = QTableWidgetItem(f"{entry.points:,}")
            mean = QTableWidgetItem(_number(entry.mean_probability))
            if entry.sampled < entry.points:
                mean.setToolTip(f"{entry.sampled:,} of {entry.points:,} points lie on computed heatmap cells")
            cells = [name, points, mean]
            if before is not None:
                previous = before[1].by_class().get(entry.name)
                cells.append(QTableWidgetItem(_number(previous.mean_probability) if previous else "–"))
                cells[-1].setToolTip(f"Mean p with {before[0]}, before the fine-tune")
            for column, item in enumerate(cells):
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        self._fit_table()
        self.auc_label.setText(
            f"AUC vs tumour points: <b>{_number(result.auc)}</b><br>"
            f"<small>{result.positive_windows:,} positive, {result.negative_windows:,} negative windows</small>"
            + (f"<br>Before, with {before[0]}: <b>{_number(before[1].auc)}</b>" if before is not None else "")
        )

    def _fit_table(self) -> None:
        """Exactly as tall as its rows (at least one), so the dock has no empty table area."""
        rows = max(1, self.table.rowCount())
        height = self.table.horizontalHeader().sizeHint().height() + rows * self.table.verticalHeader().defaultSectionSize()
        self.table.setFixedHeight(height + 2 * self.table.frameWidth())

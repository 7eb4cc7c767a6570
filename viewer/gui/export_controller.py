"""File › Export Overlay…, Export Heatmap… and the Agreement dock's Export CSV…: asking where, then writing.

Export Overlay writes through :func:`viewer.export.figure.export_overlay`, the function behind
``histoviewer export``, so the same choices give the same pixels. For a whole slide it first
asks which part (whole slide or visible area), at what size (downsample or longest side) and
whether to smooth the heatmap; a microscope field is exported whole at full resolution, drawn as
on screen. The heatmap is a snapshot taken here on the main thread (an array is copied; a
whole slide's store is read as it is), written in a worker by export.py, so tiles still
arriving cannot change a file half-way; the small agreement CSV is written directly. Every
export ends in ``exported`` or ``export_failed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QWidget

from viewer.agreement import agreement_to_csv
from viewer.errors import InputError
from viewer.export.figure import ExportSettings
from viewer.gui import dialogs
from viewer.gui.agreement_controller import AgreementController
from viewer.gui.document import Document
from viewer.gui.export import OverlayOptionsDialog, visible_region, write_heatmap, write_overlay
from viewer.gui.heatmap_controller import HeatmapController
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.model_controller import ModelController
from viewer.gui.settings import Settings
from viewer.gui.status import StatusBar
from viewer.gui.worker import describe_error, run_in_background
from viewer.heatmap.data import ArrayHeatmap, HeatmapData

OVERLAY_FILTERS = {
    ".png": "PNG image (*.png)",
    ".tif": "Pyramidal TIFF (*.tif *.tiff)",
    ".jpg": "JPEG image (*.jpg *.jpeg)",
}


class ExportController(QObject):
    exported = Signal(str)
    export_failed = Signal(str)
    _progress = Signal(float)  # emitted by the export worker, shown on the main thread

    def __init__(
        self, window: QWidget, document: Document, heatmaps: HeatmapController, models: ModelController,
        agreement: AgreementController, layers_panel: LayersPanel, legend: QAction, status: StatusBar,
        settings: Settings,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._document = document
        self._heatmaps = heatmaps
        self._models = models
        self._agreement = agreement
        self._layers_panel = layers_panel
        self._legend = legend  # File › Add Legend to Exported Overlays
        self._status = status
        self._settings = settings
        self._progress.connect(lambda fraction: self._status.showMessage(f"Exporting… {100 * fraction:.0f}%"))

    def export_overlay(self) -> None:
        opened = self._document.opened
        if opened is None:
            return
        from viewer.heatmap.slide_run import is_whole_slide

        slide = opened.slide
        smooth = bool(getattr(self._layers_panel.state, "smooth", False))
        settings = ExportSettings()
        if is_whole_slide(slide):
            choice = OverlayOptionsDialog.ask(self._window, (slide.width, slide.height), self._visible_region(), smooth)
            if choice is None or not self._still_open(opened):
                return
            settings, smooth = choice.settings, choice.smooth
        first = ".tif" if is_whole_slide(slide) else ".png"
        filters = ";;".join([OVERLAY_FILTERS[first], *(f for k, f in OVERLAY_FILTERS.items() if k != first)])
        target = dialogs.ask_save_path(self._window, "Export Overlay", self._suggest(f"overlay{first}"), filters, first)
        if target is None or not self._still_open(opened):
            return
        heatmaps, annotations = self._heatmaps, self._document.annotations
        # Point classes, then region-only ones (ignore): hiding one class must not drop the others.
        classes = list(dict.fromkeys([*annotations.classes, *(r.name for r in annotations.regions)])) if annotations else ()
        style = self._layers_panel.state.overlay_style(classes, heatmaps.stride, self._legend.isChecked())
        style = dataclasses.replace(style, smooth=smooth)
        self._run(write_overlay, slide, self._heatmap_snapshot(), annotations, style, *target, settings,
                  self._progress.emit)

    def _heatmap_snapshot(self) -> HeatmapData | None:
        """The heatmap to draw, frozen: tiles may still be arriving while the export runs. An
        array is copied; a whole slide's store is read as it is (chunks finishing meanwhile may
        show, never half a chunk)."""
        data = getattr(self._heatmaps, "data", None)
        if data is None and self._heatmaps.heatmap is not None:  # a controller without .data
            from viewer.overlay import image_heatmap

            slide = self._document.opened.slide
            return image_heatmap(self._heatmaps.heatmap.copy(), slide.width, slide.height, self._heatmaps.stride)
        if isinstance(data, ArrayHeatmap):
            return ArrayHeatmap(data.array.copy(), data.grid)
        return data

    def _visible_region(self) -> tuple[int, int, int, int] | None:
        canvas = getattr(self._window, "canvas", None)
        opened = self._document.opened
        if canvas is None or opened is None:
            return None
        rect = canvas.view.viewRect()
        return visible_region((rect.left(), rect.top(), rect.width(), rect.height()), opened.slide.width, opened.slide.height)

    def export_heatmap(self) -> None:
        heatmaps, opened = self._heatmaps, self._document.opened
        heatmap = heatmaps.heatmap
        if opened is None or heatmap is None or heatmaps.runner.is_running():
            return
        target = dialogs.ask_save_path(
            self._window, "Export Heatmap", self._suggest("heatmap.npy"),
            "NumPy array (*.npy);;Float TIFF (*.tif *.tiff)", ".npy", also=(".json",)
        )
        if target is None or not self._still_open(opened, heatmap):
            return
        slide = opened.slide
        grid = getattr(heatmaps, "grid", None)
        shape = (slide.height, slide.width) if grid is None else (grid.height, grid.width)
        self._run(write_heatmap, heatmap.copy(), target[0], heatmaps.stride, shape, slide.path, self._models.path,
                  target[1], None if grid is None else grid.as_attrs(),
                  heatmaps.heatmap_precision)

    def export_agreement(self) -> None:
        result = self._agreement.result
        if result is None:
            return
        target = dialogs.ask_save_path(self._window, "Export Agreement", self._suggest("agreement.csv"),
                                       "CSV (*.csv)", ".csv")
        if target is None:
            return
        try:
            agreement_to_csv(result, target[0], force=target[1])
        except InputError as exc:
            dialogs.warn(self._window, "Cannot export", str(exc))
            return
        self._settings.set_last_folder("exports", target[0])
        self._status.showMessage(f"Saved {target[0]}", 5000)
        self.exported.emit(str(target[0]))

    def _still_open(self, opened: object, heatmap: object = None) -> bool:
        """The save dialog is modal, but an image opening in the background can still land
        while it is up: then the export would mix two images, so it is refused instead."""
        if self._document.opened is opened and (heatmap is None or self._heatmaps.heatmap is heatmap):
            return True
        dialogs.warn(self._window, "Nothing exported",
                     "The image or its heatmap changed while the save dialog was open. Export again.")
        return False

    def _suggest(self, ending: str) -> str:
        """A name in the folder of the last export, or else the image's own folder."""
        opened = self._document.opened
        stem = opened.slide.path.stem if opened else "histoviewer"
        folder = self._settings.last_folder("exports", fallback=opened.slide.path.parent if opened else None)
        return str(Path(folder) / f"{stem}_{ending}")

    def _run(self, func: Callable[..., Path], *args: Any) -> None:
        self._status.showMessage("Exporting…")
        run_in_background(func, *args, on_result=self._on_exported, on_error=self._on_failed)

    def _on_exported(self, path: Path) -> None:
        self._settings.set_last_folder("exports", path)
        self._status.showMessage(f"Saved {path}", 8000)
        self.exported.emit(str(path))

    def _on_failed(self, exc: BaseException) -> None:
        self._status.clearMessage()
        message = describe_error(exc)
        dialogs.warn(self._window, "Cannot export", message)
        self.export_failed.emit(message)

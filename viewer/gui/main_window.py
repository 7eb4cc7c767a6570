"""The main window: wires the canvas, panels, actions and background work together.

State changes only on the main thread and only once new data is complete: a file is read
fully in a worker before the window swaps to it, so a bad file leaves everything as it was.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QStackedWidget, QWidget

from viewer import DEFAULT_STRIDE
from viewer.agreement import AgreementResult, agreement
from viewer.annotations import Annotations, load_annotations
from viewer.colormaps import colormap_lut
from viewer.errors import InputError
from viewer.gui import dialogs
from viewer.gui.about import AboutDialog
from viewer.gui.actions import build_actions, build_menus
from viewer.gui.agreement_panel import AgreementPanel
from viewer.gui.annotation_layer import AnnotationLayer
from viewer.gui.canvas import ZOOM_STEP, Canvas
from viewer.gui.document import OpenedImage, read_image
from viewer.gui.export import write_heatmap, write_overlay
from viewer.gui.heatmap_layer import HeatmapLayer
from viewer.gui.layers import LayerState
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.placeholder import Placeholder
from viewer.gui.settings import Settings
from viewer.gui.status import StatusBar
from viewer.heatmap import blank_heatmap, pixel_to_cell
from viewer.gui.worker import (
    HeatmapRequest,
    HeatmapRunner,
    ModelLoader,
    describe_error,
    ensure_thread_capacity,
    run_in_background,
    wait_for_workers,
)
from viewer.slide import IMAGE_SUFFIXES

APP_NAME = "HistoViewer"


class MainWindow(QMainWindow):
    image_opened = Signal(str)
    open_failed = Signal(str)
    model_ready = Signal()
    heatmap_finished = Signal(bool)  # True = complete, False = cancelled or failed
    exported = Signal(str)
    export_failed = Signal(str)

    def __init__(self, model_path: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        ensure_thread_capacity()
        self.settings = Settings()
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.resize(1280, 860)

        # Document state: replaced as a whole, never half-updated.
        self.opened: OpenedImage | None = None
        self.annotations: Annotations | None = None
        self.heatmap: np.ndarray | None = None
        self.heatmap_complete = False
        # The stride of self.heatmap: everything that reads the array (layer, agreement,
        # readout, exports) uses it. It follows window_step only when a run starts, so the
        # array and its geometry always change together.
        self.heatmap_stride = DEFAULT_STRIDE
        self.window_step = self.settings.heatmap_stride()  # Analysis › Window Step
        self.agreement_result: AgreementResult | None = None
        self.model: object | None = None
        self.model_path = model_path or None
        self._model_problem: str | None = None
        self._run_when_model_ready = False
        self._open_generation = 0
        self._cells_done = 0
        self._closing = False

        self.canvas = Canvas()
        self.heatmap_layer = HeatmapLayer(self.canvas)
        self.annotation_layer = AnnotationLayer(self.canvas)
        self.placeholder = Placeholder()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.canvas)
        self.setCentralWidget(self.stack)

        self.layers_panel = LayersPanel(LayerState.from_settings(self.settings.layer_values()))
        self.agreement_panel = AgreementPanel()
        self.status = StatusBar()
        self.setStatusBar(self.status)
        self.actions = build_actions(self)
        self.toolbar, panels_menu = build_menus(self, self.actions)
        docks = []
        for title, name, widget in (("Layers", "layers_dock", self.layers_panel),
                                    ("Agreement", "agreement_dock", self.agreement_panel)):
            dock = QDockWidget(title, self)
            dock.setObjectName(name)  # saveState()/restoreState() identify docks by name
            scroll = QScrollArea()  # small screens scroll the panel instead of squashing it
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setWidget(widget)
            dock.setWidget(scroll)
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            panels_menu.addAction(dock.toggleViewAction())
            docks.append(dock)
        # Give the image most of the width; a saved layout (restored below) overrides this.
        self.resizeDocks(docks, [300, 300], Qt.Orientation.Horizontal)
        self.resizeDocks(docks, [self.layers_panel.sizeHint().height() + 30, 200], Qt.Orientation.Vertical)

        self.model_loader = ModelLoader(self)
        self.runner = HeatmapRunner(self)
        self._connect()
        self.actions.auto_run.setChecked(self.settings.auto_run_heatmap())
        self.actions.export_legend.setChecked(self.settings.export_legend())
        self.actions.window_steps[self.window_step].setChecked(True)  # setChecked does not trigger
        self._apply_layers(self.layers_panel.state, save=False)
        self._restore_window()
        self._update_actions()

    # Start-up -------------------------------------------------------------------------------
    def start(self, image: str | None = None, annotations: str | None = None) -> None:
        """Begin loading the model in the background and open ``image`` if given."""
        if self._closing:
            return  # closed before the event loop got here
        self.load_model(self.model_path)
        if image:
            self.open_image(image, annotations)

    def _connect(self) -> None:
        a = self.actions
        a.open.triggered.connect(self.choose_image)
        a.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        a.open_annotations.triggered.connect(self.choose_annotations)
        a.load_model.triggered.connect(self.choose_model)
        a.export_overlay.triggered.connect(self.export_overlay)
        a.export_heatmap.triggered.connect(self.export_heatmap)
        a.close_image.triggered.connect(self.close_image)
        a.quit.triggered.connect(self.close)
        a.fit.triggered.connect(self.canvas.fit)
        a.zoom_100.triggered.connect(lambda: self.canvas.zoom_to(1.0))
        a.zoom_in.triggered.connect(lambda: self.canvas.zoom_by(ZOOM_STEP))
        a.zoom_out.triggered.connect(lambda: self.canvas.zoom_by(1 / ZOOM_STEP))
        a.show_image.toggled.connect(lambda on: self._change_layers(show_image=on))
        a.show_annotations.toggled.connect(lambda on: self._change_layers(show_annotations=on))
        a.show_heatmap.toggled.connect(lambda on: self._change_layers(show_heatmap=on))
        a.run_heatmap.triggered.connect(self.run_heatmap)
        a.cancel_heatmap.triggered.connect(self.cancel_heatmap)
        a.auto_run.toggled.connect(self.settings.set_auto_run_heatmap)
        a.export_legend.toggled.connect(self.settings.set_export_legend)
        a.window_step_group.triggered.connect(lambda action: self.set_window_step(action.data()))
        a.about.triggered.connect(lambda: AboutDialog(self.model_path, self).exec())
        self.placeholder.open_requested.connect(self.choose_image)
        self.layers_panel.changed.connect(self._apply_layers)
        self.agreement_panel.export_requested.connect(self.export_agreement)
        self.status.cancel_requested.connect(self.cancel_heatmap)
        self.canvas.cursor_moved.connect(self._show_cursor)
        self.canvas.cursor_left.connect(self.status.clear_cursor)
        self.canvas.zoom_changed.connect(self.status.show_zoom)
        self.model_loader.loaded.connect(self._on_model_loaded)
        self.model_loader.failed.connect(self._on_model_failed)
        self.runner.tile_ready.connect(self._on_tile)
        self.runner.finished.connect(self._on_heatmap_finished)
        self.runner.failed.connect(self._on_heatmap_failed)

    # Opening images -------------------------------------------------------------------------
    def choose_image(self) -> None:
        path = dialogs.ask_open_path(self, "Open Image", self.settings.last_folder("images"), dialogs.IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path, annotations: str | Path | None = None) -> None:
        """Read ``path`` in the background; the window switches to it only if that succeeds."""
        if self._closing:
            return
        self._open_generation += 1
        self.status.showMessage(f"Opening {Path(path).name}…")
        run_in_background(
            read_image, path, annotations,
            on_result=partial(self._on_image_read, self._open_generation, str(path)),
            on_error=partial(self._on_open_failed, self._open_generation),
        )

    def _on_image_read(self, generation: int, path: str, opened: OpenedImage) -> None:
        if generation != self._open_generation:
            return  # the user opened something else meanwhile
        self.runner.cancel()
        self.opened = opened
        self.annotations = opened.annotations
        self._clear_heatmap()
        self.canvas.set_image(opened.pyramid)
        self.stack.setCurrentWidget(self.canvas)
        self._show_annotations()
        slide = opened.slide
        self.setWindowTitle(f"{slide.name} — {APP_NAME}")
        self.setWindowFilePath(str(slide.path))
        self.settings.add_recent_file(slide.path)
        self.settings.set_last_folder("images", slide.path)
        notes = "; ".join(slide.notes)
        self.status.showMessage(f"{slide.name}: {slide.width} × {slide.height} px" + (f" ({notes})" if notes else ""), 8000)
        self._update_actions()
        self.image_opened.emit(path)
        if opened.annotation_problem:
            dialogs.warn(self, "Annotations not loaded", f"{opened.annotation_problem}. The image is shown without them.")
        if self.actions.auto_run.isChecked():
            self.run_heatmap()

    def _on_open_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._open_generation:
            return
        message = describe_error(exc)
        self.status.clearMessage()
        dialogs.warn(self, "Cannot open image", message)
        self.open_failed.emit(message)

    def close_image(self) -> None:
        self._open_generation += 1
        self.runner.cancel()
        self.opened = None
        self.annotations = None
        self._clear_heatmap()
        self.annotation_layer.set_annotations(None, 0, 0)
        self.canvas.clear_image()
        self.stack.setCurrentWidget(self.placeholder)
        self.layers_panel.set_counts(None)
        self.setWindowTitle(APP_NAME)
        self.setWindowFilePath("")
        self.status.clear_cursor()
        self.status.show_zoom(None)
        self._update_actions()

    def _fill_recent_menu(self) -> None:
        menu = self.actions.recent_menu
        menu.clear()
        files = self.settings.recent_files()
        for number, path in enumerate(files, start=1):
            action = menu.addAction(f"&{number % 10}  {Path(path).name}")
            action.setToolTip(path)
            action.setStatusTip(path)
            # not partial(): triggered(bool) would land in open_image's annotations argument
            action.triggered.connect(lambda _checked=False, path=path: self.open_image(path))
        if not files:
            menu.addAction("No recent images").setEnabled(False)
        menu.addSeparator()
        menu.addAction("Clear Recent", self.settings.clear_recent_files).setEnabled(bool(files))

    # Annotations ----------------------------------------------------------------------------
    def choose_annotations(self) -> None:
        path = dialogs.ask_open_path(self, "Open Annotations", self.settings.last_folder("annotations"), dialogs.JSON_FILTER)
        if path:
            self.load_annotations_file(path)

    def load_annotations_file(self, path: str | Path) -> bool:
        """Replace the annotations (a few kB of JSON: read on the main thread)."""
        if self.opened is None:
            dialogs.warn(self, "No image", "Open an image first, then its annotations.")
            return False
        try:
            annotations = load_annotations(path)
        except InputError as exc:
            dialogs.warn(self, "Cannot open annotations", str(exc))
            return False
        self.settings.set_last_folder("annotations", path)
        self.annotations = annotations
        self._show_annotations()
        return True

    def _show_annotations(self) -> None:
        slide = self.opened.slide
        self.annotation_layer.set_annotations(self.annotations, slide.width, slide.height)
        state = self.layers_panel.state
        self.annotation_layer.set_visibility(state.show_annotations, state.hidden_classes)
        if self.annotations is None:
            self.layers_panel.set_counts(None)
        else:
            source = self.annotations.source.name if self.annotations.source else ""
            notes = "; ".join(self.annotations.notes)
            self.layers_panel.set_counts(self.annotations.counts(), f"{source}{' — ' + notes if notes else ''}")
        self._update_agreement()

    # Model ----------------------------------------------------------------------------------
    def choose_model(self) -> None:
        path = dialogs.ask_open_path(self, "Load Model", self.settings.last_folder("models"), dialogs.MODEL_FILTER)
        if path:
            self.settings.set_last_folder("models", path)
            self.load_model(path)

    def load_model(self, path: str | None) -> None:
        """Load a model in the background (None = bundled); the current one stays until then."""
        self._model_problem = None
        self.status.showMessage("Loading the model…" if path is None else f"Loading model {Path(path).name}…")
        self.model_loader.load(path)
        self._update_actions()

    def _on_model_loaded(self, model: object, path: str | None) -> None:
        replacing = self.model is not None
        had_run = self.runner.cancel() or self.heatmap is not None
        self.model, self.model_path = model, path
        self.status.showMessage("Model ready" if path is None else f"Model {Path(path).name} ready", 5000)
        self.model_ready.emit()
        self._update_actions()
        if replacing and had_run and self.opened is not None:
            self._clear_heatmap()
            self.run_heatmap()  # the heatmap on screen came from the previous model
        elif self._run_when_model_ready:
            self.run_heatmap()
        self._run_when_model_ready = False

    def _on_model_failed(self, message: str) -> None:
        self._run_when_model_ready = False
        self.status.show_progress(None)
        self.status.clearMessage()
        self._update_actions()
        if self.model is None:
            self._model_problem = message
            self.layers_panel.set_heatmap_info(f"No model: {message}. Use File › Load Model… to choose one.")
        dialogs.warn(self, "Cannot load model", f"{message}. Use File › Load Model… to choose another model file.")

    # Heatmap --------------------------------------------------------------------------------
    def run_heatmap(self) -> None:
        if self.opened is None:
            return
        if self.model is None:
            if self.model_loader.loading:
                self._run_when_model_ready = True
                self.layers_panel.set_heatmap_info("Waiting for the model to load…")
                self.status.show_progress(0.0)
                return
            dialogs.warn(self, "No model", f"{self._model_problem or 'No model is loaded'}. "
                         "Use File › Load Model… to choose a Keras model file.")
            return
        slide = self.opened.slide
        self.heatmap_stride = self.window_step
        self.heatmap = blank_heatmap(slide.height, slide.width, self.heatmap_stride)
        self.heatmap_complete = False
        self._cells_done = 0
        self.heatmap_layer.set_heatmap(self.heatmap, self.heatmap_stride)
        self.runner.start(slide, self.model, self.model_path, self.heatmap_stride, self.canvas.visible_centre())
        self.status.show_progress(0.0)
        self.layers_panel.set_heatmap_info(f"Computing with {self._model_name()}, window step {self.heatmap_stride} px…")
        self._update_actions()
        self._update_agreement()

    def set_window_step(self, step: int) -> None:
        """Use ``step`` px for heatmaps from now on (and remember it); a heatmap on screen or
        being computed is re-run at the new step, so the display never mixes two steps."""
        step = int(step)
        if step not in self.actions.window_steps:
            raise ValueError(f"window step must be one of {sorted(self.actions.window_steps)} px, got {step}")
        # Keeps the menu right when called from code rather than from the menu.
        self.actions.window_steps[step].setChecked(True)
        if step == self.window_step:
            return
        self.window_step = step
        self.settings.set_heatmap_stride(step)
        if self.opened is not None and self.heatmap is not None:  # also true while a run is going
            # Cancel first, so the old run's "stopped" update lands before the new run starts
            # instead of in the middle of run_heatmap (as when a new model replaces a run).
            self.runner.cancel()
            self.run_heatmap()
        else:
            # Nothing to redo: no image, never run, or waiting for the model (that run has not
            # started yet and reads the new step when it does).
            self.status.showMessage(f"Window step {step} px: used for the next heatmap", 5000)

    def cancel_heatmap(self) -> None:
        waiting, self._run_when_model_ready = self._run_when_model_ready, False
        if not self.runner.cancel() and waiting:  # nothing ran yet: it was waiting for the model
            self.status.show_progress(None)
            self.layers_panel.set_heatmap_info("No heatmap yet (Analysis › Run Heatmap, Ctrl+R)")
            self._update_actions()

    def _on_tile(self, request: HeatmapRequest, rows: slice, cols: slice, probabilities: np.ndarray) -> None:
        # The runner only forwards tiles of the current request, for the current image.
        self.heatmap[rows, cols] = probabilities
        self.heatmap_layer.update_cells(rows, cols)
        self._cells_done += probabilities.size
        self.status.show_progress(self._cells_done / self.heatmap.size)

    def _on_heatmap_finished(self, request: HeatmapRequest, completed: bool) -> None:
        self.status.show_progress(None)
        self.heatmap_complete = completed
        done = self._cells_done / self.heatmap.size if self.heatmap is not None and self.heatmap.size else 0
        if completed:
            self.layers_panel.set_heatmap_info(f"{self._model_name()}, window step {request.stride} px")
            self.status.showMessage("Heatmap complete", 5000)
        else:
            self.layers_panel.set_heatmap_info(f"Stopped at {done:.0%} (Analysis › Run Heatmap to restart)")
        self._update_actions()
        self._update_agreement()
        self.heatmap_finished.emit(completed)

    def _on_heatmap_failed(self, request: HeatmapRequest, message: str) -> None:
        self.status.show_progress(None)
        self.layers_panel.set_heatmap_info("The heatmap failed.")
        self._update_actions()
        dialogs.warn(self, "Heatmap failed", message)
        self.heatmap_finished.emit(False)

    def _clear_heatmap(self) -> None:
        self.heatmap = None
        self.heatmap_complete = False
        self.heatmap_layer.set_heatmap(None, DEFAULT_STRIDE)
        self.layers_panel.set_heatmap_info("No heatmap yet (Analysis › Run Heatmap, Ctrl+R)")
        self.status.show_progress(None)
        self._update_agreement()

    def _model_name(self) -> str:
        return Path(self.model_path).name if self.model_path else "the bundled model"

    # Agreement ------------------------------------------------------------------------------
    def _update_agreement(self) -> None:
        """Recompute the agreement table (after a run ends or the annotations change)."""
        self.agreement_result = None
        if self.annotations is None or self.heatmap is None:
            self.agreement_panel.show_result(None, "Needs annotations and a heatmap.")
            return
        if self.runner.is_running():
            self.agreement_panel.show_result(None, "Waiting for the heatmap to finish…")
            return
        slide = self.opened.slide
        self.agreement_result = agreement(self.heatmap, self.annotations, slide.width, slide.height,
                                          stride=self.heatmap_stride)
        note = "" if self.heatmap_complete else "Partial heatmap: only computed cells are compared."
        self.agreement_panel.show_result(self.agreement_result, note)

    def export_agreement(self) -> None:
        from viewer.agreement import agreement_to_csv

        result = self.agreement_result
        if result is None:
            return
        target = dialogs.ask_save_path(self, "Export Agreement", self._suggest("agreement.csv"), "CSV (*.csv)", ".csv")
        if target is None:
            return
        try:
            agreement_to_csv(result, target[0], force=target[1])
        except InputError as exc:
            dialogs.warn(self, "Cannot export", str(exc))
            return
        self.settings.set_last_folder("exports", target[0])
        self.status.showMessage(f"Saved {target[0]}", 5000)
        self.exported.emit(str(target[0]))

    # Export ---------------------------------------------------------------------------------
    def _suggest(self, ending: str) -> str:
        stem = self.opened.slide.path.stem if self.opened else "histoviewer"
        return str(Path(self.settings.last_folder("exports")) / f"{stem}_{ending}")

    def export_overlay(self) -> None:
        if self.opened is None:
            return
        target = dialogs.ask_save_path(
            self, "Export Overlay", self._suggest("overlay.png"),
            "PNG image (*.png);;TIFF image (*.tif *.tiff);;JPEG image (*.jpg *.jpeg)", ".png",
        )
        if target is None:
            return
        classes = self.annotations.classes if self.annotations else ()
        style = self.layers_panel.state.overlay_style(classes, self.heatmap_stride, self.actions.export_legend.isChecked())
        # Snapshot the heatmap: tiles may still be arriving while the export runs.
        heatmap = None if self.heatmap is None else self.heatmap.copy()
        self._run_export(write_overlay, self.opened.slide.pixels, heatmap, self.annotations, style, *target)

    def export_heatmap(self) -> None:
        if self.heatmap is None or self.runner.is_running():
            return
        target = dialogs.ask_save_path(
            self, "Export Heatmap", self._suggest("heatmap.npy"),
            "NumPy array (*.npy);;Float TIFF (*.tif *.tiff)", ".npy", also=(".json",)
        )
        if target is None:
            return
        slide = self.opened.slide
        self._run_export(write_heatmap, self.heatmap.copy(), target[0], self.heatmap_stride,
                         (slide.height, slide.width), slide.path, self.model_path, target[1])

    def _run_export(self, func, *args) -> None:
        self.status.showMessage("Exporting…")
        run_in_background(func, *args, on_result=self._on_exported, on_error=self._on_export_failed)

    def _on_exported(self, path: Path) -> None:
        self.settings.set_last_folder("exports", path)
        self.status.showMessage(f"Saved {path}", 8000)
        self.exported.emit(str(path))

    def _on_export_failed(self, exc: BaseException) -> None:
        self.status.clearMessage()
        message = describe_error(exc)
        dialogs.warn(self, "Cannot export", message)
        self.export_failed.emit(message)

    # Layers ---------------------------------------------------------------------------------
    def _change_layers(self, **changes: object) -> None:
        state = replace(self.layers_panel.state, **changes)
        if state != self.layers_panel.state:
            self.layers_panel.set_state(state)
            self._apply_layers(state)

    def _apply_layers(self, state: LayerState, save: bool = True) -> None:
        self.canvas.image_item.setVisible(state.show_image)
        self.annotation_layer.set_visibility(state.show_annotations, state.hidden_classes)
        self.heatmap_layer.set_style(colormap_lut(state.colormap), state.threshold, state.opacity, state.show_heatmap)
        for action, on in ((self.actions.show_image, state.show_image),
                           (self.actions.show_annotations, state.show_annotations),
                           (self.actions.show_heatmap, state.show_heatmap)):
            action.blockSignals(True)
            action.setChecked(on)
            action.blockSignals(False)
        if save:
            self.settings.save_layer_values(state.to_settings())

    # Status bar -----------------------------------------------------------------------------
    def _show_cursor(self, x: float, y: float) -> None:
        if self.opened is None:
            return
        slide = self.opened.slide
        col, row = math.floor(x), math.floor(y)
        if not (0 <= col < slide.width and 0 <= row < slide.height):
            self.status.clear_cursor()
            return
        rgb = tuple(int(v) for v in slide.pixels[row, col])
        probability = None
        if self.heatmap is not None:
            cell = pixel_to_cell(x, y, self.heatmap.shape, self.heatmap_stride)
            probability = None if cell is None else float(self.heatmap[cell])
        self.status.show_cursor(col, row, rgb, probability)

    def _update_actions(self) -> None:
        a = self.actions
        has_image = self.opened is not None
        running = self.runner.is_running() or self._run_when_model_ready
        for action in (a.open_annotations, a.export_overlay, a.close_image, a.fit, a.zoom_100, a.zoom_in, a.zoom_out):
            action.setEnabled(has_image)
        a.run_heatmap.setEnabled(has_image and not running)
        a.cancel_heatmap.setEnabled(running)
        # A stopped (partial) heatmap can be saved too: its sidecar says "complete": false.
        a.export_heatmap.setEnabled(self.heatmap is not None and not running)

    # Drag and drop --------------------------------------------------------------------------
    @staticmethod
    def _dropped_files(event: QDragEnterEvent | QDropEvent) -> tuple[list[str], list[str]]:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        images = [p for p in paths if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        jsons = [p for p in paths if Path(p).suffix.lower() == ".json"]
        return images, jsons

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        images, jsons = self._dropped_files(event)
        if images or (jsons and self.opened is not None):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        images, jsons = self._dropped_files(event)
        event.acceptProposedAction()
        # Defer: a modal message box inside a drop handler would block the drag source.
        if images:
            QTimer.singleShot(0, partial(self.open_image, images[0], jsons[0] if jsons else None))
        elif jsons:
            QTimer.singleShot(0, partial(self.load_annotations_file, jsons[0]))

    # Window state ---------------------------------------------------------------------------
    def _restore_window(self) -> None:
        geometry, state = self.settings.window_geometry(), self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self._closing = True
        self.settings.save_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self._open_generation += 1
        self._run_when_model_ready = False
        self.model_loader.discard()
        self.runner.cancel()
        self.hide()
        # Join the worker threads so none outlives the window (a tile takes well under a second;
        # a model still loading finishes its import first).
        wait_for_workers()
        super().closeEvent(event)

"""The tumour heatmap of the open image: running, cancelling and re-running it, and the array it fills.

HeatmapController owns the HeatmapRunner, the probability array with its stride and
completeness, the progress in the status bar and the Run/Cancel/Export Heatmap actions. Tiles
come from the runner on the main thread and are painted as they arrive. A run asked for before
the model has loaded waits for it; a newly loaded model re-runs a heatmap the old one made.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from viewer import DEFAULT_STRIDE
from viewer.gui import dialogs
from viewer.gui.actions import Actions
from viewer.gui.canvas import Canvas
from viewer.gui.document import Document
from viewer.gui.heatmap_layer import HeatmapLayer
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.model_controller import ModelController
from viewer.gui.settings import Settings
from viewer.gui.status import StatusBar
from viewer.gui.worker import HeatmapRequest, HeatmapRunner
from viewer.heatmap import blank_heatmap

NO_HEATMAP = "No heatmap yet (Analysis › Run Heatmap, Ctrl+R)"


class HeatmapController(QObject):
    finished = Signal(bool)  # True = complete, False = cancelled or failed
    changed = Signal()  # a run started, ended or failed, or the heatmap was cleared

    def __init__(
        self, window: QWidget, document: Document, models: ModelController, canvas: Canvas,
        layer: HeatmapLayer, layers_panel: LayersPanel, status: StatusBar, actions: Actions, settings: Settings,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._document = document
        self._models = models
        self._canvas = canvas
        self._layer = layer
        self._panel = layers_panel
        self._status = status
        self._actions = actions
        self._settings = settings
        self.heatmap: np.ndarray | None = None
        self.complete = False
        # The stride of self.heatmap: everything that reads the array (layer, agreement,
        # readout, exports) uses it. It follows window_step only when a run starts, so the
        # array and its geometry always change together.
        self.stride = DEFAULT_STRIDE
        self.window_step = settings.heatmap_stride()  # Analysis › Window Step
        actions.window_steps[self.window_step].setChecked(True)  # setChecked does not trigger
        self._cells_done = 0
        self._waiting_for_model = False
        self.runner = HeatmapRunner(self)
        self.runner.tile_ready.connect(self._on_tile)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        models.loader.loaded.connect(self._use_model)
        models.loader.failed.connect(self._on_model_failed)

    @property
    def running(self) -> bool:
        """A run is going, or waiting for the model."""
        return self.runner.is_running() or self._waiting_for_model

    # Running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Compute the heatmap of the open image at the chosen window step, painting as tiles arrive."""
        if self._document.opened is None:
            return
        models = self._models
        if models.model is None:
            if models.loading:
                self._waiting_for_model = True
                self._panel.set_heatmap_info("Waiting for the model to load…")
                self._status.show_progress(0.0)
                self.update_actions()  # Run off, Cancel (Esc) on: the wait can be cancelled
                return
            dialogs.warn(self._window, "No model", f"{models.problem or 'No model is loaded'}. "
                         "Use File › Load Model… to choose a Keras model file.")
            return
        slide = self._document.opened.slide
        self.stride = self.window_step
        self.heatmap = blank_heatmap(slide.height, slide.width, self.stride)
        self.complete = False
        self._cells_done = 0
        self._layer.set_heatmap(self.heatmap, self.stride)
        self.runner.start(slide, models.model, models.path, self.stride, self._canvas.visible_centre())
        self._status.show_progress(0.0)
        self._panel.set_heatmap_info(f"Computing with {models.name()}, window step {self.stride} px…")
        self.update_actions()
        self.changed.emit()

    def set_window_step(self, step: int) -> None:
        """Use ``step`` px for heatmaps from now on (and remember it); a heatmap on screen or
        being computed is re-run at the new step, so the display never mixes two steps."""
        step = int(step)
        if step not in self._actions.window_steps:
            raise ValueError(f"window step must be one of {sorted(self._actions.window_steps)} px, got {step}")
        # Keeps the menu right when called from code rather than from the menu.
        self._actions.window_steps[step].setChecked(True)
        if step == self.window_step:
            return
        self.window_step = step
        self._settings.set_heatmap_stride(step)
        if self._document.opened is not None and self.heatmap is not None:  # also true while a run is going
            # Cancel first, so the old run's "stopped" update lands before the new run starts
            # instead of in the middle of run() (as when a new model replaces a run).
            self.runner.cancel()
            self.run()
        else:
            # Nothing to redo: no image, never run, or waiting for the model (that run has not
            # started yet and reads the new step when it does).
            self._status.showMessage(f"Window step {step} px: used for the next heatmap", 5000)

    def cancel(self) -> None:
        """Stop the run, or stop waiting for the model to start one."""
        waiting, self._waiting_for_model = self._waiting_for_model, False
        if not self.runner.cancel() and waiting:  # nothing ran yet: it was waiting for the model
            self._status.show_progress(None)
            self._panel.set_heatmap_info(NO_HEATMAP)
            self.update_actions()

    def stop(self) -> bool:
        """Stop the run before the document changes; True if one was running. A run waiting
        for the model stays waiting: it starts on whatever image is open once the model is ready."""
        return self.runner.cancel()

    def clear(self) -> None:
        """Forget the heatmap: another image, or another model."""
        self.heatmap = None
        self.complete = False
        self._layer.set_heatmap(None, DEFAULT_STRIDE)
        self._panel.set_heatmap_info(NO_HEATMAP)
        self._status.show_progress(None)
        self.update_actions()
        self.changed.emit()

    def shut_down(self) -> None:
        """The window is closing: no run starts or goes on."""
        self._waiting_for_model = False
        self.runner.cancel()

    def update_actions(self) -> None:
        a = self._actions
        running = self.running
        a.run_heatmap.setEnabled(self._document.opened is not None and not running)
        a.cancel_heatmap.setEnabled(running)
        # A stopped (partial) heatmap can be saved too: its sidecar says "complete": false.
        a.export_heatmap.setEnabled(self.heatmap is not None and not running)

    # From the runner ------------------------------------------------------------------------
    def _on_tile(self, request: HeatmapRequest, rows: slice, cols: slice, probabilities: np.ndarray) -> None:
        # The runner only forwards tiles of the current request, for the current image.
        self.heatmap[rows, cols] = probabilities
        self._layer.update_cells(rows, cols)
        self._cells_done += probabilities.size
        self._status.show_progress(self._cells_done / self.heatmap.size)

    def _on_finished(self, request: HeatmapRequest, completed: bool) -> None:
        self._status.show_progress(None)
        self.complete = completed
        done = self._cells_done / self.heatmap.size if self.heatmap is not None and self.heatmap.size else 0
        if completed:
            self._panel.set_heatmap_info(f"{self._models.name()}, window step {request.stride} px")
            self._status.showMessage("Heatmap complete", 5000)
        else:
            self._panel.set_heatmap_info(f"Stopped at {done:.0%} (Analysis › Run Heatmap to restart)")
        self.update_actions()
        self.changed.emit()
        self.finished.emit(completed)

    def _on_failed(self, request: HeatmapRequest, message: str) -> None:
        self._status.show_progress(None)
        self._panel.set_heatmap_info("The heatmap failed.")
        self.update_actions()
        self.changed.emit()  # the agreement table compares the cells computed before the failure
        dialogs.warn(self._window, "Heatmap failed", message)
        self.finished.emit(False)

    # From the model loader ------------------------------------------------------------------
    def _use_model(self, model: object, path: str | None) -> None:
        replacing = self._models.model is not None
        # Stopped before the swap, so the old model's run reports "stopped" before "model ready".
        had_run = self.runner.cancel() or self.heatmap is not None
        self._models.use(model, path)
        self.update_actions()
        if replacing and had_run and self._document.opened is not None:
            self.clear()
            self.run()  # the heatmap on screen came from the previous model
        elif self._waiting_for_model:
            self.run()
        self._waiting_for_model = False

    def _on_model_failed(self, message: str) -> None:
        self._waiting_for_model = False
        self._status.show_progress(None)
        self.update_actions()
        if self._models.model is None:
            self._panel.set_heatmap_info(f"No model: {message}. Use File › Load Model… to choose one.")
        self._models.report_failure(message)  # a message box: everything above is already shown

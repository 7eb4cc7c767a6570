"""Which Keras model the heatmap uses, and File › Load Model… to load another in the background.

The model loads on ModelLoader's own Python thread (TensorFlow imported on a Qt pool thread
crashed the interpreter; see worker.py), and the current model stays in use until the new one
has loaded. What a loaded model, or a failed load, means for the heatmap on screen is
HeatmapController's business: it listens to ``loader`` and hands the model over with :meth:`use`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from viewer.gui import dialogs
from viewer.gui.settings import Settings
from viewer.gui.status import StatusBar
from viewer.gui.worker import ModelLoader


class ModelController(QObject):
    ready = Signal()  # a newly loaded model is in use

    def __init__(self, window: QWidget, path: str | None, status: StatusBar, settings: Settings) -> None:
        super().__init__(window)
        self._window = window
        self._status = status
        self._settings = settings
        self.loader = ModelLoader(self)
        self.model: object | None = None
        self.path = path or None  # None = the bundled model
        self.problem: str | None = None
        """Why there is no model (the last load failed), for the "No model" message."""

    @property
    def loading(self) -> bool:
        return self.loader.loading

    def name(self) -> str:
        return Path(self.path).name if self.path else "the bundled model"

    def ask_path(self) -> str | None:
        """Ask for a model file; remembers its folder. None if the user cancelled."""
        path = dialogs.ask_open_path(self._window, "Load Model", self._settings.last_folder("models"),
                                     dialogs.MODEL_FILTER)
        if path:
            self._settings.set_last_folder("models", path)
        return path

    def load(self, path: str | None, *, delay_ms: int = 0) -> None:
        """Load a model in the background (None = bundled); the current one stays until then.
        ``delay_ms``: start the load that much later (it counts as loading from now on)."""
        self.problem = None
        self._status.showMessage("Loading the model…" if path is None else f"Loading model {Path(path).name}…")
        self.loader.load(path, delay_ms=delay_ms)

    def use(self, model: object, path: str | None) -> None:
        """Make a freshly loaded model the current one."""
        self.model, self.path = model, path
        self._status.showMessage("Model ready" if path is None else f"Model {Path(path).name} ready", 5000)
        self.ready.emit()

    def report_failure(self, message: str) -> None:
        """Say that a load failed; without any model, remember why for later runs."""
        self._status.clearMessage()
        if self.model is None:
            self.problem = message
        dialogs.warn(self._window, "Cannot load model",
                     f"{message}. Use File › Load Model… to choose another model file.")

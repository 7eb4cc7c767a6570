"""The tumour heatmap of the open image or slide: running, cancelling, resuming, and where it lives.

HeatmapController owns the HeatmapRunner, the heatmap (:attr:`data`: an array for a microscope
field, a zarr store in the per-user cache folder for a whole slide), its grid and completeness,
the progress in the status bar and the Run/Cancel/Export Heatmap actions. Tiles come from the
runner on the main thread and are painted as they arrive. A whole slide's store survives the
run: stopping keeps what was computed, a later run continues it, and reopening the slide shows
it at once. A run asked for before the model has loaded waits for it; a newly loaded model
re-runs a heatmap the old one made.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QStandardPaths, Signal
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
from viewer.gui.worker import HeatmapRequest, HeatmapRunner, PlannedRun, set_thread_limit
from viewer.heatmap import store_cache
from viewer.heatmap.analysis import AnalysisGrid
from viewer.heatmap.data import ArrayHeatmap, HeatmapData, StoreHeatmap
from viewer.heatmap.slide_run import SlideHeatmapOptions, analysis_grid_for, is_whole_slide, slide_fingerprint
from viewer.progress import format_duration

NO_HEATMAP = "No heatmap yet (Analysis › Run Heatmap, Ctrl+R)"


def _read_store(path: Path) -> tuple:
    """Worker thread: open a stored heatmap and read its overviews (thousands of small files)."""
    from viewer.heatmap.store import HeatmapStore

    store = HeatmapStore.open(path, mode="r")
    return store, {kind: store.read_overview(kind) for kind in ("mean", "max")}


def heatmap_cache_folder() -> Path:
    """Where the viewer keeps whole-slide heatmap stores (``HISTOVIEWER_CACHE_DIR`` overrides)."""
    override = os.environ.get("HISTOVIEWER_CACHE_DIR")
    if override:
        return Path(override) / "heatmaps"
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.CacheLocation)
    return Path(base or Path.home() / ".cache" / "histoviewer") / "heatmaps"


class HeatmapController(QObject):
    finished = Signal(bool)  # True = complete, False = cancelled or failed
    changed = Signal()  # a run started, ended or failed, or the heatmap was cleared
    cached_shown = Signal()  # a stored heatmap of the open slide was found and is shown

    def __init__(
        self, window: QWidget, document: Document, models: ModelController, canvas: Canvas,
        layer: HeatmapLayer, layers_panel: LayersPanel, status: StatusBar, actions: Actions, settings: Settings,
    ) -> None:
        super().__init__(window)
        from viewer.heatmap.priority import set_background

        set_background(True)  # the engine's own threads yield the CPU to the window (see there)
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
        """The heatmap array of a microscope field (None for a whole slide: see :attr:`data`)."""
        self.data: HeatmapData | None = None
        """What the layer draws: the array above, or a whole slide's store."""
        self.grid: AnalysisGrid | None = None
        self.store_path: Path | None = None
        self.tissue = None
        """The tissue mask of the last whole-slide run (viewer.slide.tissue.TissueMask)."""
        self.complete = False
        # The stride of self.heatmap: everything that reads the array (layer, agreement,
        # readout, exports) uses it. It follows window_step only when a run starts, so the
        # array and its geometry always change together.
        self.stride = DEFAULT_STRIDE
        self.window_step = settings.heatmap_stride()  # Analysis › Window Step
        actions.window_steps[self.window_step].setChecked(True)  # setChecked does not trigger
        self.precision = self._usable(settings.heatmap_precision())  # Analysis › Precision
        actions.precisions[self.precision].setChecked(True)
        self.heatmap_precision = "float32"
        """What the heatmap on screen was computed in (for its exported sidecar)."""
        actions.precision_group.triggered.connect(lambda action: self.set_precision(action.data()))
        threads = settings.heatmap_threads()  # Analysis › CPU Threads, applied at the model load
        if (threads or 0) in actions.thread_limits:
            actions.thread_limits[threads or 0].setChecked(True)
        set_thread_limit(threads)
        actions.thread_group.triggered.connect(lambda action: self.set_threads(action.data() or None))
        self._cells_done = 0
        self._todo_cells = 0
        self._cell_px = 1.0
        self._started = 0.0
        self._model_sha: dict[str, str] = {}
        self._waiting_for_model = False
        self.runner = HeatmapRunner(self)
        self.runner.planned.connect(self._on_planned)
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
    def run(self, scope: tuple[float, float, float, float] | None = None) -> None:
        """Compute the heatmap of the open image at the chosen window step, painting as tiles arrive.

        ``scope``: a level-0 rectangle (x, y, w, h) to compute only the chunks under it (whole
        slides); None = everything not computed yet."""
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
        model_file = self._model_file()
        grid, _notes = analysis_grid_for(slide, model_file, SlideHeatmapOptions(stride=self.stride))
        self.grid = grid
        self.complete = False
        self._cells_done = 0
        store_path = None
        if is_whole_slide(slide):
            store_path = self._store_path(slide, grid)
            if self.store_path != store_path:  # another step or model: show nothing until planned
                self._show_data(None)
            self.store_path = store_path
        else:
            self.store_path = None
            self.heatmap = np.full(grid.shape, np.nan, dtype=np.float32)
            self._show_data(ArrayHeatmap(self.heatmap, grid))
        self.runner.start(slide, models.model, models.path, self.stride, self._canvas.visible_centre(),
                          store_path=store_path, scope=scope, precision=self.precision)
        self._status.show_progress(0.0)
        in_bf16 = ", bfloat16" if self.precision == "bfloat16" else ""
        self._panel.set_heatmap_info(f"Computing with {models.name()}, window step {self.stride} px{in_bf16}…")
        self.update_actions()
        self.changed.emit()

    def run_visible(self) -> None:
        """Compute only the chunks under the visible area (whole slides; a later run continues)."""
        rect = self._canvas.view.viewRect()
        self.run(scope=(rect.left(), rect.top(), rect.width(), rect.height()))

    def _model_file(self) -> Path:
        from viewer.model import bundled_model_path

        return Path(self._models.path) if self._models.path else bundled_model_path()

    def _model_sha256(self) -> str:
        from viewer.model import file_sha256

        key = str(self._model_file())
        if key not in self._model_sha:
            self._model_sha[key] = file_sha256(key)
        return self._model_sha[key]

    def _store_path(self, slide, grid: AnalysisGrid) -> Path:
        # A bfloat16 heatmap is another heatmap: its own store (float32 keys stay as they were).
        model_key = self._model_sha256() + ("" if self.precision == "float32" else f"|{self.precision}")
        key = store_cache.cache_key(slide_fingerprint(slide), model_key, grid.stride, grid.scale)
        folder = heatmap_cache_folder()
        folder.mkdir(parents=True, exist_ok=True)
        return store_cache.store_path_in(folder, slide.name, key)

    def _show_data(self, data: HeatmapData | None, overviews: dict | None = None) -> None:
        if not isinstance(data, ArrayHeatmap):
            self.heatmap = None
        self.data = data
        self._layer.set_data(data, overviews)

    def show_cached(self) -> bool:
        """Show the stored heatmap of the open whole slide for the current model and step, if
        there is one (reopening a slide shows its finished heatmap at once). The store and its
        overviews are read in a worker (thousands of small files); True if one is being read."""
        opened = self._document.opened
        if opened is None:
            return False
        slide = opened.slide
        if not is_whole_slide(slide):
            return False
        try:
            grid, _ = analysis_grid_for(slide, self._model_file(), SlideHeatmapOptions(stride=self.window_step))
            path = self._store_path(slide, grid)
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never an error
            return False
        if not path.is_dir():
            return False
        from viewer.gui.worker import run_in_background

        run_in_background(_read_store, path, on_result=partial(self._on_cached, opened, grid, path),
                          on_error=lambda _exc: None)  # unreadable: the next run replaces it
        return True

    def choose_store(self) -> None:
        path = dialogs.ask_open_folder(self._window, "Open Heatmap Store", self._settings.last_folder("heatmaps"))
        if path:
            self.open_store(path)

    def open_store(self, path: str | Path) -> bool:
        """Show a heatmap store written for the open slide (by ``histoviewer heatmap`` or
        ``batch``); a store of another slide is refused with a message. True if shown."""
        from viewer.errors import InputError
        from viewer.heatmap.store import HeatmapStore

        opened = self._document.opened
        if opened is None:
            return False
        path = Path(path)
        try:
            store = HeatmapStore.open(path, mode="r")
            slide_attrs = store.attrs.get("slide") or {}
            size = (slide_attrs.get("width"), slide_attrs.get("height"))
            if size != (opened.slide.width, opened.slide.height):
                raise InputError(
                    f"was computed for {slide_attrs.get('file', 'another slide')} ({size[0]} x {size[1]} px), "
                    f"not for {opened.slide.name} ({opened.slide.width} x {opened.slide.height} px)", path)
            data = StoreHeatmap(store)
            overviews = {kind: store.read_overview(kind) for kind in ("mean", "max")}
        except InputError as exc:
            dialogs.warn(self._window, "Cannot open heatmap", str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for a folder that is not a store
            dialogs.warn(self._window, "Cannot open heatmap", f"{path}: is not a readable heatmap store ({type(exc).__name__})")
            return False
        self.runner.cancel()
        self._settings.set_last_folder("heatmaps", path)
        self.stride, self.grid, self.store_path = data.grid.stride, data.grid, None  # not the cache's: Run makes its own
        self._show_data(data, overviews)
        self.complete = bool(store.attrs.get("complete"))
        self._panel.set_heatmap_info(f"{path.name}, window step {self.stride} px" + ("" if self.complete else " (partial)"))
        self.update_actions()
        self.changed.emit()
        return True

    def _on_cached(self, opened, grid: AnalysisGrid, path: Path, read: tuple) -> None:
        if self._document.opened is not opened or self.runner.is_running() or self.data is not None:
            return  # another image, or a run already shows this slide's heatmap
        store, overviews = read
        store_cache.touch(path)
        self.stride, self.grid, self.store_path = self.window_step, grid, path
        self._show_data(StoreHeatmap(store), overviews)
        self.heatmap_precision = str(store.attrs.get("precision", "float32"))
        self.complete = bool(store.attrs.get("complete"))
        done, total = store.progress()
        self._panel.set_heatmap_info(
            f"Stored heatmap, window step {self.stride} px" + ("" if self.complete else f" ({done} of {total} chunks; Run continues it)"))
        self.update_actions()
        self.changed.emit()
        self.cached_shown.emit()

    def _usable(self, precision: str) -> str:
        """``precision``, or float32 with a status note where this CPU has no bfloat16 units."""
        from viewer.heatmap.precision import resolve_precision

        notes: list[str] = []
        usable = resolve_precision(precision, notes)
        if notes:
            self._status.showMessage(notes[0], 8000)
        return usable

    def set_precision(self, precision: str) -> None:
        """Compute heatmaps in ``precision`` from now on (and remember it); like a new window
        step, a heatmap on screen or being computed is re-run, so the display never mixes two."""
        usable = self._usable(precision)
        self._settings.set_heatmap_precision(precision)
        self._actions.precisions[usable].setChecked(True)
        if usable == self.precision:
            return
        self.precision = usable
        if self._document.opened is not None and (self.data is not None or self.runner.is_running()):
            self.runner.cancel()
            self.run()
        else:
            self._status.showMessage(f"Precision {usable}: used for the next heatmap", 5000)

    def set_threads(self, threads: int | None) -> None:
        """Cap the heatmap's CPU threads (None: every core) and remember it."""
        self._settings.set_heatmap_threads(threads)
        if threads in self._actions.thread_limits or threads is None:
            self._actions.thread_limits[threads or 0].setChecked(True)
        notes = set_thread_limit(threads)
        self._status.showMessage(notes[0] if notes else (
            f"The heatmap uses at most {threads} CPU threads" if threads else "The heatmap uses every core"), 8000)

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
        if self._document.opened is not None and (self.data is not None or self.runner.is_running()):
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
        """Forget the heatmap: another image, or another model. A whole slide that has a stored
        heatmap for the current model and step shows it at once."""
        self.heatmap = None
        self.grid = None
        self.store_path = None
        self.tissue = None
        self.complete = False
        self._show_data(None)
        self._panel.set_heatmap_info(NO_HEATMAP)
        self._status.show_progress(None)
        self.update_actions()
        self.changed.emit()
        self.show_cached()

    def shut_down(self) -> None:
        """The window is closing: no run starts or goes on."""
        self._waiting_for_model = False
        self.runner.cancel()

    def update_actions(self) -> None:
        a = self._actions
        running = self.running
        a.run_heatmap.setEnabled(self._document.opened is not None and not running)
        a.run_visible.setEnabled(self._document.opened is not None and not running)
        a.run_rectangle.setEnabled(self._document.opened is not None and not running)
        a.cancel_heatmap.setEnabled(running)
        # A stopped (partial) heatmap can be saved too: its sidecar says "complete": false.
        a.export_heatmap.setEnabled(self.heatmap is not None and not running)

    # From the runner ------------------------------------------------------------------------
    def _on_planned(self, request: HeatmapRequest, planned: PlannedRun) -> None:
        plan = planned.plan
        self.grid = plan.grid
        self.heatmap_precision = plan.precision
        self.tissue = plan.tissue
        if planned.store is not None:
            store_cache.touch(planned.store.path if hasattr(planned.store, "path") else request.store_path)
            self._show_data(StoreHeatmap(planned.store), planned.overviews)
        self._todo_cells = max(1, planned.todo_cells)
        self._cell_px = plan.cell_area_px
        self._started = time.perf_counter()
        if plan.tissue is not None:
            self._panel.set_heatmap_info(
                f"Computing with {self._models.name()}, window step {self.stride} px; tissue "
                f"{100 * plan.tissue.fraction:.0f}% of the slide…")
        self.changed.emit()

    def _on_tile(self, request: HeatmapRequest, rows: slice, cols: slice, probabilities: np.ndarray) -> None:
        # The runner only forwards tiles of the current request, for the current image.
        if self.heatmap is not None:
            self.heatmap[rows, cols] = probabilities
            self._layer.update_cells(rows, cols)
        else:
            self._layer.update_cells(rows, cols, probabilities)
        self._cells_done += int(np.isfinite(probabilities).sum())
        fraction = min(1.0, self._cells_done / self._todo_cells) if self._todo_cells else 0.0
        self._status.show_progress(fraction)
        elapsed = time.perf_counter() - self._started
        rate = self._cells_done * self._cell_px / 1e6 / max(elapsed, 1e-6)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self._status.progress.setFormat(
            f"Tissue %p % · {rate:.0f} Mpx/s" + (f" · {format_duration(eta)} left" if eta is not None else ""))

    def _on_finished(self, request: HeatmapRequest, completed: bool) -> None:
        self._status.show_progress(None)
        self.complete = completed
        if isinstance(self.data, StoreHeatmap):
            # A run over the visible area finishes without finishing the slide.
            self.complete = completed and self.runner.whole_store_done
            # Sizing the cache walks every file of every stored heatmap: not on the main thread.
            from viewer.gui.worker import run_in_background

            keep = (self.store_path,) if self.store_path else ()
            run_in_background(partial(store_cache.prune, keep=keep), heatmap_cache_folder(),
                              on_result=lambda _removed: None, on_error=lambda _exc: None)
        done = min(1.0, self._cells_done / self._todo_cells) if self._todo_cells else 0
        again = "continues it" if self.store_path is not None else "restarts it"
        if completed and self.complete:
            self._panel.set_heatmap_info(f"{self._models.name()}, window step {request.stride} px")
            self._status.showMessage("Heatmap complete", 5000)
        elif completed:
            self._panel.set_heatmap_info(f"Visible area done (Analysis › Run Heatmap {again} for the whole slide)")
        else:
            self._panel.set_heatmap_info(f"Stopped at {done:.0%} (Analysis › Run Heatmap {again})")
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
        had_run = self.runner.cancel() or self.data is not None
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

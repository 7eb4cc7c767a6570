"""Background work: loading the model and running the heatmap, through superqt workers.

Workers only compute and emit data; slots here run on the main thread and drop anything that
belongs to a request that is no longer current (another image, model or run), so a stale tile
is never painted. Each request is an immutable value captured on the main thread.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal

from viewer.errors import InputError
from viewer.gui.qt_workarounds import apply_workarounds
from viewer.gui.settings import WINDOW_STEPS
from viewer.slide import Slide

if TYPE_CHECKING:  # superqt is imported on first use: its package import costs ~0.2 s of start-up
    from superqt.utils import FunctionWorker, GeneratorWorker

# Before anything emits signals: see qt_workarounds (PySide6 6.12.0 loses a reference per emit).
apply_workarounds()

_generations = itertools.count(1)


def describe_error(exc: BaseException) -> str:
    """One line for a message box: the InputError text, or the type and first line of a bug."""
    if isinstance(exc, InputError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"Internal error: {type(exc).__name__}{': ' + text if text else ''} (please report it)"


def ensure_thread_capacity(minimum: int = 6) -> None:
    """superqt uses the global pool, sized to the core count (2 here). Opening a file must not
    queue behind a running heatmap and a loading model, so allow a few more threads."""
    pool = QThreadPool.globalInstance()
    pool.setMaxThreadCount(max(pool.maxThreadCount(), minimum))


def run_in_background(
    func: Callable[..., Any],
    *args: Any,
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
) -> FunctionWorker:
    """Run ``func(*args)`` in a worker thread; the callbacks run on the main thread."""
    from superqt.utils import create_worker

    # Passing "errored" in _connect stops superqt from re-raising the error on the main thread.
    worker: FunctionWorker = create_worker(
        func, *args, _start_thread=False, _connect={"returned": on_result, "errored": on_error}
    )
    worker.start()
    return worker


def _model_thread() -> ThreadPoolExecutor:
    """The one Python thread that imports TensorFlow and loads every model.

    Not a QThreadPool thread: when TensorFlow was first imported on one of Qt's pool threads
    (threads Python did not create), loading a second model or tracing a graph later on another
    thread aborted the interpreter ("Fatal Python error: take_gil: PyMUTEX_LOCK failed" or a
    segfault; PySide6 6.11 and 6.12, TensorFlow 2.21). Imported on a Python thread, TensorFlow
    is then safe on any thread, the heatmap's superqt workers included.
    """
    global _MODEL_THREAD
    if _MODEL_THREAD is None:
        from viewer.heatmap.priority import lower_current_thread

        # Background priority (viewer.heatmap.priority): TensorFlow's pool threads, created by
        # the thread that first runs TensorFlow (this one, in the viewer), inherit it, so the
        # window wins the CPU while a heatmap is computed.
        _MODEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoviewer-model",
                                           initializer=lower_current_thread)
    return _MODEL_THREAD


_MODEL_THREAD: ThreadPoolExecutor | None = None


class ModelLoader(QObject):
    """Loads a Keras model off the main thread (importing TensorFlow alone takes seconds)."""

    loaded = Signal(object, object)  # model, path (None = bundled)
    failed = Signal(str)
    # Emitted on the model thread; a queued connection brings it to this object's (main) thread.
    _done = Signal(int, object, object, object)  # generation, path, model, exception

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self.loading = False
        self._done.connect(self._on_done)

    def load(self, path: str | None, *, delay_ms: int = 0) -> None:
        """Start loading ``path`` (None = bundled); a later call supersedes an earlier one.
        ``delay_ms`` > 0 starts the work later, but the load counts as under way at once."""
        self._generation = generation = next(_generations)
        self.loading = True
        if delay_ms > 0:
            QTimer.singleShot(delay_ms, self, partial(self._submit, generation, path))
        else:
            self._submit(generation, path)

    def _submit(self, generation: int, path: str | None) -> None:
        if generation != self._generation:
            return  # superseded, or discarded because the window closed
        future = _model_thread().submit(_load_model, path)
        future.add_done_callback(partial(self._report, generation, path))

    def discard(self) -> None:
        """Forget the load in progress: its result will be dropped (the window is closing)."""
        self._generation = next(_generations)
        self.loading = False

    def _report(self, generation: int, path: str | None, future: Future) -> None:
        exc = future.exception()
        try:
            self._done.emit(generation, path, None if exc else future.result(), exc)
        except RuntimeError:  # the window, and this loader with it, closed during the load
            pass

    def _on_done(self, generation: int, path: str | None, model: Any, exc: BaseException | None) -> None:
        if generation != self._generation:
            return  # superseded by a later load, or the window is closing
        self.loading = False
        if exc is None:
            self.loaded.emit(model, path)
        else:
            self.failed.emit(describe_error(exc))


_THREAD_LIMIT: int | None = None


def set_thread_limit(threads: int | None) -> list[str]:
    """Cap TensorFlow at ``threads`` (None: every core), applied when the model thread loads
    the first model, before TensorFlow runs anything. TensorFlow fixes its thread pools then, so
    once it has been imported the change applies from the next start: the returned notes say so.
    (TensorFlow is never touched from here: it may be half-way through its import on the model
    thread.)"""
    global _THREAD_LIMIT
    changed = threads != _THREAD_LIMIT
    _THREAD_LIMIT = threads
    if changed and "tensorflow" in sys.modules:
        return ["the thread limit applies from the next start of HistoViewer (TensorFlow is already running)"]
    return []


def _load_model(path: str | None) -> Any:
    from viewer.heatmap import warm_up
    from viewer.heatmap.precision import bfloat16_support, configure_threads
    from viewer.model import load_model  # imports Keras/TensorFlow: worker thread only

    # Importing TensorFlow creates ~10^6 long-lived objects. Each full garbage collection over
    # them holds the GIL for 100-300 ms, which freezes the window (during this import and
    # later during heatmaps). So: no collections while importing, then move everything that
    # exists into the permanent generation, which later collections skip.
    collecting = gc.isenabled()
    gc.disable()
    try:
        configure_threads(_THREAD_LIMIT)  # before TensorFlow runs anything (it fixes its pools then)
        model = load_model(path)
        # Start TensorFlow's runtime and trace every step Analysis › Window Step offers (in each
        # precision Analysis › Precision offers), here and not on the first tile, so the first
        # tiles of any step arrive without a pause.
        precisions = ("float32", "bfloat16") if bfloat16_support()[0] else ("float32",)
        for step in WINDOW_STEPS:
            for precision in precisions:
                warm_up(model, step, precision=precision)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    return model


@dataclass(frozen=True, eq=False)
class HeatmapRequest:
    """Everything a run depends on, fixed when it starts."""

    generation: int
    slide: Slide
    model: Any
    model_path: str | None
    stride: int
    order_from: tuple[float, float] | None
    store_path: Path | None = None
    """Whole slides stream into this zarr store (resumed if it exists); images fill an array."""
    scope: tuple[float, float, float, float] | None = None
    """Level-0 rectangle (x, y, w, h) whose chunks to compute; None = the whole slide."""
    precision: str = "float32"
    """Analysis › Precision (bfloat16 falls back to float32 where the CPU or model lacks it)."""


@dataclass(frozen=True, eq=False)
class PlannedRun:
    """First item a run yields: what it will compute and where the results go."""

    plan: Any  # viewer.heatmap.slide_run.SlideHeatmapPlan
    store: Any  # viewer.heatmap.store.HeatmapStore or None
    todo_cells: int
    """Tissue cells this run will evaluate (for progress and ETA)."""
    overviews: dict | None = None
    """The store's overview arrays as they are (``{"mean", "max"}``), read here, off the main
    thread: reading a few thousand small files there would freeze the window."""


class HeatmapRunner(QObject):
    """Runs ``iter_heatmap_tiles`` for one request at a time; emits only current tiles."""

    planned = Signal(object, object)  # request, PlannedRun
    tile_ready = Signal(object, object, object, object)  # request, row slice, col slice, probabilities
    finished = Signal(object, bool)  # request, completed (False = cancelled)
    failed = Signal(object, str)  # request, one-line message

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._current: HeatmapRequest | None = None
        self._cancel: threading.Event | None = None
        self._worker: GeneratorWorker | None = None
        self.whole_store_done = False
        """After a completed run: whether every chunk of its store is done (a run over the
        visible area completes without finishing the slide); True for runs without a store.
        Read in the worker: listing thousands of chunk folders must not happen on the main thread."""

    @property
    def current(self) -> HeatmapRequest | None:
        return self._current

    def is_running(self) -> bool:
        return self._current is not None

    def start(
        self, slide: Slide, model: Any, model_path: str | None, stride: int,
        order_from: tuple[float, float] | None, *, store_path: Path | None = None,
        scope: tuple[float, float, float, float] | None = None, precision: str = "float32",
    ) -> HeatmapRequest:
        from superqt.utils import create_worker

        self.cancel()
        request = HeatmapRequest(next(_generations), slide, model, model_path, stride, order_from, store_path, scope,
                                 precision)
        cancel = threading.Event()
        worker: GeneratorWorker = create_worker(
            _heatmap_tiles, request, cancel, _start_thread=False,
            _connect={
                "yielded": partial(self._on_tile, request),
                "returned": partial(self._on_done, request),
                "errored": partial(self._on_error, request),
            },
        )
        self._current, self._cancel, self._worker = request, cancel, worker
        worker.start()
        return request

    def cancel(self) -> bool:
        """Stop the current run; returns True if one was running. Tiles still queued for the
        main thread are dropped because the request stops being current right here."""
        request, self._current = self._current, None
        if self._cancel is not None:
            self._cancel.set()
        if self._worker is not None:
            self._worker.quit()
        self._cancel = self._worker = None
        if request is not None:
            self.finished.emit(request, False)
        return request is not None

    def _on_tile(self, request: HeatmapRequest, item: Any) -> None:
        if request is not self._current:
            return
        if isinstance(item, PlannedRun):
            self.planned.emit(request, item)
            return
        _ij, tile = item
        self.tile_ready.emit(request, tile.rows, tile.cols, tile.probabilities)

    def _on_done(self, request: HeatmapRequest, whole_store_done: object) -> None:
        if request is self._current:
            self._current = self._cancel = self._worker = None
            self.whole_store_done = bool(whole_store_done)
            self.finished.emit(request, True)

    def _on_error(self, request: HeatmapRequest, exc: BaseException) -> None:
        if request is self._current:
            self._current = self._cancel = self._worker = None
            self.failed.emit(request, describe_error(exc))


def _heatmap_tiles(request: HeatmapRequest, cancel: threading.Event) -> Generator[Any, None, bool]:
    """Worker-thread generator: a :class:`PlannedRun` first, then ``((i, j), HeatmapTile)`` per
    chunk from the slide engine (written to the store first when there is one), until done or
    cancelled; returns whether the whole store is done (True without a store). Planning (tissue
    detection on a low level, opening the store) happens here too, off the main thread."""
    from viewer.heatmap.slide_run import (
        SlideHeatmapOptions, chunks_in_order, iter_slide_heatmap, open_store_for, options_for_store, plan_slide_heatmap,
        run_to_store, settle_precision,
    )
    from viewer.heatmap.priority import lower_threads_named
    from viewer.model import bundled_model_path

    model_file = request.model_path or bundled_model_path()
    options = SlideHeatmapOptions(stride=request.stride, precision=request.precision)
    if request.store_path is not None:  # a cached store made with an earlier default chunk size
        options = options_for_store(options, request.store_path)
    plan = plan_slide_heatmap(request.slide, model_file, options)
    settle_precision(plan, request.model)
    store = None
    skip = None
    if request.store_path is not None:
        store, _resumed = open_store_for(plan, request.store_path)
        skip = store.done_mask()
        # zarr's I/O loop (started by now) encodes and writes every chunk: background too.
        lower_threads_named("zarr_io", "zarr_pool")
    chunks = chunks_in_order(plan, request.order_from, skip=skip)
    if request.scope is not None:
        chunks = [ij for ij in chunks if _chunk_meets(plan, ij, request.scope)]
    counts = plan.chunk_tissue_cells
    overviews = None if store is None else {kind: store.read_overview(kind) for kind in ("mean", "max")}
    yield PlannedRun(plan, store, int(sum(int(counts[ij]) for ij in chunks)), overviews)
    if cancel.is_set():
        return False
    tiles = run_to_store(plan, request.model, store, chunks=chunks) if store is not None else iter_slide_heatmap(
        plan, request.model, chunks)
    try:
        for item in tiles:
            if cancel.is_set():
                return False
            yield item
            if cancel.is_set():
                return False
    finally:
        tiles.close()  # stop the engine now, in this thread, not whenever it is collected
    return store is None or bool(store.done_mask().all())


def _chunk_meets(plan: Any, ij: tuple[int, int], rect: tuple[float, float, float, float]) -> bool:
    """Whether chunk ``ij``'s cells (their squares on level 0) meet the level-0 rectangle."""
    rows, cols = plan.chunk_slices(*ij)
    grid = plan.grid
    cell = grid.stride * grid.scale
    x0 = grid.origin[0] + (cols.start * grid.stride + 16 - grid.stride / 2) * grid.scale
    y0 = grid.origin[1] + (rows.start * grid.stride + 16 - grid.stride / 2) * grid.scale
    x1 = x0 + (cols.stop - cols.start) * cell
    y1 = y0 + (rows.stop - rows.start) * cell
    rx, ry, rw, rh = rect
    return x0 < rx + rw and rx < x1 and y0 < ry + rh and ry < y1


def wait_for_workers(msecs: int = -1) -> bool:
    """Block until every background thread has finished (used when the window closes)."""
    return QThreadPool.globalInstance().waitForDone(msecs)

"""Slide reads for the canvas on a few Python threads, with results delivered on the main thread.

A plain ``ThreadPoolExecutor`` rather than superqt workers: requests must be checked for
staleness at the moment a thread picks them up (the user may have panned away since), and the
queue is shut down when the canvas closes. Worker threads only read and emit data; the job's
``deliver`` callback runs on the main thread, where it may touch items.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from viewer.gui.qt_workarounds import apply_workarounds

# Before anything emits signals: see qt_workarounds (PySide6 6.12.0 loses a reference per emit).
apply_workarounds()

READ_THREADS = min(4, max(2, os.cpu_count() or 2))
"""Decoding (JPEG, deflate, OpenSlide) releases the GIL, so a few threads overlap well; more
would only compete with the heatmap for the same cores."""


@dataclass(frozen=True, eq=False)
class ReadJob:
    generation: int
    """Which slide the job belongs to: the consumer ignores results of an earlier one."""
    key: Hashable
    read: Callable[[], Any]
    """Runs on a worker thread: reads and returns data, touches no Qt object."""
    deliver: Callable[[ReadJob, Any, BaseException | None, bool], None]
    """Runs on the main thread: ``(job, result, error, dropped)``."""
    wanted: Callable[[], bool] | None = None
    """Checked on the worker thread just before reading: False drops the job undecoded."""


class TileLoader(QObject):
    """Runs :class:`ReadJob` objects in submission order on :data:`READ_THREADS` threads."""

    # Emitted on a worker thread; the queued connection runs _on_finished on the main thread.
    _finished = Signal(object, object, object, bool)  # job, result, error, dropped

    def __init__(self, threads: int = READ_THREADS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._shut_down = False
        self._finished.connect(self._on_finished)

    def submit(self, job: ReadJob) -> bool:
        """Queue ``job``; False once the loader has been shut down."""
        if self._shut_down:
            return False
        if self._executor is None:  # created on first use: no threads for a window without images
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="histoviewer-tiles")
        self._executor.submit(self._run, job)
        return True

    def shut_down(self) -> None:
        """Drop queued jobs and wait for the running ones (the canvas is closing)."""
        self._shut_down = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _run(self, job: ReadJob) -> None:
        result, error, dropped = None, None, False
        if self._shut_down or (job.wanted is not None and not job.wanted()):
            dropped = True
        else:
            try:
                result = job.read()
            except Exception as exc:  # noqa: BLE001 - reported on the main thread, never lost
                error = exc
        try:
            self._finished.emit(job, result, error, dropped)
        except RuntimeError:  # the canvas, and this loader with it, was deleted meanwhile
            pass

    def _on_finished(self, job: ReadJob, result: Any, error: BaseException | None, dropped: bool) -> None:
        if not self._shut_down:
            job.deliver(job, result, error, dropped)

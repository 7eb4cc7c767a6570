"""The Dask cluster of a batch: a LocalCluster of worker processes, or a running cluster by address.

What each worker sets up once lives here too: :class:`WorkerSetup` (a Dask worker plugin, so it
also runs on workers that join or are restarted later) records how many threads TensorFlow may
use, and :func:`worker_model` loads the model once per worker process and keeps it. Neither the
model nor TensorFlow ever travels through the task graph: tasks carry paths and chunk lists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from viewer.errors import InputError, ModelError

ALLOWED_FAILURES = 3
"""A task whose worker dies (killed, out of memory) is re-run on another worker up to this many
times; then its slide is reported failed instead of taking down worker after worker. Applies to
the LocalCluster; a running cluster uses its scheduler's ``distributed.scheduler.allowed-failures``."""

LOCAL_CONFIG = {
    "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    # The nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers to hand freed memory back to the
    # OS at once. That also turns off glibc's adaptive mmap threshold, so every tile-sized NumPy
    # and TensorFlow buffer is mmap'd and page-faulted afresh: 12-15 % slower per slide here.
    # Memory stays bounded by the engine's tile sizes either way.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
"""Dask settings of the LocalCluster (a running cluster keeps its own)."""

CONNECT_TIMEOUT = "30s"
WORKER_WAIT_SECONDS = 120
"""How long to wait for the first worker of a running cluster before giving up."""

PLUGIN_NAME = "histoviewer-batch"
DASHBOARD_ADDRESS = ":8787"


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    local: bool
    workers: int
    threads: int
    """Worker threads in all (task slots)."""
    dashboard: str | None
    """The dashboard's address, when one is running (it needs the ``bokeh`` package)."""


def default_workers() -> int:
    """One worker process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def batch_client(
    scheduler: str | None = None, *, workers: int | None = None, threads_per_worker: int | None = None,
    tf_threads: int | None = None, model: str | Path | None = None, model_sha256: str | None = None,
) -> Iterator[tuple[object, ClusterInfo]]:
    """Yield ``(client, info)`` connected to ``scheduler``, or to a new LocalCluster of ``workers``
    processes with ``threads_per_worker`` threads each (default: one per core, one thread).

    TensorFlow gets ``tf_threads`` threads per worker, else ``threads_per_worker``, else (with
    ``scheduler``) each worker's own thread count. ``model``/``model_sha256``: loaded
    on every worker as it starts. Everything started here is shut down on leaving, also on
    errors and Ctrl+C.
    """
    import dask
    from distributed import Client, LocalCluster

    debug = bool(os.environ.get("HISTOVIEWER_DEBUG"))
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False))
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"cannot connect to the Dask scheduler at {scheduler} ({_one_line(exc)})") from None
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except TimeoutError:
                raise InputError(f"the Dask scheduler at {scheduler} has no workers (start some with 'dask worker {scheduler}')") from None
            local = False
        else:
            threads = threads_per_worker or 1
            with dask.config.set(LOCAL_CONFIG), _sigint_ignored():
                cluster = stack.enter_context(LocalCluster(
                    n_workers=workers or default_workers(), threads_per_worker=threads, processes=True,
                    dashboard_address=DASHBOARD_ADDRESS if _has_bokeh() else None,
                    silence_logs=logging.WARNING if debug else logging.CRITICAL,
                ))
            client = stack.enter_context(Client(cluster, set_as_default=False))
            local = True
        try:
            client.register_plugin(
                WorkerSetup(tf_threads or threads_per_worker, None if model is None else str(model), model_sha256,
                            ignore_sigint=local),
                name=PLUGIN_NAME,
            )
        except Exception as exc:  # e.g. the workers cannot import histoviewer
            raise InputError(f"the Dask workers could not be set up ({type(exc).__name__}: {_one_line(exc)}); "
                             "is histoviewer installed on every worker?") from None
        nthreads = client.nthreads()
        yield client, ClusterInfo(
            address=client.scheduler.address, local=local, workers=len(nthreads), threads=sum(nthreads.values()),
            dashboard=_dashboard_link(client),
        )


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start worker processes with Ctrl+C ignored: a terminal sends SIGINT to the whole process
    group, and only the client should react (it shuts the cluster down); workers that caught it
    themselves would each print a traceback. Processes inherit an ignored signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _scheduler_has_dashboard(dask_scheduler=None) -> bool:
    return "dashboard" in dask_scheduler.services and _has_bokeh()


def _dashboard_link(client) -> str | None:
    try:
        return client.dashboard_link if client.run_on_scheduler(_scheduler_has_dashboard) else None
    except Exception:  # a scheduler that refuses run_on_scheduler: no address to show
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# On the workers
# ---------------------------------------------------------------------------------------------

_TF_THREADS: int | None = None
_MODELS: dict[tuple[str, str], object] = {}
_MODEL_LOCK = threading.Lock()


class WorkerSetup(WorkerPlugin):
    """Runs on every worker when it starts (and on workers restarted after a crash): caps
    TensorFlow's threads and starts loading the model in the background, so the TensorFlow
    import (seconds) overlaps the first slide's planning instead of delaying its first chunks."""

    def __init__(self, tf_threads: int | None = None, model: str | None = None, sha256: str | None = None,
                 *, ignore_sigint: bool = False) -> None:
        self.tf_threads = tf_threads
        self.model = model
        self.sha256 = sha256
        self.ignore_sigint = ignore_sigint

    def setup(self, worker) -> None:
        if self.ignore_sigint and threading.current_thread() is threading.main_thread():
            # Workers of our LocalCluster leave Ctrl+C to the client (also those the nanny
            # restarts after a crash, which no longer inherit it ignored).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        set_tf_threads(self.tf_threads or worker.state.nthreads)
        # The model loads in a thread, not on the worker's event loop: importing TensorFlow
        # would stall its heartbeats for seconds.
        if self.model is not None and self.sha256 is not None:
            threading.Thread(target=_preload, args=(self.model, self.sha256), name="histoviewer-model-load",
                             daemon=True).start()


def _preload(path: str, sha256: str) -> None:
    with contextlib.suppress(Exception):  # a task asking for the model reports any error itself
        worker_model(path, sha256)


def set_tf_threads(threads: int | None) -> None:
    """How many threads TensorFlow may use in this worker process (applied at the model load)."""
    global _TF_THREADS
    _TF_THREADS = threads
    if threads and "tensorflow" not in sys.modules:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(min(threads, 2))


def worker_model(path: str, sha256: str):
    """The model at ``path``, loaded once per worker process (checked against ``sha256``, so a
    model file replaced during the run is refused rather than mixed into the cohort)."""
    key = (path, sha256)
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from viewer.heatmap.precision import configure_threads
            from viewer.model import file_sha256, load_model

            if file_sha256(path) != sha256:
                raise ModelError("changed on disk while the batch was running; start the batch again", Path(path))
            configure_threads(_TF_THREADS)  # before TensorFlow runs its first operation here
            model = load_model(path)
            _MODELS.clear()
            _MODELS[key] = model
        return model

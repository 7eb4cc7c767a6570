"""Background CPU priority for the heatmap's threads, so a window computing a heatmap stays smooth.

On two cores, TensorFlow's thread pool, the slide read-ahead (JPEG decoding) and the store
writers keep four or more threads runnable; at equal priority Linux gives the viewer's main
thread its turn only every few tens of milliseconds, and panning stutters. Measured on the 50k
benchmark slide while browsing during a whole-slide run (``benchmarks/wsi.py``): the 99th
percentile gap of the event loop fell from ~44 ms to ~22-25 ms and gaps over 50 ms from ~40 to
3-14 per run, with no loss of heatmap throughput (a lower priority only matters when something
else wants the CPU; on an idle machine the heatmap runs as fast as before).

The viewer turns this on (:func:`set_background`); the command line and the batch keep normal
priority, since there the heatmap is the job. Threads are lowered with ``setpriority`` on their
own thread id, which Linux applies per thread and hands down to the threads they create (so
TensorFlow's pool, created by the thread that first runs TensorFlow, inherits it). Elsewhere it
does nothing. A lowered thread cannot raise itself back without privileges, which is why only
threads the heatmap owns are lowered, never shared pool threads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

BACKGROUND_NICE = 10
"""The niceness of background heatmap threads (0 = normal, 19 = lowest)."""

_background = False


def set_background(on: bool) -> None:
    """Whether threads the heatmap engine starts from now on run at background priority."""
    global _background
    _background = bool(on)


def background() -> bool:
    return _background


def lower_current_thread(nice: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's CPU priority to ``nice`` (never raises it); True if it is
    now at least that nice. Linux only (elsewhere, and when refused, False)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:  # e.g. a container that forbids it: run at normal priority
        return False


def thread_initializer() -> Callable[[], object] | None:
    """The ``initializer`` for a thread pool the heatmap engine creates: lowers each of its
    threads in background mode, else None (normal priority)."""
    return lower_current_thread if _background else None


def lower_threads_named(*prefixes: str, nice: int = BACKGROUND_NICE) -> int:
    """Lower running threads whose names start with one of ``prefixes`` (threads a library
    started, such as zarr's I/O loop, which encodes and writes the store's chunks); returns how
    many were lowered. Linux only; does nothing outside background mode."""
    if not _background or not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return 0
    lowered = 0
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or not thread.name.startswith(prefixes):
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            lowered += 1
        except OSError:  # the thread ended meanwhile, or the system refuses
            continue
    return lowered

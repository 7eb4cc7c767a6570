"""viewer.heatmap.priority: the viewer's heatmap threads run at background CPU priority."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from viewer.heatmap import priority

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


@pytest.fixture
def restore_mode():
    before = priority.background()
    yield
    priority.set_background(before)


def _nice_of_a_new_thread(initializer) -> int:
    with ThreadPoolExecutor(max_workers=1, initializer=initializer) as pool:
        return pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()


@linux_only
def test_lowering_applies_to_the_calling_thread_only_and_never_raises_it():
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _nice_of_a_new_thread(priority.lower_current_thread) == max(main_nice, priority.BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice  # this thread untouched

    def lower_twice() -> int:
        priority.lower_current_thread(15)
        priority.lower_current_thread(5)  # asking for less is not a raise
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(lower_twice).result() == max(main_nice, 15)


@linux_only
def test_threads_started_by_a_lowered_thread_inherit_it():
    """TensorFlow's pool is created by the thread that first runs TensorFlow: it inherits."""

    def start_child() -> int:
        priority.lower_current_thread()
        return _nice_of_a_new_thread(None)

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(start_child).result() >= priority.BACKGROUND_NICE


@linux_only
def test_engine_pools_are_lowered_only_in_background_mode(restore_mode):
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    priority.set_background(False)
    assert priority.thread_initializer() is None
    assert _nice_of_a_new_thread(priority.thread_initializer()) == main_nice  # the CLI: normal priority
    priority.set_background(True)
    assert _nice_of_a_new_thread(priority.thread_initializer()) >= priority.BACKGROUND_NICE


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(priority.sys, "platform", "darwin")
    assert priority.lower_current_thread() is False


@linux_only
def test_library_threads_are_lowered_by_name_only_in_background_mode(restore_mode):
    import queue

    stop = queue.Queue()
    started = threading.Event()

    def idle() -> None:
        started.set()
        stop.get()

    thread = threading.Thread(target=idle, name="test-library-io")  # zarr's own may run here too
    thread.start()
    started.wait()
    try:
        priority.set_background(False)
        assert priority.lower_threads_named("test-library-io") == 0
        priority.set_background(True)
        assert priority.lower_threads_named("test-library-io", "test-library-pool") == 1
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) >= priority.BACKGROUND_NICE
        assert priority.lower_threads_named("no-such-thread") == 0
    finally:
        stop.put(None)
        thread.join()

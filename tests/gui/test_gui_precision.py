"""Analysis › Precision and Analysis › CPU Threads: what the menus offer, what choosing does, and
that the choice persists. The CPU detector is replaced both ways (fixtures no_bf16 / with_bf16 in
tests/conftest.py), so both branches run on any CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from viewer.gui import worker
from viewer.gui.settings import Settings
from viewer.heatmap import compute_heatmap, engine, precision


@pytest.fixture
def thread_limit_restored():
    """The thread limit is process-wide (it is applied at the next model load): put it back."""
    before = worker._THREAD_LIMIT
    yield
    worker._THREAD_LIMIT = before


def _submenu(window, title: str):
    analysis = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Analysis")
    return next(a.menu() for a in analysis.actions() if a.menu() and title in a.text().replace("&", ""))


def _checked(actions: dict) -> list:
    return [key for key, action in actions.items() if action.isChecked()]


def test_precision_menu_where_the_cpu_has_bfloat16(make_window, with_bf16) -> None:
    window = make_window()
    menu = _submenu(window, "Precision")
    assert [a.data() for a in menu.actions()] == ["float32", "bfloat16"]
    assert window.actions.precision_group.isExclusive() and menu.toolTipsVisible()
    assert _checked(window.actions.precisions) == ["float32"]  # exact by default
    assert window.actions.precisions["bfloat16"].isEnabled()
    assert "as fast" in window.actions.precisions["bfloat16"].toolTip() and "(faster)" in window.actions.precisions["bfloat16"].text()


def test_precision_menu_without_bfloat16_is_disabled_with_the_reason(make_window, no_bf16) -> None:
    window = make_window()
    fast = window.actions.precisions["bfloat16"]
    assert not fast.isEnabled() and "AVX512_BF16" in fast.toolTip()
    # Asked for anyway (e.g. a setting carried over from another machine): float32, with a note.
    window.heatmap_controller.set_precision("bfloat16")
    assert window.heatmap_controller.precision == "float32"
    assert _checked(window.actions.precisions) == ["float32"]
    assert "float32" in window.statusBar().currentMessage()


def test_choosing_bfloat16_reruns_the_heatmap_in_bfloat16_and_persists(
    qtbot, make_window, open_and_wait, run_heatmap, small_image: Path, with_bf16,
) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    exact = window.heatmap.copy()
    assert window.heatmap_controller.heatmap_precision == "float32"

    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000, check_params_cb=lambda ok: ok):
        window.actions.precisions["bfloat16"].trigger()
    controller = window.heatmap_controller
    assert controller.precision == "bfloat16" and _checked(window.actions.precisions) == ["bfloat16"]
    pixels = window.opened.slide.read_all()
    expected_precision = engine.effective_precision(window.model, window.heatmap_stride, "bfloat16")
    assert controller.heatmap_precision == expected_precision
    expected = compute_heatmap(pixels, window.model, stride=window.heatmap_stride, precision="bfloat16")
    np.testing.assert_allclose(window.heatmap, expected, atol=1e-6)  # the same engine as the CLI
    assert np.abs(window.heatmap - exact).max() <= 0.03
    assert Settings().heatmap_precision() == "bfloat16"

    again = make_window()
    assert again.heatmap_controller.precision == "bfloat16" and _checked(again.actions.precisions) == ["bfloat16"]
    # Back to float32: the exact heatmap again.
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000, check_params_cb=lambda ok: ok):
        window.actions.precisions["float32"].trigger()
    np.testing.assert_array_equal(window.heatmap, exact)
    assert window.heatmap_controller.heatmap_precision == "float32"


def test_cpu_threads_menu_caps_the_heatmap_and_persists(make_window, thread_limit_restored) -> None:
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the menu offers only 'All Cores'")
    window = make_window()
    limits = window.actions.thread_limits
    menu = _submenu(window, "CPU Threads")
    assert [a.data() for a in menu.actions()] == list(limits)
    assert list(limits)[0] == 0 and str(os.cpu_count() or 1) in limits[0].text()
    assert all(n < (os.cpu_count() or 1) for n in list(limits)[1:])  # 1, 2, 4, ... below the core count
    assert window.actions.thread_group.isExclusive() and _checked(limits) == [0]

    limits[1].trigger()
    assert worker._THREAD_LIMIT == 1 and Settings().heatmap_threads() == 1 and _checked(limits) == [1]
    # TensorFlow is already running in this test process: the status bar says when it applies.
    assert "next start" in window.statusBar().currentMessage()
    again = make_window()
    assert _checked(again.actions.thread_limits) == [1] and worker._THREAD_LIMIT == 1

    limits[0].trigger()
    assert worker._THREAD_LIMIT is None and Settings().heatmap_threads() is None and _checked(limits) == [0]

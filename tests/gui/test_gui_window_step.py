"""Analysis › Window Step: the chosen heatmap stride is used everywhere, re-runs, and persists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viewer import DEFAULT_STRIDE
from viewer.agreement import agreement
from viewer.cli import main as cli_main
from viewer.gui.settings import WINDOW_STEPS, Settings, qsettings
from viewer.heatmap import compute_heatmap, heatmap_rect, heatmap_shape, pixel_to_cell


def _checked_steps(window) -> list[int]:
    return [step for step, action in window.actions.window_steps.items() if action.isChecked()]


def _choose_step(qtbot, window, step: int) -> None:
    """Pick ``step`` in the menu while a heatmap exists, and wait for the re-run to complete."""
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000, check_params_cb=lambda ok: ok):
        window.actions.window_steps[step].trigger()


def test_window_step_menu(make_window) -> None:
    window = make_window()
    analysis = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Analysis")
    submenu = next(a.menu() for a in analysis.actions() if a.menu() and "Step" in a.text())
    assert [a.data() for a in submenu.actions()] == [4, 8, 16] == list(WINDOW_STEPS)
    assert submenu.toolTipsVisible()
    assert window.actions.window_step_group.isExclusive()
    assert _checked_steps(window) == [DEFAULT_STRIDE]
    assert "paper" in window.actions.window_steps[8].text()
    assert "slower" in window.actions.window_steps[4].toolTip()
    assert "faster" in window.actions.window_steps[16].toolTip()


def test_16_px_reruns_the_heatmap_and_every_reader_follows(qtbot, make_window, open_and_wait, run_heatmap,
                                                           small_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    assert window.heatmap.shape == heatmap_shape(160, 200, 8)

    _choose_step(qtbot, window, 16)
    assert _checked_steps(window) == [16] and window.window_step == window.heatmap_stride == 16
    shape = heatmap_shape(160, 200, 16)
    assert window.heatmap.shape == shape and window.heatmap_complete
    expected = compute_heatmap(window.opened.slide.read_all(), window.model, stride=16)
    np.testing.assert_allclose(window.heatmap, expected, atol=1e-5)
    # layer geometry: 16 px squares centred on the window centres
    rect = window.heatmap_layer.item.mapRectToParent(window.heatmap_layer.item.boundingRect())
    assert (rect.x(), rect.y(), rect.width(), rect.height()) == heatmap_rect(*shape, 16)
    assert "window step 16 px" in window.layers_panel.heatmap_info.text()
    # agreement panel
    assert window.agreement_result.stride == 16
    reference = agreement(window.heatmap, window.annotations, 200, 160, stride=16)
    assert window.agreement_result.by_class()["tumor"] == reference.by_class()["tumor"]
    # status-bar readout: (40, 30) is cell (1, 2) at 16 px (it would be (2, 3) at 8 px)
    assert pixel_to_cell(40.0, 30.0, shape, 16) == (1, 2)
    window._show_cursor(40.0, 30.0)
    assert window.status.probability_label.text() == f"p {window.heatmap[1, 2]:.3f}"


def test_exports_use_the_chosen_step(qtbot, make_window, dialogs_seen, export_to, open_and_wait, run_heatmap,
                                     small_image: Path, model_file: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    _choose_step(qtbot, window, 16)

    target = tmp_path / "heat16.npy"
    export_to(window, window.actions.export_heatmap, target)
    np.testing.assert_array_equal(np.load(target), window.heatmap)
    assert json.loads((tmp_path / "heat16.json").read_text())["geometry"]["stride"] == 16

    gui_file = tmp_path / "gui16.png"
    export_to(window, window.actions.export_overlay, gui_file)
    state = window.layers_panel.state
    cli_file = tmp_path / "cli16.png"
    assert cli_main(["export", str(small_image), "--out", str(cli_file), "--model", str(model_file),
                     "--opacity", str(state.opacity), "--threshold", str(state.threshold),
                     "--colormap", state.colormap, "--stride", "16", "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(gui_file)), np.asarray(Image.open(cli_file)))


def test_changing_the_step_mid_run_restarts_at_the_new_step(qtbot, make_window, open_and_wait, gated_engine,
                                                           tiled_image: Path) -> None:
    window = make_window()
    open_and_wait(window, tiled_image)
    with qtbot.waitSignal(window.runner.tile_ready, timeout=60_000):
        window.actions.run_heatmap.trigger()  # paused after its first tile at 8 px
    painted_strides = []
    window.runner.tile_ready.connect(lambda request, *rest: painted_strides.append(request.stride))
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000, check_params_cb=lambda ok: ok):
        window.actions.window_steps[16].trigger()
        assert window.runner.current.stride == 16
        gated_engine.set()  # the old run may go on now: none of its tiles may be painted
    assert painted_strides and set(painted_strides) == {16}
    assert window.heatmap.shape == heatmap_shape(700, 900, 16) and np.isfinite(window.heatmap).all()
    assert "window step 16 px" in window.layers_panel.heatmap_info.text()


def test_a_step_chosen_before_a_run_only_records_the_choice(qtbot, make_window, open_and_wait, run_heatmap,
                                                           small_image: Path) -> None:
    window = make_window()
    window.actions.window_steps[16].trigger()  # no image: nothing to compute
    assert window.window_step == 16 and window.heatmap is None and not window.runner.is_running()
    assert "16 px" in window.status.currentMessage()
    open_and_wait(window, small_image)  # auto-run is off: still no heatmap
    window.actions.window_steps[4].trigger()
    assert window.heatmap is None and not window.runner.is_running()
    assert _checked_steps(window) == [4]

    run_heatmap(window)
    assert window.heatmap_stride == 4 and window.heatmap.shape == heatmap_shape(160, 200, 4)
    np.testing.assert_allclose(window.heatmap, compute_heatmap(window.opened.slide.read_all(), window.model, stride=4),
                               atol=1e-5)


def test_the_step_persists_across_windows(qtbot, make_window) -> None:
    window = make_window()
    window.actions.window_steps[16].trigger()
    window.close()
    assert Settings().heatmap_stride() == 16

    again = make_window(auto_run=None)
    assert again.window_step == 16 and _checked_steps(again) == [16]


@pytest.mark.parametrize(("stored", "expected"), [
    ("16", 16), ("4.0", 4), ("5", 8), ("0", 8), ("-16", 8), ("32", 8), ("16.5", 8), ("abc", 8), ("", 8),
])
def test_a_bad_stored_step_falls_back_to_8(make_window, stored: str, expected: int) -> None:
    store = qsettings()
    store.setValue("heatmap/stride", stored)
    store.sync()
    window = make_window()
    assert window.window_step == expected and _checked_steps(window) == [expected]


SWITCH_IN_A_FRESH_PROCESS = r"""
import sys
from PySide6.QtCore import QSettings
from viewer.gui.app import create_application
from viewer.gui.wait import wait_for

app = create_application()
QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, sys.argv[3])
from viewer.gui.main_window import MainWindow

window = MainWindow(model_path=sys.argv[1])
window.show()
window.start(sys.argv[2])  # the model loader imports TensorFlow on a pool thread, as in real use
assert wait_for(window.heatmap_finished, 120)[0]
for step in (16, 4):
    window.actions.window_steps[step].trigger()
    assert wait_for(window.heatmap_finished, 120)[0]
    print("STEP", step, *window.heatmap.shape, flush=True)
for _ in range(2):  # File > Load Model... twice: each load is a new model on the model thread
    window.load_model(sys.argv[1])
    wait_for(window.model_loader.loaded, 120)
    window.run_heatmap()
    assert wait_for(window.heatmap_finished, 120)[0]
    print("RELOADED", *window.heatmap.shape, flush=True)
window.close()
"""


def test_switching_steps_and_reloading_models_survive_tensorflow_imported_in_a_worker(tmp_path: Path, small_image: Path,
                                                                  model_file: Path) -> None:
    # In this pytest process TensorFlow was imported on the main thread (the model fixtures),
    # which hides the crash: only a fresh process imports it on the model loader's thread.
    # When that was a Qt pool thread, a new step or a second model aborted the interpreter.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    (tmp_path / "settings").mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-c", SWITCH_IN_A_FRESH_PROCESS, str(model_file), str(small_image),
                             str(tmp_path / "settings")], capture_output=True, text=True, timeout=300, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("STEP")]
    assert lines == [["STEP", str(step), *map(str, heatmap_shape(160, 200, step))] for step in (16, 4)]
    reloaded = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("RELOADED")]
    assert reloaded == [list(map(str, heatmap_shape(160, 200, 4)))] * 2

"""The heatmap worker: progressive painting, cancel, stale results, model loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viewer.heatmap import compute_heatmap
from viewer.heatmap.slide_run import chunks_in_order, plan_slide_heatmap


def gui_plan(window):
    """The chunks the viewer computes for the open image (its plan, with the bundled model)."""
    from viewer.model import bundled_model_path

    return plan_slide_heatmap(window.opened.slide, window.model_path or bundled_model_path())


def test_paints_progressively_from_the_visible_centre(qtbot, make_window, open_and_wait, tiled_image: Path) -> None:
    window = make_window()
    open_and_wait(window, tiled_image)
    plan = gui_plan(window)
    n_chunks = plan.chunk_grid[0] * plan.chunk_grid[1]
    assert n_chunks >= 4
    painted: list[tuple[int, float]] = []  # (tile cells, fraction of cells done) after each tile

    def record(request, rows, cols, probabilities):
        alpha_known = np.isfinite(window.heatmap).mean()
        painted.append((probabilities.size, alpha_known))

    window.runner.tile_ready.connect(record)
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000) as done:
        window.actions.run_heatmap.trigger()
        assert window.status.progress.isVisible() and window.status.cancel_button.isVisible()
        assert window.actions.cancel_heatmap.isEnabled() and not window.actions.run_heatmap.isEnabled()
    assert done.args == [True]
    assert len(painted) == n_chunks
    # several tiles arrived, each painted before the next: the known fraction grows tile by tile
    fractions = [f for _, f in painted]
    assert fractions[0] < 0.5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert not window.status.progress.isVisible()
    # the display buffer is opaque exactly where the cells pass the threshold
    rgba = window.heatmap_layer._rgba
    assert np.array_equal(rgba[..., 3] == 255, window.heatmap >= window.layers_panel.state.threshold)
    # the same numbers as the core engine
    expected = compute_heatmap(window.opened.slide.read_all(), window.model)
    np.testing.assert_allclose(window.heatmap, expected, atol=1e-5)
    assert window.agreement_panel.table.rowCount() >= 1
    assert window.actions.export_heatmap.isEnabled()


def test_first_tile_is_at_the_visible_centre(qtbot, make_window, open_and_wait, gated_engine,
                                            tiled_image: Path) -> None:
    window = make_window()
    open_and_wait(window, tiled_image)
    window.canvas.zoom_to(2.0)
    window.canvas.view.translateBy(x=-(window.canvas.view.viewRect().center().x() - 100),
                                   y=-(window.canvas.view.viewRect().center().y() - 100))
    cx, cy = window.canvas.visible_centre()
    with qtbot.waitSignal(window.runner.tile_ready, timeout=60_000) as first:
        window.actions.run_heatmap.trigger()
    _, rows, cols, _ = first.args
    plan = gui_plan(window)
    expected_first = plan.chunk_slices(*chunks_in_order(plan, (cx, cy))[0])
    assert (rows, cols) == expected_first
    with qtbot.waitSignal(window.heatmap_finished, timeout=10_000):
        window.actions.cancel_heatmap.trigger()
    gated_engine.set()  # release the paused worker before the window closes and joins it


def test_cancel_stops_painting(qtbot, make_window, open_and_wait, gated_engine, tiled_image: Path) -> None:
    window = make_window()
    open_and_wait(window, tiled_image)
    tiles = []
    window.runner.tile_ready.connect(lambda *args: tiles.append(args))
    with qtbot.waitSignal(window.runner.tile_ready, timeout=60_000):
        window.actions.run_heatmap.trigger()
    with qtbot.waitSignal(window.heatmap_finished, timeout=5_000) as stopped:
        window.actions.cancel_heatmap.trigger()
    assert stopped.args == [False]
    painted = np.isfinite(window.heatmap).sum()
    count = len(tiles)
    from viewer.gui.worker import wait_for_workers

    gated_engine.set()  # let the engine go on: the worker must notice the cancel and stop
    assert wait_for_workers(30_000)  # the worker really stops...
    qtbot.wait(50)  # ...and anything it still queued is dropped
    assert len(tiles) == count and np.isfinite(window.heatmap).sum() == painted
    assert 0 < painted < window.heatmap.size
    assert not window.status.progress.isVisible()
    assert window.actions.run_heatmap.isEnabled() and not window.actions.cancel_heatmap.isEnabled()
    assert "Stopped" in window.layers_panel.heatmap_info.text()


def test_opening_another_image_drops_stale_tiles(qtbot, make_window, open_and_wait, gated_engine,
                                                 tiled_image: Path, small_image: Path) -> None:
    window = make_window(auto_run=True)
    seen = []
    window.runner.tile_ready.connect(lambda request, *rest: seen.append(request.slide.path))
    with qtbot.waitSignal(window.runner.tile_ready, timeout=60_000):
        open_and_wait(window, tiled_image)  # auto-run starts the heatmap
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000, check_params_cb=lambda ok: ok):
        open_and_wait(window, small_image)  # the first run is paused after its first tile
        switch = len(seen)
        gated_engine.set()  # now both runs may go on; only the new one may paint
    assert seen[:switch] == [tiled_image]
    assert all(path == small_image for path in seen[switch:])
    assert window.heatmap.shape == (17, 22) and np.isfinite(window.heatmap).all()


def test_runner_drops_tiles_of_a_superseded_request(qtbot, gated_engine, tiled_image: Path, small_image: Path,
                                                    loaded_model) -> None:
    from viewer.gui.worker import HeatmapRunner, wait_for_workers
    from viewer.slide import open_slide

    runner = HeatmapRunner()
    got = []
    runner.tile_ready.connect(lambda request, *rest: got.append(request))
    with qtbot.waitSignal(runner.tile_ready, timeout=60_000):
        first = runner.start(open_slide(tiled_image), loaded_model, None, 8, None)
    with qtbot.waitSignal(runner.finished, timeout=60_000, check_params_cb=lambda req, ok: ok):
        second = runner.start(open_slide(small_image), loaded_model, None, 8, None)
        switch = len(got)
        gated_engine.set()
    assert got[:switch] == [first]
    assert got[switch:] and all(r is second for r in got[switch:])
    assert wait_for_workers(30_000)


def test_model_loads_in_the_background(qtbot, make_window, open_and_wait, small_image: Path) -> None:
    window = make_window(auto_run=True, load_model=True)
    assert window.model is not None
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000):
        open_and_wait(window, small_image)
    assert np.isfinite(window.heatmap).all()


def test_loading_a_bad_model_warns_and_keeps_the_old_one(qtbot, make_window, dialogs_seen, tmp_path: Path) -> None:
    window = make_window()
    old = window.model
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    dialogs_seen.open_paths.append(str(bad))
    window.actions.load_model.trigger()
    qtbot.waitUntil(lambda: bool(dialogs_seen.messages), timeout=30_000)
    title, text = dialogs_seen.expect("warning")
    assert "bad.keras" in text and "Load Model" in text
    assert window.model is old


def test_run_without_a_model_explains(qtbot, make_window, dialogs_seen, open_and_wait, small_image: Path) -> None:
    window = make_window()
    window.model = None
    open_and_wait(window, small_image)
    window.actions.run_heatmap.trigger()
    assert "Load Model" in dialogs_seen.expect("warning")[1]


def test_a_run_waiting_for_the_model_can_be_cancelled(qtbot, make_window, open_and_wait, small_image: Path,
                                                     model_file: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    window.model = None
    with qtbot.waitSignal(window.model_ready, timeout=60_000):
        window.load_model(str(model_file))
        window.actions.run_heatmap.trigger()  # the model is still loading: the run waits for it
        assert window.actions.cancel_heatmap.isEnabled() and not window.actions.run_heatmap.isEnabled()
        window.actions.cancel_heatmap.trigger()  # Esc
        assert window.actions.run_heatmap.isEnabled() and not window.actions.cancel_heatmap.isEnabled()
    assert window.heatmap is None  # the cancelled wait did not start a run when the model arrived


def test_a_failed_run_still_updates_the_agreement_table(qtbot, make_window, dialogs_seen, open_and_wait,
                                                       small_image: Path, monkeypatch) -> None:
    import viewer.heatmap.slide_run as engine_user  # the viewer drains the engine through it

    real = engine_user.iter_heatmap_tiles

    def fails_after_one_tile(*args, **kwargs):
        tiles = real(*args, **kwargs)
        yield next(tiles)
        tiles.close()
        raise MemoryError("out of memory")

    monkeypatch.setattr(engine_user, "iter_heatmap_tiles", fails_after_one_tile)
    window = make_window()
    open_and_wait(window, small_image)
    with qtbot.waitSignal(window.heatmap_finished, timeout=60_000) as done:
        window.actions.run_heatmap.trigger()
    assert done.args == [False]
    assert "MemoryError" in dialogs_seen.expect("warning")[1]
    panel = window.agreement_panel
    assert "Waiting" not in panel.message.text() and "Partial heatmap" in panel.message.text()

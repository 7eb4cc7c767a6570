"""The viewer's heatmap on whole slides: stores in the cache folder, resuming, reopening, scopes,
and the layer's exact cells versus overview by zoom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, QRectF

from slide_factory import write_pyramidal_tiff
from viewer.heatmap.analysis import AnalysisGrid
from viewer.heatmap.data import ArrayHeatmap, StoreHeatmap
from viewer.heatmap.slide_run import SlideHeatmapOptions, compute_slide_array, plan_slide_heatmap
from viewer.slide import open_slide


@pytest.fixture
def pyramid(tmp_path: Path) -> Path:
    """A small pyramidal slide: a 'whole slide' to the viewer (its own levels), 3×2 chunks of
    128 cells."""
    return write_pyramidal_tiff(tmp_path / "pyramid.tif", 2600, 1900, tile=256, levels=3, compression="zlib", mpp=0.25)


@pytest.fixture
def larger_pyramid(tmp_path: Path) -> Path:
    """Twice as wide and tall: 6×4 chunks, more than a run into a store can have computed and
    queued for writing (at most 1 + slide_run._WRITES_IN_FLIGHT) when it first reports one."""
    return write_pyramidal_tiff(tmp_path / "larger.tif", 5200, 3800, tile=256, levels=3, compression="zlib", mpp=0.25)


def finished(qtbot, window, trigger) -> list:
    with qtbot.waitSignal(window.heatmap_finished, timeout=120_000) as blocker:
        trigger()
    return blocker.args


def test_a_whole_slide_streams_into_a_store_in_the_cache_and_equals_the_engine(
        qtbot, make_window, open_and_wait, pyramid, isolated_heatmap_cache, model_file, loaded_model):
    window = make_window()
    open_and_wait(window, pyramid)
    assert finished(qtbot, window, window.actions.run_heatmap.trigger) == [True]
    controller = window.heatmap_controller
    assert isinstance(controller.data, StoreHeatmap) and window.heatmap is None
    assert controller.complete
    stores = list(isolated_heatmap_cache.glob("*.zarr"))
    assert stores == [controller.store_path]
    plan = plan_slide_heatmap(open_slide(pyramid), model_file, SlideHeatmapOptions())
    expected = compute_slide_array(plan, loaded_model)
    got = controller.data.read(slice(0, plan.shape[0]), slice(0, plan.shape[1]))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    assert np.nanmax(np.abs(got - expected)) <= 1e-5
    assert controller.tissue is not None and window.tissue_layer.mask is controller.tissue


def test_reopening_a_slide_shows_its_stored_heatmap_at_once(qtbot, make_window, open_and_wait, pyramid):
    window = make_window()
    open_and_wait(window, pyramid)
    finished(qtbot, window, window.actions.run_heatmap.trigger)
    first = window.heatmap_controller.data.read(slice(0, 50), slice(0, 50))
    window.close_image()
    assert window.heatmap_controller.data is None
    # no run: the store is found (and read in a worker) as soon as the slide is on screen
    with qtbot.waitSignal(window.heatmap_controller.cached_shown, timeout=20_000):
        open_and_wait(window, pyramid)
    assert not window.heatmap_controller.running
    assert window.heatmap_controller.complete
    np.testing.assert_array_equal(window.heatmap_controller.data.read(slice(0, 50), slice(0, 50)), first)
    assert window.heatmap_layer.data is window.heatmap_controller.data


def test_stopping_keeps_what_was_computed_and_the_next_run_continues(
        qtbot, make_window, open_and_wait, larger_pyramid, paused_after_first_chunk):
    from viewer.heatmap.slide_run import _WRITES_IN_FLIGHT

    window = make_window()
    open_and_wait(window, larger_pyramid)
    with qtbot.waitSignal(window.runner.tile_ready, timeout=120_000):
        window.actions.run_heatmap.trigger()
    assert finished(qtbot, window, window.actions.cancel_heatmap.trigger) == [False]
    paused_after_first_chunk.set()
    from viewer.gui.worker import wait_for_workers

    assert wait_for_workers(60_000)  # the stopped worker may still store the chunk it was on
    store = window.heatmap_controller.data.store
    done_before = int(store.done_mask().sum())
    total = store.done_mask().size
    assert total > 1 + _WRITES_IN_FLIGHT  # so chunks are left whatever the machine's speed
    assert 0 < done_before < total
    painted: list = []
    window.runner.tile_ready.connect(lambda *args: painted.append(args))
    assert finished(qtbot, window, window.actions.run_heatmap.trigger) == [True]
    assert window.heatmap_controller.complete
    assert int(store.done_mask().sum()) == total
    assert len(painted) == total - done_before  # only the chunks left were computed


def test_a_drawn_rectangle_computes_only_the_chunks_under_it(qtbot, make_window, open_and_wait, pyramid):
    window = make_window()
    open_and_wait(window, pyramid)
    window.actions.run_rectangle.trigger()
    picker = window.region_picker
    assert picker.active
    picker.roi.setPos(QPointF(100, 100))
    picker.roi.setSize(QPointF(300, 200))
    assert finished(qtbot, window, picker.accept) == [True]
    assert not picker.active and not window.actions.run_rectangle.isChecked()
    controller = window.heatmap_controller
    done = controller.data.store.done_mask()
    assert 0 < done.sum() < done.size and not controller.complete
    # the chunks done are exactly those whose cells meet the rectangle
    assert done[0, 0] and not done[-1, -1]


def big_grid_heatmap(rows: int = 3000, cols: int = 3000) -> ArrayHeatmap:
    grid = AnalysisGrid((0, 0), 1.0, (cols - 1) * 8 + 32, (rows - 1) * 8 + 32, 8)
    probs = np.full((rows, cols), 0.1, np.float32)
    probs[:, :100] = np.nan  # not computed
    probs[1234, 2345] = 0.95  # one small tumour focus
    return ArrayHeatmap(probs, grid)


def test_layer_draws_an_overview_zoomed_out_and_exact_cells_zoomed_in(qtbot, make_window):
    window = make_window()
    layer, canvas = window.heatmap_layer, window.canvas
    data = big_grid_heatmap()
    x, y, w, h = data.grid.level0_rect()
    canvas.view.setRange(QRectF(x, y, w, h), padding=0)
    layer.set_data(data)
    assert layer.mode == "overview" and layer.overview_item.isVisible() and not layer.item.isVisible()
    # mean ignores not-computed cells instead of counting them as 0; max keeps the focus visible
    mean = layer._overview["mean"]
    assert np.isnan(mean[0, 0]) and mean[100, 100] == pytest.approx(0.1)
    assert layer._overview["max"][1234 // 8, 2345 // 8] == pytest.approx(0.95)
    assert layer._overview["mean"][1234 // 8, 2345 // 8] < 0.2
    cx, cy = data.grid.cell_centre_level0(1234, 2345)
    canvas.view.setRange(QRectF(float(cx) - 400, float(cy) - 300, 800, 600), padding=0)
    layer.refresh()
    assert layer.mode == "cells" and layer.item.isVisible() and not layer.overview_item.isVisible()
    assert layer.probability_at(float(cx), float(cy)) == pytest.approx(0.95)
    rows, cols = layer._span
    assert rows.stop - rows.start < 1000 and cols.stop - cols.start < 1000  # the visible cells, not all


def test_layer_places_cells_by_the_grid_scale_and_origin(qtbot, make_window):
    window = make_window()
    layer = window.heatmap_layer
    grid = AnalysisGrid((1000, 2000), 2.0, 8 * 9 + 32, 8 * 4 + 32, 8)
    probs = np.arange(50, dtype=np.float32).reshape(5, 10) / 50
    layer.set_data(ArrayHeatmap(probs, grid))
    rect = layer.item.mapRectToParent(layer.item.boundingRect())
    # cell (0, 0) is a 16 px square centred on 1000 + 2*16 = 1032, 2000 + 2*16 = 2032
    assert (rect.x(), rect.y()) == (1032 - 8, 2032 - 8)
    assert (rect.width(), rect.height()) == (10 * 16, 5 * 16)
    assert layer.probability_at(1032 + 16 * 3, 2032 + 16 * 2) == pytest.approx(probs[2, 3])


def test_a_store_written_by_the_cli_opens_beside_its_slide_and_another_slides_is_refused(
        qtbot, make_window, open_and_wait, pyramid, tmp_path, dialogs_seen):
    from viewer.cli import main

    store = tmp_path / "out" / "heatmap.zarr"
    store.parent.mkdir()
    assert main(["heatmap", str(pyramid), "--out", str(store), "--quiet", "--region", "0,0,900,700"]) == 0
    window = make_window()
    open_and_wait(window, pyramid)
    assert window.heatmap_controller.open_store(store)
    data = window.heatmap_controller.data
    assert isinstance(data, StoreHeatmap) and window.heatmap_layer.data is data
    assert window.heatmap_controller.complete
    assert window.heatmap_controller.grid.origin == (0, 0) and data.shape == data.store.shape
    other = write_pyramidal_tiff(tmp_path / "other.tif", 1800, 1500, tile=256, levels=2, compression="zlib")
    open_and_wait(window, other)
    assert not window.heatmap_controller.open_store(store)
    title, text = dialogs_seen.expect("warning")
    assert "pyramid.tif" in text and "other.tif" in text


def test_after_a_run_the_cache_is_pruned_off_the_main_thread_keeping_the_current_store(
        qtbot, make_window, open_and_wait, pyramid, isolated_heatmap_cache, monkeypatch):
    """Sizing the cache walks every file of every store (tens of thousands for a big slide): it
    once ran on the main thread at the end of every run."""
    import threading

    from viewer.heatmap import store_cache

    old = isolated_heatmap_cache / "old-slide.zarr"
    old.mkdir(parents=True)
    (old / "chunk").write_bytes(b"x" * 4096)
    real_prune = store_cache.prune
    calls: list[tuple[bool, list]] = []

    def tiny_cache(folder, max_bytes=store_cache.DEFAULT_CACHE_BYTES, *, keep=()):
        removed = real_prune(folder, 1, keep=keep)  # a cache of one byte: everything but `keep` goes
        calls.append((threading.current_thread() is threading.main_thread(), removed))
        return removed

    monkeypatch.setattr(store_cache, "prune", tiny_cache)
    window = make_window()
    open_and_wait(window, pyramid)
    assert finished(qtbot, window, window.actions.run_heatmap.trigger) == [True]
    qtbot.waitUntil(lambda: bool(calls), timeout=10_000)
    on_main_thread, removed = calls[0]
    assert not on_main_thread and removed == [old] and not old.exists()
    assert window.heatmap_controller.store_path.is_dir() and window.heatmap_controller.complete


def test_the_tissue_layer_tints_tissue_and_leaves_glass_clear(qtbot, make_window):
    from viewer.gui.tissue_layer import TISSUE_TINT
    from viewer.slide.tissue import TissueMask

    window = make_window()
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 10:35] = True
    tissue = TissueMask(mask=mask, downsample=(16.0, 16.0), fraction=float(mask.mean()), level=2)
    window.tissue_layer.set_mask(tissue)
    rgba = window.tissue_layer.item.image
    assert rgba.shape == (30, 40, 4) and rgba.dtype == np.uint8
    assert (rgba[mask] == TISSUE_TINT).all() and (rgba[~mask] == 0).all()
    rect = window.tissue_layer.item.mapRectToParent(window.tissue_layer.item.boundingRect())
    assert (rect.width(), rect.height()) == (40 * 16.0, 30 * 16.0)

"""Heatmaps of whole slides: the streamed, tissue-masked, resumable engine against the exact one.

Synthetic pyramidal TIFFs from tests/slide_factory.py; the bundled model (the real one, since
resolution and geometry are what is tested, and it is small)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from slide_factory import write_pyramidal_tiff
from viewer.cli import main
from viewer.heatmap import compute_heatmap
from viewer.heatmap.analysis import AnalysisImage
from viewer.heatmap.slide_run import (
    SlideHeatmapOptions,
    compute_slide_array,
    open_store_for,
    plan_slide_heatmap,
    run_to_store,
)
from viewer.model import bundled_model_path, load_model
from viewer.slide import open_slide

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    """A 3000 x 2200 JPEG-tiled pyramid at 0.25 µm/px (the bundled model's resolution)."""
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    return write_pyramidal_tiff(path, 3000, 2200, tile=256, levels=3, compression="jpeg", mpp=0.25)


def test_streamed_region_equals_the_exact_engine_on_the_same_pixels(slide_path, model):
    slide = open_slide(slide_path)
    region = (333, 517, 1100, 900)  # deliberately not on tile or chunk borders
    plan = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(region=region, tissue_mask=False))
    assert plan.grid.scale == 1.0 and plan.grid.origin == (333, 517)
    streamed = compute_slide_array(plan, model)
    x, y, w, h = region
    expected = compute_heatmap(slide.read_region(0, x, y, w, h), model)
    assert streamed.shape == expected.shape
    assert np.nanmax(np.abs(streamed - expected)) <= 1e-4
    assert np.isfinite(streamed).all()


def half_glass(x0, y0, w, h, downsample=1.0):
    """Tissue on the left half of a 4000 px wide slide, bare glass (0.2 mm² at 0.25 µm) on the right."""
    from slide_factory import GLASS, synthetic_tissue

    tile = synthetic_tissue(x0, y0, w, h, downsample=downsample)
    xs = (np.arange(x0, x0 + w) + 0.5) * downsample
    tile[:, xs >= 2000] = GLASS
    return tile


def test_tissue_mask_leaves_glass_not_computed_and_never_zero(tmp_path, model):
    path = write_pyramidal_tiff(tmp_path / "half.tif", 4000, 1600, tile=256, levels=3, mpp=0.25, source=half_glass)
    slide = open_slide(path)
    plan = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(tissue_mask=True))
    assert plan.tissue is not None and 0.3 < plan.tissue.fraction < 0.6
    heatmap = compute_slide_array(plan, model)
    computed = np.isfinite(heatmap)
    assert 0 < computed.mean() < 1
    assert computed.sum() == plan.tissue_cells
    # every computed cell's window is mostly tissue, every skipped one is not
    rows, cols = slice(0, heatmap.shape[0]), slice(0, heatmap.shape[1])
    assert np.array_equal(computed, plan.evaluated_cells(rows, cols))


def test_analysis_resamples_a_finer_slide_to_the_models_pixel_size(tmp_path, model):
    path = write_pyramidal_tiff(tmp_path / "fine.tif", 1600, 1200, tile=256, levels=3, compression="zlib", mpp=0.125)
    slide = open_slide(path)
    notes: list[str] = []
    plan = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(tissue_mask=False))
    assert plan.grid.scale == pytest.approx(2.0) and plan.grid.mpp == pytest.approx(0.25)
    assert (plan.grid.width, plan.grid.height) == (800, 600)
    # scale 2 reads level 1 (downsample 2) as it is: the analysis image is that level
    image = AnalysisImage(slide, plan.grid)
    np.testing.assert_array_equal(image.block(0, 0, 800, 600), slide.read_region(1, 0, 0, 800, 600))
    streamed = compute_slide_array(plan, model)
    np.testing.assert_allclose(streamed, compute_heatmap(slide.read_region(1, 0, 0, 800, 600), model), atol=1e-4)
    # --mpp overrides what the file says: at 0.25 the slide is analysed at level 0
    same = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(mpp=0.25, tissue_mask=False))
    assert same.grid.scale == 1.0
    del notes


def test_a_slide_without_pixel_size_is_analysed_as_it_is_with_a_note(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "nompp.tif", 5000, 600, tile=256, levels=2, compression="zlib")
    plan = plan_slide_heatmap(open_slide(path), bundled_model_path(), SlideHeatmapOptions(tissue_mask=False))
    assert plan.grid.scale == 1.0
    assert any("no pixel size" in note for note in plan.notes)


def test_store_layout_is_plain_zarr_with_the_documented_attributes(slide_path, model, tmp_path):
    slide = open_slide(slide_path)
    plan = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(region=(0, 0, 1200, 1000)))
    store, resumed = open_store_for(plan, tmp_path / "h.zarr")
    assert not resumed
    list(run_to_store(plan, model, store))
    group = zarr.open_group(str(tmp_path / "h.zarr"), mode="r")
    attrs = dict(group.attrs)
    for key in ("patch", "stride", "scale", "origin", "model_sha256", "version"):
        assert key in attrs, key
    assert attrs["patch"] == 32 and attrs["stride"] == 8 and attrs["scale"] == 1.0 and attrs["origin"] == [0, 0]
    assert attrs["complete"] is True
    probability = group["probability"][:]
    assert probability.dtype == np.float32 and probability.shape == plan.shape
    assert np.asarray(group["done"][:]).all()
    tissue = np.asarray(group["tissue"][:]).astype(bool)
    assert np.array_equal(np.isfinite(probability), tissue)
    x, y, w, h = 0, 0, 1200, 1000
    exact = compute_heatmap(slide.read_region(0, x, y, w, h), model)
    assert np.nanmax(np.abs(probability[tissue] - exact[tissue])) <= 1e-4


def run_cli(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "viewer", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_store_survives_kill_9_and_resumes_to_the_same_array(slide_path, tmp_path):
    reference = tmp_path / "reference.zarr"
    assert main(["heatmap", str(slide_path), "--out", str(reference), "--quiet", "--no-tissue-mask"]) == 0
    killed = tmp_path / "killed.zarr"
    process = run_cli("heatmap", str(slide_path), "--out", str(killed), "--quiet", "--no-tissue-mask")
    # wait until some, not all, chunks are done, then kill -9
    deadline = time.monotonic() + 300
    done_dir = killed / "done" / "c"
    while time.monotonic() < deadline and process.poll() is None:
        finished = sum(len(files) for _, _, files in os.walk(done_dir)) if done_dir.exists() else 0
        if finished >= 3:
            break
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {process.communicate()}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = zarr.open_group(str(killed), mode="r")
    assert not np.asarray(partial["done"][:]).all()
    resumed = run_cli("heatmap", str(slide_path), "--out", str(killed), "--no-tissue-mask")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming" in err
    a = zarr.open_group(str(reference), mode="r")
    b = zarr.open_group(str(killed), mode="r")
    for name in ("probability", "done", "tissue", "overview_mean", "overview_max"):
        np.testing.assert_array_equal(np.asarray(a[name][:]), np.asarray(b[name][:]), err_msg=name)


def test_cli_refuses_a_store_of_another_model_and_force_replaces_it(slide_path, tmp_path, capsys):
    from viewer.model import build_convnet

    other = build_convnet(seed=1)
    other.save(tmp_path / "other.keras")
    out = tmp_path / "h.zarr"
    region = ["--region", "0,0,600,500"]
    assert main(["heatmap", str(slide_path), "--out", str(out), "--quiet", *region]) == 0
    assert main(["heatmap", str(slide_path), "--out", str(out), "--quiet", "--model", str(tmp_path / "other.keras"), *region]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "h.zarr" in err and "--force" in err
    assert main(["heatmap", str(slide_path), "--out", str(out), "--quiet", "--force",
                 "--model", str(tmp_path / "other.keras"), *region]) == 0


def test_cli_npy_of_a_region_records_scale_and_origin(slide_path, tmp_path, capsys):
    out = tmp_path / "r.npy"
    assert main(["heatmap", str(slide_path), "--out", str(out), "--region", "100,200,400,300", "--no-tissue-mask"]) == 0
    side = json.loads((tmp_path / "r.json").read_text())
    assert side["analysis"]["origin"] == [100, 200] and side["analysis"]["scale"] == 1.0
    assert np.load(out).shape == ((300 - 32) // 8 + 1, (400 - 32) // 8 + 1)


@pytest.mark.parametrize("region, words", [
    ("1,2,3", ["--region"]), ("0,0,0,10", ["--region"]), ("a,b,c,d", ["--region"]),
    ("2900,2000,500,500", ["not inside"]),
])
def test_cli_bad_regions_are_one_line_errors(slide_path, tmp_path, capsys, region, words):
    code = main(["heatmap", str(slide_path), "--out", str(tmp_path / "x.npy"), "--region", region])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_cli_bad_mpp_is_a_one_line_error(slide_path, tmp_path, capsys):
    assert main(["heatmap", str(slide_path), "--out", str(tmp_path / "x.npy"), "--mpp", "-1"]) == 2
    assert "--mpp" in capsys.readouterr().err


def test_read_ahead_reads_each_block_once_and_cuts_its_tiles_from_it():
    """The slide run's read-ahead serves a block's tiles from one read of their union box."""
    from viewer.heatmap.slide_run import _ReadAhead

    class Image:
        height, width = 400, 600

        def __init__(self):
            self.calls = []
            self.pixels = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)

        def block(self, x, y, w, h):
            self.calls.append((x, y, w, h))
            return self.pixels[y : y + h, x : x + w].copy()

    image = Image()
    groups = [[(0, 0, 100, 80), (60, 0, 100, 80)], [(200, 100, 50, 50), (200, 130, 50, 60)]]
    ahead = _ReadAhead(image, groups)
    try:
        for boxes in groups:
            for x, y, w, h in boxes:
                np.testing.assert_array_equal(ahead.block(x, y, w, h), image.pixels[y : y + h, x : x + w])
    finally:
        ahead.close()
    assert image.calls == [(0, 0, 160, 80), (200, 100, 50, 90)]


def test_a_store_made_with_another_chunk_size_is_resumed_in_its_own(slide_path, model, tmp_path, capsys):
    """Stores made before the default chunk changed (64 -> 128 cells) stay resumable: a run that
    does not choose a chunk size adopts the store's own; choosing one, or --force, does not."""
    from viewer.heatmap.slide_run import DEFAULT_CHUNK, options_for_store
    from viewer.heatmap.store import HeatmapStore

    out = tmp_path / "old.zarr"
    region = (0, 0, 1600, 1200)
    slide = open_slide(slide_path)
    old = plan_slide_heatmap(slide, bundled_model_path(), SlideHeatmapOptions(region=region, chunk=64))
    store, _ = open_store_for(old, out)
    first = next(iter(run_to_store(old, model, store, interactive=False)))[0]
    assert 64 != DEFAULT_CHUNK and store.done_mask().sum() >= 1

    assert options_for_store(SlideHeatmapOptions(), out).chunk == 64
    assert options_for_store(SlideHeatmapOptions(chunk=32), out).chunk == 32  # the user's choice stands
    assert options_for_store(SlideHeatmapOptions(), out, force=True).chunk is None
    assert options_for_store(SlideHeatmapOptions(), tmp_path / "none.zarr").chunk is None

    args = ["heatmap", str(slide_path), "--out", str(out), "--region", ",".join(map(str, region))]
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
    resumed = HeatmapStore.open(out)
    assert resumed.chunk == 64 and resumed.done_mask().all() and resumed.attrs["complete"]
    np.testing.assert_array_equal(resumed.read(slice(None), slice(None)), compute_slide_array(old, model))
    assert first is not None
    slide.close()

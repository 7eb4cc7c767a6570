"""viewer.heatmap: geometry, tile plans, the exact fully convolutional engine vs. the naive
sliding window, the window fallback, cancellation, and heatmap files. No Qt here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viewer import heatmap as hm
from viewer.errors import InputError, OutputError
from viewer.model import build_convnet, bundled_model_path, file_sha256, import_keras

TOL = 1e-4
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "brecahad-subset"


def spread_model(seed: int, image: np.ndarray, stride: int = 8):
    """A random Table-1 model whose last layer is rescaled so its outputs spread over (0, 1) on
    ``image``: with raw random weights every window scores ~0.5 and a comparison proves little."""
    model = build_convnet(seed=seed)
    p = hm.naive_heatmap(image, model, stride).ravel().astype(np.float64)
    logit = np.log(p / (1 - p))
    kernel, bias = model.layers[-1].get_weights()
    k = 2.5 / max(logit.std(), 1e-6)
    model.layers[-1].set_weights([kernel * k, bias * k - logit.mean() * k])
    return model


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocky random texture plus noise: varied enough to give varied probabilities."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3))
    img = np.kron(blocks, np.ones((6, 6, 1)))[:height, :width] + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image():
    return textured_image(100, 120, seed=1)


@pytest.fixture(scope="module")
def model(image):
    return spread_model(11, image)


_NAIVE: dict = {}


def naive(image, model, stride):
    key = (id(image), id(model), stride)
    if key not in _NAIVE:
        _NAIVE[key] = hm.naive_heatmap(image, model, stride)
    return _NAIVE[key]


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def test_heatmap_shape_matches_the_documented_formula():
    assert hm.heatmap_shape(1024, 1360, 8) == (125, 167)
    assert hm.heatmap_shape(1024, 1360, 4) == (249, 333)
    assert hm.heatmap_shape(32, 32, 8) == (1, 1)
    assert hm.heatmap_shape(39, 40, 8) == (1, 2)
    assert hm.heatmap_shape(31, 100, 8) == (0, 9)
    with pytest.raises(ValueError):
        hm.heatmap_shape(100, 100, 0)


def test_cell_centre_window_origin_and_draw_rect():
    assert hm.cell_centre(0, 0, 8) == (16, 16)
    assert hm.cell_centre(2, 3, 8) == (8 * 3 + 16, 8 * 2 + 16)
    assert hm.window_origin(2, 3, 8) == (24, 16)
    assert hm.heatmap_rect(125, 167, 8) == (12.0, 12.0, 167 * 8.0, 125 * 8.0)
    assert hm.heatmap_rect(10, 10, 7) == (12.5, 12.5, 70.0, 70.0)
    # Each cell's drawn square is centred on its window centre.
    x, y, w, h = hm.heatmap_rect(125, 167, 8)
    r, c = 7, 11
    assert (x + 8 * c + 4, y + 8 * r + 4) == hm.cell_centre(r, c, 8)


@pytest.mark.parametrize("stride", [4, 7, 8, 16])
def test_pixel_to_cell_agrees_with_draw_squares(stride):
    shape = hm.heatmap_shape(100, 120, stride)
    for r, c in [(0, 0), (shape[0] - 1, shape[1] - 1), (1, 2)]:
        cx, cy = hm.cell_centre(r, c, stride)
        assert hm.pixel_to_cell(cx, cy, shape, stride) == (r, c)
        assert hm.pixel_to_cell(cx + stride / 2 - 0.01, cy - stride / 2, shape, stride) == (r, c)
    assert hm.pixel_to_cell(0, 0, shape, stride) is None
    assert hm.pixel_to_cell(float("nan"), 3, shape, stride) is None
    rows_of = hm.pixel_cell_index(100, shape[0], stride)
    assert (rows_of >= -1).all()
    for r in range(shape[0]):
        pixels = np.flatnonzero(rows_of == r)
        assert len(pixels) == stride  # every cell is exactly stride pixels tall
        assert abs((pixels[0] + pixels[-1] + 1) / 2 - hm.cell_centre(r, 0, stride)[1]) <= 0.5


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def _coverage(plan):
    seen = np.zeros(plan.shape, dtype=np.int32)
    for rows, cols in plan.tiles:
        assert rows.stop > rows.start and cols.stop > cols.start
        seen[rows, cols] += 1
    return seen


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(32, 700),
    width=st.integers(32, 700),
    stride=st.integers(1, 20),
    tile=st.one_of(st.none(), st.integers(1, 40), st.tuples(st.integers(1, 40), st.integers(1, 40))),
    centre=st.one_of(st.none(), st.tuples(st.floats(-100, 800), st.floats(-100, 800))),
)
def test_plan_covers_every_cell_exactly_once(height, width, stride, tile, centre):
    plan = hm.plan_heatmap(height, width, stride, tile_cells=tile, order_from=centre)
    assert plan.shape == hm.heatmap_shape(height, width, stride)
    assert (_coverage(plan) == 1).all()
    assert len(plan) == len(plan.tiles) == len(set((r.start, c.start) for r, c in plan.tiles))


def test_plan_orders_tiles_outward_from_a_point():
    point = (700.0, 300.0)
    plan = hm.plan_heatmap(1024, 1360, 8, tile_cells=16, order_from=point)
    distances = [math.dist(plan.tile_centre(i), point) for i in range(len(plan))]
    assert distances == sorted(distances)
    rows, cols = plan.tiles[0]
    cell = hm.pixel_to_cell(*point, plan.shape, 8)
    assert rows.start <= cell[0] < rows.stop and cols.start <= cell[1] < cols.stop
    raster = hm.plan_heatmap(1024, 1360, 8, tile_cells=16)
    assert [(r.start, c.start) for r, c in raster.tiles] == sorted((r.start, c.start) for r, c in raster.tiles)


def test_default_plan_uses_bulk_tiles_with_little_padding():
    plan = hm.plan_heatmap(1024, 1360, 8)
    assert (plan.tile_rows, plan.tile_cols) == (125, 167) and len(plan) == 1  # a BreCaHAD field: one call
    assert hm.bulk_tile_cells(8) == (128, 176) and hm.tile_quantum(8) == 8
    streamed = hm.plan_heatmap(1024, 1360, 8, streamed=True)  # less memory per call
    assert (streamed.tile_rows, streamed.tile_cols) == (64, 96) == hm.bulk_tile_cells(8, streamed=True)
    large = hm.plan_heatmap(3000, 4100, 8)  # several bulk tiles, balanced
    assert len(large) == 9 and (large.tile_rows, large.tile_cols) <= hm.bulk_tile_cells(8)
    for each in (plan, large):
        for rows, cols in each.tiles:
            padded = each.padded_shape(rows, cols)
            assert padded[0] % 8 == 0 and padded[1] % 8 == 0
            assert rows.stop - rows.start <= padded[0] < rows.stop - rows.start + 8
            assert cols.stop - cols.start <= padded[1] < cols.stop - cols.start + 8
        assert each.padded_cells() <= 1.04 * each.cells  # edge tiles padded to 8 cells, not to a bulk tile


def test_interactive_plan_starts_with_a_small_tile_at_the_point():
    point = (700.0, 300.0)
    plan = hm.plan_heatmap(1024, 1360, 8, order_from=point)
    assert (_coverage(plan) == 1).all()
    rows, cols = plan.tiles[0]
    assert rows.stop - rows.start == cols.stop - cols.start == hm.default_tile_cells(8) == 32
    cell = hm.pixel_to_cell(*point, plan.shape, 8)
    assert rows.start <= cell[0] < rows.stop and cols.start <= cell[1] < cols.stop
    rest = [math.dist(plan.tile_centre(i), point) for i in range(1, len(plan))]
    assert rest == sorted(rest)
    assert max(r.stop - r.start for r, _ in plan.tiles[1:]) > 32  # the rest in bulk tiles
    corner = hm.plan_heatmap(1024, 1360, 8, order_from=(-50.0, 5000.0))  # clamped into the image
    assert corner.tiles[0] == (slice(93, 125), slice(0, 32)) and (_coverage(corner) == 1).all()


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(32, 3000),
    width=st.integers(32, 3000),
    stride=st.sampled_from([4, 8, 12, 16, 32]),
    centre=st.one_of(st.none(), st.tuples(st.floats(-100, 3100), st.floats(-100, 3100))),
    streamed=st.booleans(),
)
def test_adaptive_plans_use_a_few_fixed_shapes(height, width, stride, centre, streamed):
    """Retracing and kernel set-up stay bounded: every padded tile shape is a multiple of the
    quantum no larger than a bulk tile, whatever the image size."""
    plan = hm.plan_heatmap(height, width, stride, order_from=centre, streamed=streamed)
    assert (_coverage(plan) == 1).all()
    q, big = hm.tile_quantum(stride), hm.bulk_tile_cells(stride, streamed=streamed)
    assert plan.quantum == (q, q)
    for rows, cols in plan.tiles:
        padded = plan.padded_shape(rows, cols)
        assert all(side % q == 0 and 0 < side <= most for side, most in zip(padded, big))
        assert padded[0] - (rows.stop - rows.start) < q and padded[1] - (cols.stop - cols.start) < q


# --------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [4, 8, 12, 16])
@pytest.mark.parametrize("tile_cells", [None, 1, 5, (3, 7)])
def test_exact_engine_matches_naive_sliding_window(image, model, stride, tile_cells):
    assert hm.heatmap_method(model, stride) == hm.METHOD_EXACT
    ref = naive(image, model, stride)
    assert ref.std() > 0.1  # the comparison means something
    got = hm.compute_heatmap(image, model, stride, tile_cells=tile_cells)
    assert got.dtype == np.float32 and got.shape == ref.shape == hm.heatmap_shape(*image.shape[:2], stride)
    assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (71, 58)])
def test_exact_engine_on_odd_image_sizes(model, size):
    img = textured_image(*size, seed=5)
    for stride in (4, 8):
        ref = hm.naive_heatmap(img, model, stride)
        got = hm.compute_heatmap(img, model, stride, tile_cells=3)
        assert np.abs(got - ref).max() <= TOL


@pytest.mark.parametrize("stride", [6, 7])
def test_other_strides_fall_back_to_windows_with_the_same_numbers(image, model, stride):
    assert hm.heatmap_method(model, stride) == hm.METHOD_WINDOWS
    ref = naive(image, model, stride)
    for tile_cells in (None, 4):
        got = hm.compute_heatmap(image, model, stride, tile_cells=tile_cells)
        assert np.abs(got - ref).max() <= TOL
    with pytest.raises(ValueError, match="fully convolutional"):
        hm.compute_heatmap(image, model, stride, method=hm.METHOD_EXACT)


def test_forced_window_method_agrees_with_exact(image, model):
    exact = hm.compute_heatmap(image, model, 8, method=hm.METHOD_EXACT)
    windows = hm.compute_heatmap(image, model, 8, method=hm.METHOD_WINDOWS, tile_cells=(4, 9))
    assert np.abs(exact - windows).max() <= TOL


def test_other_table_like_architectures_are_exact_too(image):
    keras = import_keras()
    L = keras.layers
    other = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Conv2D(8, 5, activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(12, 3, activation="tanh"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(16, activation="relu"),
            L.Dropout(0.3),
            L.Dense(8, activation="elu"),
            L.Dense(1, activation="sigmoid"),
        ]
    )
    kernel, bias = other.layers[-1].get_weights()
    other.layers[-1].set_weights([kernel * 30, bias])
    assert hm.heatmap_method(other, 8) == hm.METHOD_EXACT
    ref = hm.naive_heatmap(image, other, 8)
    assert np.abs(hm.compute_heatmap(image, other, 8, tile_cells=4) - ref).max() <= TOL


def test_unsupported_models_fall_back(image):
    keras = import_keras()
    L = keras.layers
    other = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            L.Conv2D(4, 3, padding="same", activation="relu"),
            L.BatchNormalization(),
            L.AveragePooling2D(4),
            L.Flatten(),
            L.Dense(1, activation="sigmoid"),
        ]
    )
    assert hm.heatmap_method(other, 8) == hm.METHOD_WINDOWS
    ref = hm.naive_heatmap(image, other, 8)
    assert np.abs(hm.compute_heatmap(image, other, 8, tile_cells=4) - ref).max() <= TOL


def test_changed_weights_are_picked_up(image):
    m = build_convnet(seed=2)
    first = hm.compute_heatmap(image, m, 8)
    kernel, bias = m.layers[-1].get_weights()
    m.layers[-1].set_weights([kernel * 50, bias + 0.3])
    second = hm.compute_heatmap(image, m, 8)
    assert np.abs(second - hm.naive_heatmap(image, m, 8)).max() <= TOL
    assert np.abs(second - first).max() > 1e-3


def test_iter_tiles_fill_the_heatmap_in_outward_order(image, model):
    ref = naive(image, model, 4)
    plan = hm.plan_heatmap(100, 120, 4, tile_cells=5, order_from=(90, 70))
    out = hm.blank_heatmap(100, 120, 4)
    tiles = list(hm.iter_heatmap_tiles(image, model, 4, plan=plan))
    assert len(tiles) == len(plan)
    for tile, (rows, cols) in zip(tiles, plan.tiles):
        assert (tile.rows, tile.cols) == (rows, cols)
        assert tile.probabilities.shape == (rows.stop - rows.start, cols.stop - cols.start)
        assert tile.probabilities.dtype == np.float32
        assert np.isnan(out[rows, cols]).all()  # never the same cell twice
        out[rows, cols] = tile.probabilities
    assert np.abs(out - ref).max() <= TOL
    with pytest.raises(ValueError, match="plan"):
        hm.iter_heatmap_tiles(image, model, 8, plan=plan)


@pytest.mark.parametrize("stride", [4, 8, 12, 16])
def test_interactive_plans_are_exact(image, model, stride):
    ref = naive(image, model, stride)
    plan = hm.plan_heatmap(100, 120, stride, order_from=(70.0, 40.0))
    out = hm.blank_heatmap(100, 120, stride)
    for rows, cols, values in hm.iter_heatmap_tiles(image, model, stride, plan=plan):
        assert np.isnan(out[rows, cols]).all()
        out[rows, cols] = values
    assert np.abs(out - ref).max() <= TOL


def test_large_image_bulk_tiles_are_exact_at_their_edges(model):
    """An image larger than one bulk tile in both directions: tiles meet inside the image and
    the padded edge tiles are cut correctly."""
    img = textured_image(1100, 1700, seed=9)
    for stride in (8, 16):
        plan = hm.plan_heatmap(1100, 1700, stride)
        assert len({r.start for r, _ in plan.tiles}) > 1 and len({c.start for _, c in plan.tiles}) > 1
        got = hm.compute_heatmap(img, model, stride)
        rows, cols = got.shape
        rng = np.random.default_rng(stride)
        cells = {(r, c) for r in (0, rows - 1, plan.tile_rows - 1, plan.tile_rows) for c in range(0, cols, 3)}
        cells |= {(r, c) for c in (plan.tile_cols - 1, plan.tile_cols) for r in range(0, rows, 3)}
        cells |= {(int(r), int(c)) for r, c in zip(rng.integers(0, rows, 200), rng.integers(0, cols, 200))}
        cells = sorted(cells)
        windows = np.stack([img[stride * r : stride * r + 32, stride * c : stride * c + 32] for r, c in cells])
        expected = model.predict(windows.astype(np.float32) / 255, batch_size=256, verbose=0).reshape(-1)
        assert np.abs(np.array([got[r, c] for r, c in cells]) - expected).max() <= TOL


def test_results_do_not_depend_on_the_tiling(image, model):
    """Blocks padded to multiples of 4 cells give every cell the same bits whatever the tile, so a
    resumed slide store (chunks grouped differently) equals an uninterrupted run."""
    whole = hm.compute_heatmap(image, model, 8)
    for tiles in (4, (8, 12), 16):
        np.testing.assert_array_equal(hm.compute_heatmap(image, model, 8, tile_cells=tiles), whole)


# --------------------------------------------------------------------------------------------
# Slide runs: blocks of chunks per engine call
# --------------------------------------------------------------------------------------------


def _field_plan(pixels, chunk):
    from viewer.heatmap.slide_run import SlideHeatmapOptions, plan_slide_heatmap
    from viewer.slide.plain import PlainSlide

    return plan_slide_heatmap(PlainSlide("field.tif", pixels), None, SlideHeatmapOptions(chunk=chunk, tissue_mask=False))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), interactive=st.booleans(), fraction=st.floats(0.05, 1.0))
def test_engine_tiles_cover_the_given_chunks_exactly(seed, interactive, fraction):
    from viewer.heatmap.slide_run import engine_tiles, group_side

    plan = _field_plan(np.zeros((2500, 3100, 3), np.uint8), 16)  # 309 x 384 cells, 20 x 24 chunks
    rng = np.random.default_rng(seed)
    n_r, n_c = plan.chunk_grid
    chunks = [(i, j) for i in range(n_r) for j in range(n_c) if rng.random() < fraction]
    rng.shuffle(chunks)
    chunks = [tuple(map(int, ij)) for ij in chunks] or [(0, 0)]
    groups = engine_tiles(plan, chunks, interactive=interactive)
    side = group_side(plan)
    assert side == (8, 12)  # 64 x 96-cell bulk tiles of 16-cell chunks, blocks of >= 1024 px
    covered = [ij for _, members in groups for ij in members]
    assert sorted(covered) == sorted(chunks)  # every chunk once, nothing else
    if interactive:
        assert groups[0][1] == [chunks[0]]
    for (rows, cols), members in groups:
        mask = np.zeros(plan.shape, bool)
        for i, j in members:
            mask[plan.chunk_slices(i, j)] = True
        assert mask[rows, cols].all() and mask.sum() == (rows.stop - rows.start) * (cols.stop - cols.start)
        assert rows.stop - rows.start <= side[0] * plan.chunk and cols.stop - cols.start <= side[1] * plan.chunk


def test_slide_runs_split_engine_tiles_into_chunks_exactly(model):
    from viewer.heatmap.slide_run import chunks_in_order, iter_slide_heatmap

    pixels = textured_image(700, 900, seed=4)
    whole = hm.compute_heatmap(pixels, model, 8)
    plan = _field_plan(pixels, 16)
    for interactive, order in ((True, (500.0, 300.0)), (False, None)):
        out = hm.blank_heatmap(700, 900, 8)
        seen = []
        chunks = chunks_in_order(plan, order)
        for (i, j), tile in iter_slide_heatmap(plan, model, chunks, interactive=interactive):
            assert (tile.rows, tile.cols) == plan.chunk_slices(i, j)  # chunk-aligned, for the store
            assert np.isnan(out[tile.rows, tile.cols]).all()
            out[tile.rows, tile.cols] = tile.probabilities
            seen.append((i, j))
        assert sorted(seen) == sorted(chunks)
        if interactive:
            assert seen[0] == chunks[0]  # the chunk nearest the point comes first, alone
        np.testing.assert_array_equal(out, whole)


def test_tissue_tiles_cover_the_tissue_and_skip_glass_at_an_edge():
    from viewer.heatmap.slide_run import tissue_tiles

    assert tissue_tiles(8, np.ones((64, 96), bool), 64, 128) == [(slice(64, 128), slice(128, 224))]  # one bulk tile
    assert tissue_tiles(8, np.ones((128, 192), bool)) == [  # inside tissue: whole bulk tiles
        (slice(0, 64), slice(0, 96)), (slice(0, 64), slice(96, 192)),
        (slice(64, 128), slice(0, 96)), (slice(64, 128), slice(96, 192)),
    ]
    rows, cols = np.mgrid[0:64, 0:96]
    diagonal = rows + cols < 96  # a tissue edge across a bulk tile
    tiles = tissue_tiles(8, diagonal)
    covered = np.zeros((64, 96), int)
    for r, c in tiles:
        covered[r, c] += 1
    assert covered.max() == 1 and covered[diagonal].min() == 1  # every tissue cell exactly once
    assert 1 < len(tiles) and covered.sum() < 0.85 * 64 * 96  # less glass than the bounding box
    assert tissue_tiles(8, diagonal, split=False) == [(slice(0, 64), slice(0, 96))]
    assert tissue_tiles(8, np.zeros((64, 64), bool)) == []


@settings(max_examples=60, deadline=None)
@given(
    stride=st.sampled_from([4, 8, 12, 16, 32]),
    shape=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    seed=st.integers(0, 10_000),
    density=st.floats(0.0, 1.0),
)
def test_tissue_tiles_cover_any_mask_once_within_bulk_tiles(stride, shape, seed, density):
    from viewer.heatmap.slide_run import tissue_tiles

    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0] // 8 + 1, shape[1] // 8 + 1)) < density  # blobs, not salt and pepper
    keep = np.kron(coarse, np.ones((8, 8), bool))[: shape[0], : shape[1]]
    keep &= rng.random(shape) < 0.97
    tiles = tissue_tiles(stride, keep, 5, 7)
    covered = np.zeros(shape, int)
    big = hm.bulk_tile_cells(stride, streamed=True)
    for r, c in tiles:
        covered[r.start - 5 : r.stop - 5, c.start - 7 : c.stop - 7] += 1
        assert r.stop - r.start <= big[0] and c.stop - c.start <= big[1]
    assert covered.max(initial=0) <= 1 and (covered[keep] == 1).all()


def test_slide_runs_with_a_tissue_mask_equal_the_engine_on_tissue(model):
    """A field half glass, half tissue along a diagonal: cells computed through tissue-trimmed
    engine tiles equal the plain engine bit for bit; glass cells are NaN."""
    from viewer.heatmap.slide_run import SlideHeatmapOptions, chunks_in_order, iter_slide_heatmap, plan_slide_heatmap
    from viewer.slide.plain import PlainSlide

    pixels = textured_image(2400, 3000, seed=6)  # glass regions under 0.1 mm² would count as tissue
    yy, xx = np.mgrid[0:2400, 0:3000]
    glass = xx + 1.3 * yy > 3000
    pixels[glass] = np.clip(np.random.default_rng(1).normal(242, 2, (int(glass.sum()), 3)), 0, 255).astype(np.uint8)
    plan = plan_slide_heatmap(PlainSlide("half.tif", pixels), None, SlideHeatmapOptions(chunk=16, tissue_mask=True))
    assert plan.tissue is not None and 0.2 < plan.tissue.fraction < 0.8
    whole = hm.compute_heatmap(pixels, model, 8)
    out = hm.blank_heatmap(2400, 3000, 8)
    for _ij, tile in iter_slide_heatmap(plan, model, chunks_in_order(plan, (800.0, 600.0))):
        out[tile.rows, tile.cols] = tile.probabilities
    keep = plan.evaluated_cells(slice(0, whole.shape[0]), slice(0, whole.shape[1]))
    assert keep.any() and not keep.all()
    np.testing.assert_array_equal(out[keep], whole[keep])
    assert np.isnan(out[~keep]).all()


# --------------------------------------------------------------------------------------------
# Geometry end to end: a dark blob and a model that responds to darkness
# --------------------------------------------------------------------------------------------


def darkness_model():
    """Table-1 model with hand-set weights: the output peaks when a dark spot sits at the
    centre of the 32x32 window (conv1 channel 0 = darkness, passed through, then a centred
    Gaussian weighting of the 6x6 pooled grid)."""
    m = build_convnet(seed=0)
    conv1, conv2, conv3 = (layer for layer in m.layers if type(layer).__name__ == "Conv2D")
    dense64, dense1 = (layer for layer in m.layers if type(layer).__name__ == "Dense")
    k1 = np.zeros((3, 3, 3, 32), np.float32)
    k1[..., 0] = -1.0 / 27
    b1 = np.zeros(32, np.float32)
    b1[0] = 1.0
    conv1.set_weights([k1, b1])
    k2 = np.zeros((2, 2, 32, 32), np.float32)
    k2[0, 0, 0, 0] = 1.0
    conv2.set_weights([k2, np.zeros(32, np.float32)])
    k3 = np.zeros((3, 3, 32, 64), np.float32)
    k3[1, 1, 0, 0] = 1.0
    conv3.set_weights([k3, np.zeros(64, np.float32)])
    i = np.arange(6) - 2.5
    gauss = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / 2.0)
    k4 = np.zeros((6, 6, 64, 64), np.float32)
    k4[:, :, 0, 0] = gauss - gauss.mean()
    dense64.set_weights([k4.reshape(2304, 64), np.zeros(64, np.float32)])
    k5 = np.zeros((64, 1), np.float32)
    k5[0, 0] = 4.0
    dense1.set_weights([k5, np.array([-2.0], np.float32)])
    return m


@pytest.mark.parametrize("stride, tile_cells", [(8, None), (8, 2), (4, 3), (16, 1)])
def test_dark_blob_peaks_at_its_cell(stride, tile_cells):
    m = darkness_model()
    height, width = 100, 120
    yy, xx = np.mgrid[0:height, 0:width]
    for bx, by in [(61.0, 47.0), (30.5, 70.5), (95.0, 20.0)]:
        img = np.full((height, width, 3), 235, np.uint8)
        img[(xx + 0.5 - bx) ** 2 + (yy + 0.5 - by) ** 2 <= 25] = 30
        heat = hm.compute_heatmap(img, m, stride, tile_cells=tile_cells)
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        x, y = hm.cell_centre(r, c, stride)
        assert math.hypot(x - bx, y - by) <= 8, (stride, (bx, by), (x, y))
        assert heat.max() > heat.min() + 0.2


# --------------------------------------------------------------------------------------------
# Cancellation and laziness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [hm.METHOD_EXACT, hm.METHOD_WINDOWS])
def test_stopping_iteration_stops_all_work(image, model, method):
    threads_before = threading.active_count()
    calls_before = hm._STATS["calls"]
    tiles = hm.iter_heatmap_tiles(image, model, 8, tile_cells=2, method=method)
    assert hm._STATS["calls"] == calls_before  # nothing computed before the first next()
    plan = hm.plan_heatmap(100, 120, 8, tile_cells=2)
    assert len(plan) > 10
    next(tiles)
    next(tiles)
    tiles.close()
    after_close = dict(hm._STATS)
    time.sleep(0.3)
    assert hm._STATS == after_close  # no background work continued
    assert hm._STATS["calls"] - calls_before <= 2
    assert threading.active_count() <= threads_before
    with pytest.raises(StopIteration):
        next(tiles)


# --------------------------------------------------------------------------------------------
# Input checks, warm-up, import cost
# --------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match="uint8"):
        hm.compute_heatmap(np.zeros((40, 40, 3), np.float32), model)
    with pytest.raises(ValueError, match="RGB"):
        hm.compute_heatmap(np.zeros((40, 40), np.uint8), model)
    with pytest.raises(InputError, match="at least 32x32"):
        hm.compute_heatmap(np.zeros((20, 40, 3), np.uint8), model)
    with pytest.raises(ValueError, match="stride"):
        hm.compute_heatmap(np.zeros((40, 40, 3), np.uint8), model, stride=0)
    with pytest.raises(ValueError, match="method"):
        hm.compute_heatmap(np.zeros((40, 40, 3), np.uint8), model, method="fast")


def test_warm_up_traces_the_engine_and_computes_its_first_tiles():
    from viewer.heatmap import engine

    model = build_convnet(seed=3)  # a model no other test has warmed
    assert model not in engine._ENGINES
    tiles = hm._STATS["tiles"]
    hm.warm_up(model, 8)
    engines = engine._ENGINES[model]
    assert (8, "float32") in engines.exact and hm._STATS["tiles"] == tiles + 1  # one interactive tile
    traced = engines.exact[(8, "float32")]
    tiles = hm._STATS["tiles"]
    hm.warm_up(model, 8, (300, 400))  # the bulk plan's tile shapes, plus the interactive one
    assert hm._STATS["tiles"] > tiles and engines.exact[(8, "float32")] is traced  # traced once, reused
    assert engines.windows is None
    hm.warm_up(model, 6)  # a stride off the pooling grid: the batched-window engine is traced
    assert engines.windows is not None


def test_importing_the_core_loads_no_tensorflow_keras_or_qt():
    code = (
        "import sys, viewer.heatmap, viewer.overlay, viewer.colormaps;"
        "bad = [m for m in ('tensorflow', 'keras', 'PySide6', 'pyqtgraph', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# Heatmap files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fmt", [("heat.npy", None), ("heat.tif", None), ("heat.tiff", "tiff"), ("heat.npy", "npy")])
def test_save_heatmap_round_trip_with_sidecar(tmp_path, name, fmt):
    model_path = tmp_path / "m.bin"
    model_path.write_bytes(b"model bytes")
    heat = np.random.default_rng(0).random(hm.heatmap_shape(100, 120, 8)).astype(np.float32)
    heat[0, 0] = np.nan
    array_path, side = hm.save_heatmap(heat, tmp_path / name, stride=8, image_shape=(100, 120, 3), model_path=model_path, fmt=fmt)
    assert side == tmp_path / "heat.json"
    loaded, meta = hm.load_heatmap(array_path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, heat)
    assert meta["geometry"]["patch_size"] == 32 and meta["geometry"]["stride"] == 8
    assert meta["geometry"]["window_centre_offset"] == 16
    assert meta["image"] == {"width": 120, "height": 100, "file": None}
    assert meta["shape"] == list(heat.shape)
    assert meta["model"]["sha256"] == file_sha256(model_path)
    assert meta["complete"] is False
    assert "program_version" in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.bin", name, "heat.json"])  # no temp files left


def test_save_heatmap_refuses_overwrite_and_bad_names(tmp_path):
    heat = np.zeros(hm.heatmap_shape(40, 40, 8), np.float32)
    kwargs = dict(stride=8, image_shape=(40, 40), model_path=None)
    hm.save_heatmap(heat, tmp_path / "h.npy", **kwargs)
    with pytest.raises(OutputError, match="already exists"):
        hm.save_heatmap(heat, tmp_path / "h.npy", **kwargs)
    (tmp_path / "h2.json").write_text("{}")
    with pytest.raises(OutputError, match="h2.json"):  # the sidecar would be overwritten
        hm.save_heatmap(heat, tmp_path / "h2.npy", **kwargs)
    assert not (tmp_path / "h2.npy").exists()
    hm.save_heatmap(heat + 1, tmp_path / "h.npy", force=True, **kwargs)
    assert np.load(tmp_path / "h.npy").max() == 1
    assert json.loads((tmp_path / "h.json").read_text())["model"]["sha256"] is None
    with pytest.raises(OutputError, match="format"):
        hm.save_heatmap(heat, tmp_path / "x.npy", fmt="tiff", **kwargs)
    with pytest.raises(OutputError, match="file type"):
        hm.save_heatmap(heat, tmp_path / "x.png", **kwargs)
    with pytest.raises(ValueError, match="does not match"):
        hm.save_heatmap(heat[:, :0], tmp_path / "y.npy", **kwargs)


# --------------------------------------------------------------------------------------------
# The bundled model (skips until it exists) on a real image
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not bundled_model_path().is_file(), reason="bundled model resources/convnet_brecahad.keras not present")
def test_bundled_model_full_image_is_exact():
    """The one full-size test: a 1360x1024 image (real when available) through the bundled model;
    every edge cell and 400 random cells are checked against model.predict on their windows."""
    from viewer.model import load_model

    images = sorted((SHARED_DATA / "images").glob("*.tif")) if (SHARED_DATA / "images").is_dir() else []
    if images:
        from viewer.slide import open_slide

        img = open_slide(images[0]).read_all()
    else:
        img = textured_image(1024, 1360, seed=3)
    m = load_model()
    heat = hm.compute_heatmap(img, m, 8)
    rows, cols = heat.shape
    rng = np.random.default_rng(0)
    cells = {(r, c) for r in (0, rows - 1) for c in range(cols)} | {(r, c) for c in (0, cols - 1) for r in range(rows)}
    cells |= {(int(r), int(c)) for r, c in zip(rng.integers(0, rows, 400), rng.integers(0, cols, 400))}
    cells = sorted(cells)
    windows = np.stack([img[8 * r : 8 * r + 32, 8 * c : 8 * c + 32] for r, c in cells]).astype(np.float32) / 255
    expected = m.predict(windows, batch_size=256, verbose=0).reshape(-1)
    got = np.array([heat[r, c] for r, c in cells])
    assert np.abs(got - expected).max() <= TOL

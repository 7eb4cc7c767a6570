"""viewer.export.geojson and `histoviewer export-geojson`: QuPath GeoJSON structure, exact region
coverage (polygons = thresholded cell squares), holes, corner-touching parts, tiles, blocks,
stores. Array heatmaps only, no TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from viewer.cli import main
from viewer.export import geojson as gj
from viewer.heatmap import save_heatmap
from viewer.heatmap.analysis import AnalysisGrid
from viewer.heatmap.data import ArrayHeatmap


def heatmap_of(mask_or_values, stride=8, origin=(0, 0), scale=1.0):
    values = np.asarray(mask_or_values)
    if values.dtype == bool:
        values = np.where(values, 0.9, 0.1)
    rows, cols = values.shape
    grid = AnalysisGrid(origin, scale, (cols - 1) * stride + 32, (rows - 1) * stride + 32, stride)
    return ArrayHeatmap(values.astype(np.float32), grid)


def ring_area(ring):
    a = np.asarray(ring[:-1], dtype=float)
    x, y = a[:, 0], a[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def inside(point, ring):
    """Even-odd rule (the point is never on an edge in these tests)."""
    a = np.asarray(ring[:-1], dtype=float)
    b = np.roll(a, -1, axis=0)
    px, py = point
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
    x_at = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
    return bool(np.count_nonzero(crosses & (px < x_at)) % 2)


def polygons_of(geometry):
    assert geometry["type"] in ("Polygon", "MultiPolygon")
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def check_valid(geometry, bounds):
    """Closed, simple rings; outer rings counter-clockwise in x-right/y-down numbers, holes the
    other way; every position inside the slide."""
    for polygon in polygons_of(geometry):
        for k, ring in enumerate(polygon):
            assert ring[0] == ring[-1] and len(ring) >= 4
            assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1, "a ring visits a vertex twice"
            assert (ring_area(ring) > 0) == (k == 0)
            xy = np.asarray(ring, dtype=float)
            assert (xy >= 0).all() and (xy[:, 0] <= bounds[0]).all() and (xy[:, 1] <= bounds[1]).all()


def covered_cells(geometries, heatmap):
    """Which cells' centres the geometries cover, and how many times (each at most once)."""
    rows, cols = heatmap.shape
    hits = np.zeros((rows, cols), dtype=int)
    xs, ys = heatmap.grid.cell_centre_level0(np.arange(rows), np.arange(cols))
    for geometry in geometries:
        for polygon in polygons_of(geometry):
            for r in range(rows):
                for c in range(cols):
                    point = (xs[c] + 0.1, ys[r] + 0.2)  # off the lattice
                    if inside(point, polygon[0]) and not any(inside(point, hole) for hole in polygon[1:]):
                        hits[r, c] += 1
    return hits


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block", [1, 3, 1024])
def test_regions_cover_exactly_the_thresholded_cells(seed, block, monkeypatch):
    monkeypatch.setattr(gj, "BLOCK_CELLS", block)  # regions joined across block borders
    rng = np.random.default_rng(seed)
    values = rng.random(tuple(rng.integers(2, 18, 2)))
    values[rng.random(values.shape) < 0.1] = np.nan  # background is never tumour
    heatmap = heatmap_of(values)
    bounds = (heatmap.grid.width, heatmap.grid.height)
    geometries = gj.region_geometries(heatmap, 0.5, bounds)
    for geometry in geometries:
        check_valid(geometry, bounds)
    mask = np.nan_to_num(values, nan=0.0) >= 0.5
    np.testing.assert_array_equal(covered_cells(geometries, heatmap), mask.astype(int))
    # Area: the number of tumour cells times the cell square (8 x 8 level-0 px here).
    area = sum(ring_area(p[0]) + sum(ring_area(h) for h in p[1:]) for g in geometries for p in polygons_of(g))
    assert area == pytest.approx(mask.sum() * 64)


def test_hole_and_corner_touching_parts():
    mask = np.zeros((7, 9), bool)
    mask[1:6, 1:6] = True
    mask[2:5, 2:5] = False  # a ring of cells: one polygon with one hole
    mask[6, 6] = True  # touches the ring's corner cell (5, 5) only diagonally
    mask[3, 3] = True  # an island inside the hole
    heatmap = heatmap_of(mask)
    geometries = gj.region_geometries(heatmap, 0.5, (heatmap.grid.width, heatmap.grid.height))
    kinds = sorted(g["type"] for g in geometries)
    assert kinds == ["MultiPolygon", "Polygon"]
    multi = next(g for g in geometries if g["type"] == "MultiPolygon")
    parts = multi["coordinates"]
    assert len(parts) == 2 and sorted(len(p) for p in parts) == [1, 2]  # the ring has its hole
    ring_with_hole = next(p for p in parts if len(p) == 2)
    # Cell squares: stride 8 centred on 16 + 8c -> the outer ring spans 12 + 8*1 .. 12 + 8*6.
    xs = [x for x, _ in ring_with_hole[0]]
    assert min(xs) == 20 and max(xs) == 60
    assert ring_area(ring_with_hole[1]) == -9 * 64
    island = next(g for g in geometries if g["type"] == "Polygon")
    assert ring_area(island["coordinates"][0]) == 64


def test_origin_scale_odd_stride_and_clipping_to_the_slide():
    values = np.full((3, 4), 0.8, np.float32)
    heatmap = heatmap_of(values, stride=7, origin=(100, 40), scale=2.0)
    (geometry,) = gj.region_geometries(heatmap, 0.5, (10_000, 10_000))
    ring = geometry["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    # left edge: origin + (16 - 7/2) * scale = 100 + 25; a cell is 14 level-0 px wide
    assert min(xs) == 125 and max(xs) == 125 + 4 * 14
    assert min(ys) == 65 and max(ys) == 65 + 3 * 14
    # A slide smaller than the squares: positions are clipped to it, rings stay closed.
    (clipped,) = gj.region_geometries(heatmap, 0.5, (150, 80))
    check_valid(clipped, (150, 80))
    assert max(p[0] for p in clipped["coordinates"][0]) == 150


def test_nothing_above_threshold_gives_no_regions():
    assert gj.region_geometries(heatmap_of(np.full((4, 4), 0.2)), 0.5, (100, 100)) == []
    assert gj.region_geometries(heatmap_of(np.full((4, 4), np.nan)), 0.0, (100, 100)) == []


def test_tiles_average_the_cells_whose_centres_fall_inside(monkeypatch):
    monkeypatch.setattr(gj, "BLOCK_CELLS", 2)  # several blocks of tiles
    rng = np.random.default_rng(3)
    values = rng.random((10, 13)).astype(np.float32)
    values[:, :3] = np.nan  # an all-background tile column is skipped
    heatmap = heatmap_of(values)
    size = 24  # three cells of 8 px per tile side
    bounds = (heatmap.grid.width, heatmap.grid.height)
    tiles = list(gj.tile_features(heatmap, size, bounds, 0.5))
    xs, ys = heatmap.grid.cell_centre_level0(np.arange(10), np.arange(13))
    expected = {}
    for r in range(10):
        for c in range(13):
            if np.isfinite(values[r, c]):
                expected.setdefault((int(xs[c] // size), int(ys[r] // size)), []).append(values[r, c])
    assert len(tiles) == len(expected)
    for tile in tiles:
        assert tile["properties"]["objectType"] == "detection"
        (ring,) = tile["geometry"]["coordinates"]
        x0, y0 = ring[0]
        assert ring[0] == ring[-1] and x0 % size == 0 and y0 % size == 0
        assert all(p[0] <= bounds[0] and p[1] <= bounds[1] for p in ring)
        mean = float(np.mean(expected[(x0 // size, y0 // size)]))
        assert tile["properties"]["measurements"]["tumour probability"] == pytest.approx(mean, abs=1e-6)
        assert ("classification" in tile["properties"]) == (mean >= 0.5)


class CountingStore:
    """A HeatmapData that records the blocks read (a stand-in for a whole-slide store)."""

    def __init__(self, heatmap):
        self.inner, self.grid, self.reads = heatmap, heatmap.grid, []

    @property
    def shape(self):
        return self.inner.shape

    def read(self, rows, cols):
        self.reads.append((rows.stop - rows.start) * (cols.stop - cols.start))
        return self.inner.read(rows, cols)


def test_reads_are_bounded_blocks(monkeypatch):
    monkeypatch.setattr(gj, "BLOCK_CELLS", 16)
    values = np.random.default_rng(1).random((60, 70)).astype(np.float32)
    store = CountingStore(heatmap_of(values))
    whole = gj.region_geometries(heatmap_of(values), 0.5, (1000, 1000))
    assert gj.region_geometries(store, 0.5, (1000, 1000)) == whole
    assert max(store.reads) <= 17 * 17 and len(store.reads) > 1
    store.reads.clear()
    list(gj.tile_features(store, 64, (1000, 1000), 0.5))
    assert max(store.reads) <= 16 * 16


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def slide_and_heatmap(tmp_path):
    image = tmp_path / "slide.tif"
    tifffile.imwrite(image, np.full((200, 240, 3), 200, np.uint8), photometric="rgb")
    values = np.full((22, 27), 0.1, np.float32)
    values[5:12, 4:15] = 0.9
    values[8, 8] = 0.2  # a hole
    values[0, :] = np.nan
    heat = tmp_path / "h.npy"
    grid = AnalysisGrid((0, 0), 1.0, 240, 200, 8)
    save_heatmap(values, heat, stride=8, image_shape=(200, 240), model_path=None, analysis=grid.as_attrs())
    return image, heat, values


def test_command_writes_a_qupath_feature_collection(slide_and_heatmap, tmp_path, capsys):
    image, heat, values = slide_and_heatmap
    out = tmp_path / "regions.geojson"
    assert main(["export-geojson", str(image), "--heatmap", str(heat), "--out", str(out), "--cell-size", "64"]) == 0
    assert "1 tumour region" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection"
    annotations = [f for f in data["features"] if f["properties"]["objectType"] == "annotation"]
    detections = [f for f in data["features"] if f["properties"]["objectType"] == "detection"]
    assert len(annotations) == 1 and detections
    (region,) = annotations
    assert region["type"] == "Feature" and region["geometry"]["type"] == "Polygon"
    assert region["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    check_valid(region["geometry"], (240, 200))
    outer, hole = region["geometry"]["coordinates"]
    assert ring_area(outer) + ring_area(hole) == (7 * 11 - 1) * 64
    for tile in detections:
        assert set(tile["properties"]["measurements"]) == {"tumour probability"}
        check_valid(tile["geometry"], (240, 200))
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_command_refuses_bad_options_and_another_slides_heatmap(slide_and_heatmap, tmp_path, capsys):
    image, heat, _ = slide_and_heatmap
    out = tmp_path / "r.geojson"
    for extra, needle in ((["--threshold", "2"], "--threshold"), (["--cell-size", "0"], "--cell-size")):
        assert main(["export-geojson", str(image), "--heatmap", str(heat), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.full((100, 100, 3), 200, np.uint8), photometric="rgb")
    assert main(["export-geojson", str(small), "--heatmap", str(heat), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "h.npy" in err[0] and "another slide" in err[0]
    assert not out.exists()
    out.write_text("keep")
    assert main(["export-geojson", str(image), "--heatmap", str(heat), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep"


def test_command_reads_a_zarr_store(slide_and_heatmap, tmp_path, capsys):
    from viewer.heatmap.store import HeatmapStore, slide_attrs
    from viewer.slide import open_slide

    image, heat, values = slide_and_heatmap
    grid = AnalysisGrid((0, 0), 1.0, 240, 200, 8)
    store_path = tmp_path / "h.zarr"
    with open_slide(image) as slide:
        attrs = {**grid.as_attrs(), "model_sha256": None, "slide": slide_attrs(slide)}
    store, _ = HeatmapStore.open_or_create(store_path, shape=values.shape, attrs=attrs, chunk=8)
    for i in range(store.chunk_grid[0]):
        for j in range(store.chunk_grid[1]):
            rows, cols = store.chunk_slices(i, j)
            store.write_chunk(i, j, values[rows, cols])
    from_array, from_store = tmp_path / "a.geojson", tmp_path / "s.geojson"
    assert main(["export-geojson", str(image), "--heatmap", str(heat), "--out", str(from_array), "--cell-size", "50"]) == 0
    assert main(["export-geojson", str(image), "--heatmap", str(store_path), "--out", str(from_store), "--cell-size", "50"]) == 0
    assert json.loads(from_array.read_text()) == json.loads(from_store.read_text())

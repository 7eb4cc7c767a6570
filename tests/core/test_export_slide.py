"""Overlay exports at slide scale: the block renderer (equal to compose at downsample 1; pyramid
levels and area averaging; heatmap cells by their grid, nearest or smooth; markers at output
scale), the pyramidal TIFF writer, the PNG/JPEG size bound, and `histoviewer export` on a
synthetic pyramidal slide. Array heatmaps, no TensorFlow, except the one end-to-end test with
the bundled model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
from PIL import Image
from slide_factory import write_pyramidal_tiff

from viewer.annotations import class_colour
from viewer.cli import main
from viewer.colormaps import colormap_lut, colour_index
from viewer.errors import InputError, OutputError
from viewer.export import figure
from viewer.export.figure import ExportSettings, export_overlay
from viewer.export.render import OverlayRenderer, read_slide_block, render_array, render_overlay
from viewer.heatmap import heatmap_shape, save_heatmap
from viewer.heatmap.analysis import AnalysisGrid
from viewer.heatmap.data import ArrayHeatmap
from viewer.overlay import OutputFrame, OverlayStyle, compose, image_heatmap
from viewer.slide import open_slide
from viewer.slide.plain import PlainSlide

RED = "reds"


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blocky_image(h, w, block, seed=0):
    """Constant ``block`` x ``block`` squares: every average over whole sub-squares is exact."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-h // block), -(-w // block), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w])


def stitched(strips):
    return np.concatenate([strip for _, strip in strips])


# ------------------------------------------------------------------------ one renderer


@pytest.mark.parametrize("stride, smooth, rows", [(8, False, None), (7, False, 5), (16, True, 13), (4, True, 1)])
def test_renderer_at_downsample_1_equals_compose(stride, smooth, rows):
    h, w = 150, 190
    image = random_image(h, w)
    rng = np.random.default_rng(stride)
    heat = rng.random(heatmap_shape(h, w, stride)).astype(np.float32)
    heat[rng.random(heat.shape) < 0.2] = np.nan
    points = {"tumor": rng.uniform(0, 190, (25, 2)), "mitosis": rng.uniform(0, 150, (5, 2))}
    style = OverlayStyle(stride=stride, smooth=smooth, opacity=0.7, threshold=0.3, marker_radius=6)
    expected = compose(image, heat, points, style)
    slide = PlainSlide("img.tif", image)
    got = stitched(render_overlay(slide, image_heatmap(heat, w, h, stride), points, style, rows=rows))
    np.testing.assert_array_equal(got, expected)
    # ...and block by block, in blocks that cut cells and rings anywhere.
    renderer = OverlayRenderer.for_region(slide, image_heatmap(heat, w, h, stride), points, style)
    tiled = np.concatenate([np.concatenate([renderer.block(x, y, min(37, w - x), min(41, h - y))
                                            for x in range(0, w, 37)], axis=1) for y in range(0, h, 41)])
    np.testing.assert_array_equal(tiled, expected)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 3-level uncompressed pyramid whose lower levels are exact 2x2 averages of 12 px squares."""
    pixels = blocky_image(600, 720, 12, seed=3)
    path = write_pyramidal_tiff(tmp_path_factory.mktemp("slide") / "slide.tif", 720, 600, tile=128, levels=3,
                                compression=None, source=pixels, mpp=0.5)
    return path, pixels


def test_downsample_reads_the_level_and_averages_the_rest(pyramid):
    path, pixels = pyramid
    with open_slide(path) as slide:
        assert len(slide.levels) >= 3 and slide.levels[1].downsample == 2
        plain = OverlayStyle(show_heatmap=False, show_annotations=False)
        for d in (2, 4):  # a pyramid level: its pixels as stored
            got = render_array(OverlayRenderer.for_region(slide, None, None, plain, downsample=d))
            np.testing.assert_array_equal(got, tifffile.imread(path, level=d // 2))
        # d = 3 from level 1 (1.5 level pixels per output pixel) over constant squares: exact.
        got = render_array(OverlayRenderer.for_region(slide, None, None, plain, downsample=3))
        np.testing.assert_array_equal(got, pixels[1::3, 1::3])
        # a region at a downsample: output pixel (0, 0) starts at the region's corner
        got = render_array(OverlayRenderer.for_region(slide, None, None, plain, region=(120, 60, 240, 180), downsample=3))
        assert got.shape == (60, 80, 3)
        np.testing.assert_array_equal(got, pixels[60:240:3, 120:360:3])


def test_blocks_agree_at_a_fractional_downsample(pyramid):
    path, _ = pyramid
    with open_slide(path) as slide:
        frame = OutputFrame.for_region((13, 7, 650, 560), 2.7)
        whole = read_slide_block(slide, frame, (0, 0, *frame.size))
        w, h = frame.size
        for x, y, bw, bh in ((0, 0, 31, 17), (50, 33, 64, 64), (w - 9, h - 5, 9, 5)):
            np.testing.assert_array_equal(read_slide_block(slide, frame, (x, y, bw, bh)), whole[y : y + bh, x : x + bw])


def test_heatmap_cells_land_on_their_level0_squares_at_any_downsample():
    slide = PlainSlide("white.tif", np.full((300, 400, 3), 255, np.uint8))
    grid = AnalysisGrid((40, 24), 2.0, 120, 100, 8)  # 240 x 200 level-0 px analysed from (40, 24)
    values = np.full(grid.shape, np.nan, np.float32)
    values[2, 3] = 1.0  # square: x 40 + (12 + 24) * 2 = 112 .. 128, y 24 + (12 + 16) * 2 = 80 .. 96
    style = OverlayStyle(opacity=1.0, colormap=RED, show_annotations=False)
    out = render_array(OverlayRenderer.for_region(slide, ArrayHeatmap(values, grid), None, style, downsample=4))
    coloured = np.any(out != 255, axis=2)
    expected = np.zeros_like(coloured)
    expected[20:24, 28:32] = True  # output pixels whose centres (k + 0.5) * 4 fall in the square
    np.testing.assert_array_equal(coloured, expected)
    np.testing.assert_array_equal(out[21, 29], colormap_lut(RED)[255])


def test_smooth_interpolates_between_cell_centres_and_keeps_nan_transparent():
    purple = np.array([128, 0, 128], np.uint8)  # no grey of the colormap equals it
    slide = PlainSlide("purple.tif", np.tile(purple, (40, 56, 1)))
    grid = AnalysisGrid((0, 0), 1.0, 56, 40, 8)  # 2 x 4 cells, centres x = 16, 24, 32, 40
    values = np.array([[np.nan, 1.0, 0.5, 0.0]] * 2, np.float32)
    style = OverlayStyle(opacity=1.0, colormap="gray", show_annotations=False, smooth=True, threshold=0.0)
    heat = ArrayHeatmap(values, grid)
    smooth = render_array(OverlayRenderer.for_region(slide, heat, None, style))
    nearest = render_array(OverlayRenderer.for_region(slide, heat, None, dataclasses.replace(style, smooth=False)))
    # The same pixels are covered (the nearest rule's squares, NaN cells left out)...
    np.testing.assert_array_equal(np.any(smooth != purple, axis=2), np.any(nearest != purple, axis=2))
    lut = colormap_lut("gray")
    row = 16
    for x in range(20, 44):
        centre = x + 0.5
        if centre < 20:
            continue
        if centre < 24:  # nearest cell is the 1.0 cell; its left neighbour is NaN: no weight
            value = 1.0
        elif centre <= 40:
            t = (centre - 24) / 8
            value = 1.0 - 0.5 * t if centre < 32 else 0.5 - 0.5 * (centre - 32) / 8
        else:
            value = 0.0
        np.testing.assert_array_equal(smooth[row, x], lut[colour_index(np.float32(value))], err_msg=str(x))
    assert (smooth[:, :20] == purple).all()  # the NaN cell's square stays transparent
    assert np.any(smooth[12:28, 20:44] != purple, axis=2).all()  # rows: 2 cells from y = 12


def test_markers_are_placed_and_sized_in_output_pixels():
    slide = PlainSlide("grey.tif", np.full((800, 1000, 3), 128, np.uint8))
    style = OverlayStyle(show_heatmap=False, marker_radius=5)
    out = render_array(OverlayRenderer.for_region(slide, None, {"tumor": [[400.0, 300.0]]}, style, downsample=4))
    assert out.shape == (200, 250, 3)
    np.testing.assert_array_equal(out[75, 105], class_colour("tumor"))  # 5 output px right of (100, 75)
    np.testing.assert_array_equal(out[75 - 5, 100], class_colour("tumor"))
    np.testing.assert_array_equal(out[75, 100], (128, 128, 128))
    ys, xs = np.nonzero(np.all(out == class_colour("tumor"), axis=2))
    assert 4 <= np.hypot(xs + 0.5 - 100, ys + 0.5 - 75).min() and np.hypot(xs + 0.5 - 100, ys + 0.5 - 75).max() <= 6


class CountingHeatmap:
    """A heatmap that records how many cells each read asks for (a whole-slide store stand-in)."""

    def __init__(self, inner):
        self.inner, self.grid, self.reads = inner, inner.grid, []

    @property
    def shape(self):
        return self.inner.shape

    def read(self, rows, cols):
        self.reads.append((rows.stop - rows.start) * (cols.stop - cols.start))
        return self.inner.read(rows, cols)


# ------------------------------------------------------------------------ files


def test_pyramidal_tiff_levels_tiles_resolution_and_readers(pyramid, tmp_path, monkeypatch):
    path, _ = pyramid
    monkeypatch.setattr("viewer.export.tiff_writer.ROW_BLOCK_PIXELS", 256 * 256 * 2)  # several blocks per row
    out = tmp_path / "overlay.tif"
    with open_slide(path) as slide:
        grid = AnalysisGrid((0, 0), 1.0, 720, 600, 8)
        values = np.random.default_rng(0).random(grid.shape).astype(np.float32)
        heat = CountingHeatmap(ArrayHeatmap(values, grid))
        style = OverlayStyle(colormap="viridis", marker_radius=8)
        points = {"tumor": [[100.0, 100.0], [700.0, 590.0]]}
        settings = ExportSettings(downsample=1.5, compression="deflate", tile=256)
        result = export_overlay(slide, heat, points, style, out, settings)
        assert result.size == (480, 400) and result.levels == 2
        assert max(heat.reads) < 64 * 64 * 4  # cells under one block, never the whole heatmap
        renderer = OverlayRenderer.for_region(slide, ArrayHeatmap(values, grid), points, style, downsample=1.5)
        with tifffile.TiffFile(out) as tif:
            series = tif.series[0]
            assert series.is_pyramidal and [level.shape for level in series.levels] == [(400, 480, 3), (200, 240, 3)]
            page = tif.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert tif.pages[1].subfiletype == 1  # reduced-resolution image
            x_res = page.tags["XResolution"].value
            assert x_res[0] / x_res[1] == pytest.approx(1e4 / (0.5 * 1.5), rel=1e-6)  # px per cm
            np.testing.assert_array_equal(series.levels[0].asarray(), render_array(renderer))
            # Each level is rendered from the slide at its own downsample (3 here).
            np.testing.assert_array_equal(series.levels[1].asarray(), render_array(renderer.at(renderer.frame.reduced(2))))
    with open_slide(out) as back:  # HistoViewer opens its own export as a slide
        assert [lv.downsample for lv in back.levels[:2]] == [1, 2]
        assert back.mpp == pytest.approx((0.75, 0.75), rel=1e-4)
    import openslide

    with openslide.OpenSlide(str(out)) as osr:
        assert osr.level_count == 2 and osr.dimensions == (480, 400)


def test_png_size_bound_and_settings(pyramid, tmp_path, monkeypatch):
    path, _ = pyramid
    monkeypatch.setattr(figure, "MAX_FIGURE_PIXELS", 100_000)
    with open_slide(path) as slide:
        with pytest.raises(OutputError, match=r"too large for PNG.*\.tif.*--max-size"):
            export_overlay(slide, None, None, OverlayStyle(), tmp_path / "big.png")
        assert not (tmp_path / "big.png").exists()
        result = export_overlay(slide, None, None, OverlayStyle(), tmp_path / "small.png", ExportSettings(max_size=300))
        assert result.size == (300, 250) and Image.open(tmp_path / "small.png").size == (300, 250)
        assert ExportSettings(max_size=5000).resolve(slide) == ((0, 0, 720, 600), 1.0)  # never enlarges
        assert ExportSettings(region=(10, 20, 300, 100), max_size=150).resolve(slide) == ((10, 20, 300, 100), 2.0)
        for bad in (ExportSettings(downsample=0.5), ExportSettings(region=(700, 0, 100, 100)), ExportSettings(max_size=0)):
            with pytest.raises(InputError):
                bad.resolve(slide)


# ------------------------------------------------------------------------ the command


@pytest.fixture
def small_case(tmp_path):
    """A 240 x 200 image with annotations beside it and a heatmap file (array + sidecar)."""
    import json

    pixels = random_image(200, 240, seed=5)
    image = tmp_path / "case.tif"
    tifffile.imwrite(image, pixels, photometric="rgb")
    (tmp_path / "case.json").write_text(json.dumps({"tumor": [{"x": 0.5, "y": 0.5}, {"x": 0.95, "y": 0.1}]}))
    values = np.random.default_rng(2).random(heatmap_shape(200, 240, 8)).astype(np.float32)
    heat = tmp_path / "case_heat.npy"
    save_heatmap(values, heat, stride=8, image_shape=(200, 240), model_path=None,
                 analysis=AnalysisGrid((0, 0), 1.0, 240, 200, 8).as_attrs())
    return image, heat, pixels, values


def test_cli_region_equals_a_crop_of_compose(small_case, tmp_path, capsys):
    from viewer.annotations import load_annotations

    image, heat, pixels, values = small_case
    out = tmp_path / "crop.png"
    assert main(["export", str(image), "--heatmap", str(heat), "--region", "30,40,150,120", "--out", str(out),
                 "--opacity", "0.6", "--threshold", "0.3"]) == 0
    assert "150x120" in capsys.readouterr().out
    whole = compose(pixels, values, load_annotations(tmp_path / "case.json"), OverlayStyle(opacity=0.6, threshold=0.3))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), whole[40:160, 30:180])


def test_cli_downsample_smooth_and_max_size(small_case, tmp_path, capsys):
    image, heat, pixels, values = small_case
    out = tmp_path / "small.png"
    assert main(["export", str(image), "--heatmap", str(heat), "--max-size", "120", "--smooth", "--out", str(out)]) == 0
    got = np.asarray(Image.open(out))
    assert got.shape == (100, 120, 3)
    slide = PlainSlide(image, pixels)
    from viewer.annotations import load_annotations

    expected = render_array(OverlayRenderer.for_region(
        slide, image_heatmap(values, 240, 200, 8), load_annotations(tmp_path / "case.json"), OverlayStyle(smooth=True),
        downsample=2.0))
    np.testing.assert_array_equal(got, expected)
    assert main(["export", str(image), "--heatmap", str(heat), "--downsample", "2", "--max-size", "9", "--out", str(tmp_path / "x.png")]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_cli_refuses_a_too_large_png_before_any_work(small_case, tmp_path, capsys, monkeypatch):
    image, _, _, _ = small_case
    monkeypatch.setattr(figure, "MAX_FIGURE_PIXELS", 1000)
    # The model does not exist: the size must be refused before a heatmap is even planned.
    assert main(["export", str(image), "--out", str(tmp_path / "o.png"), "--model", str(tmp_path / "none.keras")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "o.png" in err[0] and ".tif" in err[0] and "--max-size" in err[0]


def test_cli_tiff_without_legend_says_so(small_case, tmp_path, capsys):
    image, heat, _, _ = small_case
    out = tmp_path / "o.tif"
    assert main(["export", str(image), "--heatmap", str(heat), "--legend", "--out", str(out), "--compression", "deflate"]) == 0
    captured = capsys.readouterr()
    assert "1 level;" in captured.out and "legend" in captured.err
    assert tifffile.imread(out).shape == (200, 240, 3)


def test_end_to_end_bundled_model_on_a_pyramidal_slide(tmp_path, capsys):
    """The real bundled model through `histoviewer export` on a synthetic 3-level slide."""
    slide = write_pyramidal_tiff(tmp_path / "tissue.tif", 640, 512, tile=128, levels=3, mpp=0.25)
    out = tmp_path / "tissue_overlay.tif"
    # --threshold 0 draws every cell (the default 0.5 draws likely tumour only, maybe nothing here).
    assert main(["export", str(slide), "--out", str(out), "--no-tissue-mask", "--tile-size", "256", "--quiet",
                 "--threshold", "0"]) == 0
    assert "3 levels" in capsys.readouterr().out
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(512, 640, 3), (256, 320, 3), (128, 160, 3)]
        overlay = levels[0].asarray()
    plain = tifffile.imread(slide, level=0)
    # The heatmap was drawn (the overlay differs from the slide inside the analysed band) and
    # left the outer margin alone (JPEG: compare loosely).
    band = np.abs(overlay[20:-20, 20:-20].astype(int) - plain[20:-20, 20:-20]).mean()
    margin = np.abs(overlay[:8].astype(int) - plain[:8]).mean()
    assert band > 5 and margin < 3


# ------------------------------------------------------------------------ coarse levels, memory


class Banded:
    """A HeatmapData without an overview (read by bounded bands on coarse levels)."""

    def __init__(self, inner):
        self.inner, self.grid = inner, inner.grid

    @property
    def shape(self):
        return self.inner.shape

    def read(self, rows, cols):
        return self.inner.read(rows, cols)

    def overview(self, kind="mean"):
        return None


@pytest.mark.parametrize("smooth", [False, True])
def test_coarse_levels_sample_the_same_cells_whatever_the_read_path(smooth, monkeypatch):
    import viewer.overlay as overlay

    slide = PlainSlide("grey.tif", np.full((700, 900, 3), 128, np.uint8))
    grid = AnalysisGrid((0, 0), 1.0, 900, 700, 4)
    values = np.random.default_rng(4).random(grid.shape).astype(np.float32)
    values[values < 0.1] = np.nan
    style = OverlayStyle(opacity=0.8, smooth=smooth, show_annotations=False)

    def render(heat):
        return render_array(OverlayRenderer.for_region(slide, heat, None, style, downsample=9.5))

    expected = render(ArrayHeatmap(values, grid))  # the rectangle under each block, read whole
    monkeypatch.setattr(overlay, "SPAN_CELLS", 50)  # now every block is "coarse"
    np.testing.assert_array_equal(render(ArrayHeatmap(values, grid)), expected)  # array indexing
    np.testing.assert_array_equal(render(Banded(ArrayHeatmap(values, grid))), expected)  # bands of 50 cells


def test_coarse_levels_of_a_store_use_its_overview(tmp_path, monkeypatch):
    import viewer.overlay as overlay
    from viewer.heatmap.data import StoreHeatmap
    from viewer.heatmap.store import HeatmapStore, slide_attrs

    image = tmp_path / "grey.tif"
    tifffile.imwrite(image, np.full((600, 800, 3), 128, np.uint8), photometric="rgb")
    slide = open_slide(image)
    grid = AnalysisGrid((0, 0), 1.0, 800, 600, 8)
    rows, cols = grid.shape
    # Constant over the 8 x 8 blocks the overview averages: overview and cells agree exactly.
    blocks = np.random.default_rng(0).random((-(-rows // 8), -(-cols // 8))).astype(np.float32)
    values = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:rows, :cols]
    attrs = {**grid.as_attrs(), "model_sha256": None, "slide": slide_attrs(slide)}
    store, _ = HeatmapStore.open_or_create(tmp_path / "h.zarr", shape=(rows, cols), attrs=attrs, chunk=16)
    for i in range(store.chunk_grid[0]):
        for j in range(store.chunk_grid[1]):
            r, c = store.chunk_slices(i, j)
            store.write_chunk(i, j, values[r, c])
    style = OverlayStyle(opacity=1.0, show_annotations=False)
    heat = StoreHeatmap(HeatmapStore.open(tmp_path / "h.zarr"))
    expected = render_array(OverlayRenderer.for_region(slide, ArrayHeatmap(values, grid), None, style, downsample=16))
    monkeypatch.setattr(overlay, "SPAN_CELLS", 10)
    reads = []
    real_read = heat.read
    heat.read = lambda r, c: reads.append((r, c)) or real_read(r, c)
    got = render_array(OverlayRenderer.for_region(slide, heat, None, style, downsample=16))
    np.testing.assert_array_equal(got, expected)
    assert reads == []  # no cells read: the overview (read once) served every block


def test_a_large_tiff_export_holds_blocks_not_the_image(tmp_path, monkeypatch):
    """Peak memory follows the block constants, not the output (18 MB of RGB here)."""
    import tracemalloc

    import imagecodecs  # noqa: F401 - imported before measuring: module code is not the export

    import viewer.export.render as render
    import viewer.export.tiff_writer as tiff_writer
    import viewer.overlay as overlay
    from viewer.slide.source import Level, SlideSource

    class Procedural(SlideSource):
        backend = "test"

        def __init__(self, width, height):
            super().__init__()
            self.path = tmp_path / "procedural.tif"
            self.native_levels = tuple(Level(-(-width // d), -(-height // d), float(d)) for d in (1, 4, 16))
            self.mpp = (0.25, 0.25)
            self._finish_levels()

        def _read_native(self, level, x, y, w, h):
            d = int(self.levels[level].downsample)
            xs = (np.arange(x, x + w) * d // 64 % 2).astype(np.uint8)
            ys = (np.arange(y, y + h) * d // 64 % 2).astype(np.uint8)
            out = np.empty((h, w, 3), np.uint8)
            out[...] = ((xs[None, :] ^ ys[:, None]) * np.uint8(60) + np.uint8(150))[:, :, None]
            return out

    class Waves:
        def __init__(self, grid):
            self.grid = grid

        @property
        def shape(self):
            return self.grid.shape

        def read(self, rows, cols):
            r = np.sin(np.arange(rows.start, rows.stop, dtype=np.float32) / 50)
            c = np.cos(np.arange(cols.start, cols.stop, dtype=np.float32) / 70)
            return ((np.multiply.outer(r, c) + 1) / 2).astype(np.float32)

        def overview(self, kind="mean"):
            return None

    monkeypatch.setattr(tiff_writer, "ROW_BLOCK_PIXELS", 1 << 16)
    monkeypatch.setattr(render, "SOURCE_PIXELS", 1 << 15)
    monkeypatch.setattr(overlay, "BLEND_PIXELS", 1 << 14)
    monkeypatch.setattr(overlay, "SPAN_CELLS", 1 << 16)
    slide = Procedural(12_000, 8_000)
    heat = Waves(AnalysisGrid((0, 0), 1.0, 12_000, 8_000, 8))
    points = {"tumor": np.random.default_rng(0).uniform(0, 8000, (2000, 2))}
    export_overlay(slide, heat, points, OverlayStyle(), tmp_path / "warm.tif", ExportSettings(region=(0, 0, 600, 600)))
    tracemalloc.start()
    try:
        result = export_overlay(slide, heat, points, OverlayStyle(smooth=True), tmp_path / "big.tif",
                                ExportSettings(downsample=4, tile=256))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.size == (3000, 2000) and result.levels == 5
    assert peak < 9_000_000, f"peak {peak / 1e6:.1f} MB"  # blocks of 65k px: about 7 MB

"""The TIFF reader (tifffile + zarr) on synthetic slides from ``slide_factory``.

Each kind of TIFF opens with the right levels, pixel size, vendor and associated images; regions
equal crops of the level decoded whole by tifffile; damaged files give one-line errors naming the
file; reads are thread-safe and touch only the tiles under the region.
"""

from __future__ import annotations

import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_factory import (
    block_average,
    corrupt_tile,
    label_image,
    patch_dimensions,
    read_level,
    remove_tiles,
    synthetic_tissue,
    truncated_copy,
    write_plain_tiff,
    write_pyramidal_tiff,
    write_svs_like,
)

from viewer.cache import half_size
from viewer.errors import ImageError
from viewer.slide import open_slide
from viewer.slide.tiff import TiffSlide

W, H = 1000, 700
"""Level-0 size of the small synthetic slides: not a multiple of any tile size, so every level
has partial edge tiles."""


def one_line(info: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    text = str(info.value)
    assert "\n" not in text and "\r" not in text, text
    assert str(path) in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """One file of each kind, written once for the module."""
    root = tmp_path_factory.mktemp("tiff_slides")
    return {
        "generic": write_pyramidal_tiff(root / "generic.tif", W, H, tile=128, levels=3, compression="zlib", mpp=0.5),
        "generic-jpeg": write_pyramidal_tiff(root / "generic_jpeg.tif", W, H, tile=128, levels=3, compression="jpeg"),
        "subifds": write_pyramidal_tiff(root / "subifds.tif", W, H, tile=128, levels=3, compression="zlib", subifds=True),
        "ome": write_pyramidal_tiff(
            root / "slide.ome.tif", W, H, tile=128, levels=3, compression="zlib", subifds=True, ome=True, mpp=0.25
        ),
        "svs": write_svs_like(root / "slide.svs", 2000, 1500, tile=240),
        "plain": write_plain_tiff(root / "plain.tif", 2500, 2100, rowsperstrip=64),
        "plain-zlib": write_plain_tiff(root / "plain_zlib.tif", 2500, 2100, rowsperstrip=50, compression="zlib"),
    }


# --------------------------------------------------------------------------- what opens, and how


@pytest.mark.parametrize(
    ("kind", "vendor", "sizes", "mpp", "tile"),
    [
        ("generic", "generic-tiff", [(1000, 700), (500, 350), (250, 175)], (0.5, 0.5), (128, 128)),
        ("generic-jpeg", "generic-tiff", [(1000, 700), (500, 350), (250, 175)], None, (128, 128)),
        ("subifds", "generic-tiff", [(1000, 700), (500, 350), (250, 175)], None, (128, 128)),
        ("ome", "ome", [(1000, 700), (500, 350), (250, 175)], (0.25, 0.25), (128, 128)),
        ("svs", "aperio", [(2000, 1500), (500, 375)], (0.252, 0.252), (240, 240)),
        ("plain", "generic-tiff", [(2500, 2100)], None, (2500, 64)),
        ("plain-zlib", "generic-tiff", [(2500, 2100)], None, (2500, 50)),
    ],
)
def test_each_kind_opens_with_its_levels_mpp_and_vendor(slides, kind, vendor, sizes, mpp, tile):
    with open_slide(slides[kind]) as slide:
        assert isinstance(slide, TiffSlide) and slide.backend == "tiff"
        assert slide.vendor == vendor
        native = [level for level in slide.levels if not level.virtual]
        assert [(level.width, level.height) for level in native] == sizes
        for level in native:  # OpenSlide's rule: the mean of the width and height ratios
            expected = (sizes[0][0] / level.width + sizes[0][1] / level.height) / 2
            assert level.downsample == pytest.approx(expected)
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
        assert slide.tile_size == tile
        assert max(slide.levels[-1].width, slide.levels[-1].height) <= 1024  # virtual levels added when needed
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in slide.properties.items())
        assert slide.notes == []
        info = slide.info()
        assert info["backend"] == "tiff" and info["vendor"] == vendor


def test_svs_metadata_and_associated_images(slides):
    path = slides["svs"]
    with open_slide(path) as slide:
        assert slide.properties["aperio.AppMag"] == "40" and slide.properties["objective-power"] == "40"
        assert slide.properties["aperio.MPP"] == "0.2520"
        assert slide.associated_names() == ("thumbnail", "label", "macro")
        with tifffile.TiffFile(path) as tif:
            expected = {s.name.lower(): s.asarray() for s in tif.series[1:]}
        for name in slide.associated_names():
            pixels = slide.read_associated(name)
            assert pixels.dtype == np.uint8 and pixels.shape == expected[name].shape
            np.testing.assert_array_equal(pixels, expected[name])
        np.testing.assert_array_equal(slide.read_associated("label"), label_image(0))  # LZW: exact
        with pytest.raises(KeyError):
            slide.read_associated("overview")


def test_generic_tiff_has_no_associated_images(slides):
    with open_slide(slides["generic"]) as slide:
        assert slide.associated_names() == ()
        with pytest.raises(KeyError):
            slide.read_associated("label")


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [((40000, 40000), "CENTIMETER", (0.25, 0.25)), ((101600, 50800), "INCH", (0.25, 0.5)), ((1, 1), "NONE", None)],
    ids=["cm", "inch", "no-unit"],
)
def test_mpp_from_resolution_tags(tmp_path, resolution, unit, mpp):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, synthetic_tissue(0, 0, 64, 48), photometric="rgb", resolution=resolution, resolutionunit=unit)
    with open_slide(path) as slide:
        assert slide.backend == "tiff"
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
        assert slide.notes == []


def test_a_72_dpi_default_is_unknown_with_a_note(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, synthetic_tissue(0, 0, 64, 48), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp is None
        assert any("too coarse" in note for note in slide.notes), slide.notes


def test_ome_pixel_size_units(tmp_path):
    path = tmp_path / "nm.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.0005, "PhysicalSizeYUnit": "mm"}
    tifffile.imwrite(path, synthetic_tissue(0, 0, 64, 48), photometric="rgb", ome=True, metadata=meta)
    with open_slide(path) as slide:
        assert slide.vendor == "ome"
        assert slide.mpp == (pytest.approx(0.5), pytest.approx(0.5))


def test_non_slide_tiffs_are_left_to_the_plain_reader(tmp_path):
    from viewer.slide.source import NotThisBackend

    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((48, 64, 3), np.float32), photometric="rgb")
    with pytest.raises(NotThisBackend):
        TiffSlide.open(path, path.read_bytes()[:16])


def test_synthetic_tissue_tiles_agree_at_their_borders():
    whole = synthetic_tissue(0, 0, 300, 200, seed=5)
    np.testing.assert_array_equal(synthetic_tissue(100, 50, 150, 100, seed=5), whole[50:150, 100:250])
    assert not np.array_equal(synthetic_tissue(0, 0, 300, 200, seed=6), whole)
    colours = whole.reshape(-1, 3).astype(int)
    assert (colours.min(axis=1) > 225).any()  # glass
    assert ((colours[:, 1] < colours[:, 0] - 40) & (colours[:, 0] > 180)).any()  # pink stroma
    assert (colours.max(axis=1) < 140).any()  # dark nuclei


# --------------------------------------------------------------------------- pixels

REGIONS = [
    (0, 0, 64, 64),
    (100, 90, 200, 150),  # across tile borders
    (120, 120, 16, 16),  # inside one tile, touching a border
    (-30, -20, 100, 80),  # partly outside, top-left
    (900, 600, 300, 200),  # partly outside, bottom-right
    (990, 690, 10, 10),  # the last pixels
    (-500, 100, 50, 50),  # wholly outside
    (0, 0, 1000, 700),  # everything
]


def expected_region(level_pixels: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """A crop of a whole level with white where the region leaves it."""
    out = np.full((h, w, 3), 255, np.uint8)
    lh, lw = level_pixels.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = level_pixels[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("kind", ["generic", "generic-jpeg", "subifds", "ome", "svs", "plain", "plain-zlib"])
def test_regions_equal_crops_of_the_whole_level(slides, kind):
    """zlib and uncompressed: the exact pixels; JPEG: the same decoder as tifffile.imread."""
    path = slides[kind]
    with open_slide(path) as slide:
        for index, level in enumerate(slide.levels):
            if level.virtual:
                continue
            whole = read_level(path, index)
            assert whole.shape == (level.height, level.width, 3)
            for x, y, w, h in REGIONS:
                region = slide.read_region(index, x, y, w, h)
                assert region.shape == (h, w, 3) and region.dtype == np.uint8 and region.flags.c_contiguous
                np.testing.assert_array_equal(region, expected_region(whole, x, y, w, h), err_msg=f"level {index} {x, y, w, h}")


def test_lossless_pyramid_matches_its_source(tmp_path):
    """Through the whole chain: the array written is the array read, at every level."""
    source = synthetic_tissue(0, 0, 700, 500, seed=3)
    path = write_pyramidal_tiff(tmp_path / "array.tif", 700, 500, tile=64, levels=3, compression="zlib", source=source)
    with open_slide(path) as slide:
        for index, d in enumerate((1, 2, 4)):
            np.testing.assert_array_equal(slide.read_all(index), block_average(source, d))


def test_virtual_levels_of_a_big_plain_tiff_are_2x2_averages(slides):
    with open_slide(slides["plain"]) as slide:
        assert [(lv.width, lv.height, lv.virtual) for lv in slide.levels] == [
            (2500, 2100, False),
            (1250, 1050, True),
            (625, 525, True),
        ]
        level0 = read_level(slides["plain"], 0)
        level1 = half_size(level0)
        np.testing.assert_array_equal(slide.read_all(1), level1)
        np.testing.assert_array_equal(slide.read_all(2), half_size(level1))
        np.testing.assert_array_equal(slide.read_region(1, 600, 500, 100, 80), level1[500:580, 600:700])


def test_grey_and_rgba_tiffs_are_converted(tmp_path):
    tissue = synthetic_tissue(0, 0, 300, 200)
    grey = tissue[..., 1].copy()
    path = write_pyramidal_tiff(tmp_path / "grey.tif", 300, 200, tile=64, levels=2, compression="zlib", source=grey)
    with open_slide(path) as slide:
        assert slide.backend == "tiff"
        np.testing.assert_array_equal(slide.read_region(0, 10, 20, 100, 50), np.repeat(grey[20:70, 10:110, None], 3, axis=2))
        assert any("grey" in note for note in slide.notes)

    rgba = np.dstack([tissue, np.full((200, 300), 255, np.uint8)])
    rgba[:, :50, 3] = 0  # transparent: white glass
    rgba[:, 50:60, 3] = 128
    path = write_pyramidal_tiff(tmp_path / "rgba.tif", 300, 200, tile=64, levels=1, compression="zlib", source=rgba)
    with open_slide(path) as slide:
        pixels = slide.read_all()
        assert (pixels[:, :50] == 255).all()
        np.testing.assert_array_equal(pixels[:, 60:], tissue[:, 60:])
        half = (tissue[:, 50:60].astype(int) * 128 + 255 * 127 + 127) // 255
        np.testing.assert_array_equal(pixels[:, 50:60], half)
        assert any("alpha" in note for note in slide.notes)


def test_dispatcher_picks_tiff_for_8_bit_and_plain_for_the_rest(tmp_path, slides):
    for path in slides.values():
        with open_slide(path) as slide:
            assert slide.backend == "tiff"
    rgb16 = tmp_path / "u16.tif"
    tifffile.imwrite(rgb16, synthetic_tissue(0, 0, 64, 48).astype(np.uint16) * 257, photometric="rgb")
    assert open_slide(rgb16).backend == "plain"
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(synthetic_tissue(0, 0, 64, 48), -1, 0), photometric="rgb", planarconfig="separate")
    assert open_slide(planar).backend == "plain"
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([synthetic_tissue(0, 0, 64, 48)] * 2), photometric="rgb")
    assert open_slide(stack).backend == "plain"
    assert open_slide(slides["generic"], backend="tiff").backend == "tiff"


def test_reading_after_close_is_an_error(slides):
    slide = open_slide(slides["generic"])
    slide.read_region(0, 0, 0, 10, 10)
    slide.close()
    slide.close()  # twice is harmless
    with pytest.raises(ImageError) as info:
        slide.read_region(0, 0, 0, 10, 10)
    one_line(info, slides["generic"], "closed")


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("kind", ["generic-jpeg", "svs", "plain", "plain-zlib"])
def test_concurrent_reads_equal_serial_reads(slides, kind):
    """Six threads at once on a freshly opened slide (first reads of each level included: tifffile
    set up JPEG decoding with an unlocked file read, which once garbled a concurrent tile)."""
    with open_slide(slides[kind]) as slide:
        rng = np.random.default_rng(7)
        requests: list[tuple] = []
        for _ in range(48):
            level = int(rng.integers(0, len(slide.levels)))
            info = slide.levels[level]
            w, h = (int(v) for v in rng.integers(16, 300, 2))
            x, y = int(rng.integers(-50, info.width)), int(rng.integers(-50, info.height))
            requests.append((level, x, y, w, h))
        requests += [(name,) for name in slide.associated_names()]

        def read(target, request: tuple) -> np.ndarray:
            return target.read_associated(*request) if len(request) == 1 else target.read_region(*request)

        serial = [read(slide, r) for r in requests]
    for _ in range(5):
        with open_slide(slides[kind]) as slide:  # fresh: nothing decoded or cached yet
            start = threading.Barrier(6)

            def worker(indices: list[int]) -> list[tuple[int, np.ndarray]]:
                start.wait()  # all threads read at once
                return [(i, read(slide, requests[i])) for i in indices]  # noqa: B023 - used inside the loop

            with ThreadPoolExecutor(6) as pool:
                batches = pool.map(worker, [list(range(k, len(requests), 6)) for k in range(6)])
                results = [item for batch in batches for item in batch]
        assert len(results) == len(requests)
        for i, got in results:
            np.testing.assert_array_equal(got, serial[i], err_msg=str(requests[i]))


@pytest.mark.parametrize("kind", ["generic-jpeg", "svs"])
def test_first_reads_of_every_level_at_once(slides, kind):
    """The riskiest moment: each thread's first read sets up a different level's decoder while
    the others read tiles. Repeated on fresh slides, since a race shows only sometimes."""
    with open_slide(slides[kind]) as slide:
        jobs = [(k, 20, 30, 150, 120) for k in range(len(slide.levels))] + [(name,) for name in slide.associated_names()]
        expected = [slide.read_associated(*j) if len(j) == 1 else slide.read_region(*j) for j in jobs]
    for _ in range(60):
        with open_slide(slides[kind]) as slide:
            start = threading.Barrier(len(jobs))

            def first_read(job: tuple) -> np.ndarray:
                start.wait()
                return slide.read_associated(*job) if len(job) == 1 else slide.read_region(*job)  # noqa: B023

            with ThreadPoolExecutor(len(jobs)) as pool:
                for job, want, got in zip(jobs, expected, pool.map(first_read, jobs)):
                    np.testing.assert_array_equal(got, want, err_msg=str(job))


# --------------------------------------------------------------------------- damaged slides


def test_truncated_slide_is_refused(tmp_path, slides):
    for keep in (0.3, 0.6, 0.95):
        path = truncated_copy(slides["generic"], tmp_path / f"cut_{keep}.tif", keep)
        with pytest.raises(ImageError) as info:
            open_slide(path)
        one_line(info, path)
    path = truncated_copy(slides["svs"], tmp_path / "cut.svs", 0.5)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    one_line(info, path, "truncated")


def test_truncated_uncompressed_image_is_refused(tmp_path, slides):
    path = truncated_copy(slides["plain"], tmp_path / "cut_plain.tif", 0.7)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    one_line(info, path, "truncated", "2500x2100")


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_corrupt_tile_fails_only_when_read(tmp_path, compression):
    path = write_pyramidal_tiff(tmp_path / f"corrupt_{compression}.tif", W, H, tile=128, levels=2, compression=compression)
    good = read_level(path, 0)
    col, row = corrupt_tile(path, level=0, index=9)  # second row of tiles, second column
    assert (col, row) == (1, 1)
    with open_slide(path) as slide:  # the header is intact: it opens
        with pytest.raises(ImageError) as info:
            slide.read_region(0, 128 + 10, 128 + 10, 20, 20)
        one_line(info, path, "level 0", "x=138, y=138", "20x20")
        with pytest.raises(ImageError):  # a region overlapping the tile fails too
            slide.read_region(0, 100, 100, 64, 64)
        # Every other tile still reads.
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 256, 128), good[:128, :256])
        np.testing.assert_array_equal(slide.read_region(0, 256, 128, 300, 300), good[128:428, 256:556])
        np.testing.assert_array_equal(slide.read_all(1), read_level(path, 1))


def test_level_with_all_tiles_missing_is_refused(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "missing.tif", W, H, tile=128, levels=3, compression="zlib")
    remove_tiles(path, level=1)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    one_line(info, path, "level 1", "missing")
    path0 = write_pyramidal_tiff(tmp_path / "missing0.tif", W, H, tile=128, levels=2, compression="zlib")
    remove_tiles(path0, level=0)
    with pytest.raises(ImageError) as info:
        open_slide(path0)
    one_line(info, path0, "level 0", "missing")


def test_a_few_missing_tiles_read_as_white_with_a_note(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "sparse.tif", W, H, tile=128, levels=2, compression="zlib")
    good = read_level(path, 0)
    remove_tiles(path, level=0, indices=[0, 9])
    with open_slide(path) as slide:
        assert any("2 tiles of level 0 are missing" in note for note in slide.notes), slide.notes
        region = slide.read_region(0, 0, 0, 384, 384)
        assert (region[:128, :128] == 255).all() and (region[128:256, 128:256] == 255).all()
        np.testing.assert_array_equal(region[:128, 128:], good[:128, 128:384])
        np.testing.assert_array_equal(region[256:], good[256:384, :384])


def test_absurd_declared_size_is_refused_without_reading_pixels(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "absurd.tif", W, H, tile=128, levels=2, compression="zlib")
    patch_dimensions(path, 10**7, 10**7)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as info:
            open_slide(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(info, path, "10000000x10000000", "damaged")
    assert peak < 20_000_000


def test_size_the_file_cannot_hold_is_refused(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "forged.tif", W, H, tile=128, levels=2, compression="zlib")
    patch_dimensions(path, 1_000_000, 100_000)  # 1e11 px: under the absurd bound, but 48 tiles stored
    with pytest.raises(ImageError) as info:
        open_slide(path)
    one_line(info, path, "1000000x100000", "damaged")


def test_tiles_above_the_pixel_limit_are_refused(slides):
    """The limit bounds what is decoded at once: one 128x128 tile is 16384 px."""
    with pytest.raises(ImageError) as info:
        open_slide(slides["generic"], max_pixels=128 * 128 - 1)
    one_line(info, slides["generic"], "tiles of 128x128 px", "HISTOVIEWER_MAX_PIXELS")
    with open_slide(slides["generic"], max_pixels=128 * 128) as slide:
        with pytest.raises(ImageError) as info:
            slide.read_all()  # the open limit is read_all's default
        one_line(info, slides["generic"], "too large to load whole")


# --------------------------------------------------------------------------- memory


def _periodic_tissue(size: int = 1024):
    """A cheap source for huge slides: one synthetic block repeated (every level samples it)."""
    block = synthetic_tissue(0, 0, size, size)

    def source(x0: int, y0: int, w: int, h: int, downsample: float = 1) -> np.ndarray:
        ys = (np.arange(y0, y0 + h) * int(downsample)) % size
        xs = (np.arange(x0, x0 + w) * int(downsample)) % size
        return block[ys[:, None], xs[None, :]]

    return source


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_large_slide_reads_allocate_only_what_they_return(tmp_path):
    """A 20k x 20k JPEG slide (1.2 GB of pixels): a region and a thumbnail need a few MB."""
    path = write_pyramidal_tiff(
        tmp_path / "large.tif", 20_000, 20_000, tile=512, levels="auto", compression="jpeg", quality=80, source=_periodic_tissue()
    )
    with open_slide(path) as slide:
        assert slide.levels[0].width == 20_000 and not any(level.virtual for level in slide.levels)
        slide.read_region(0, 0, 0, 8, 8)  # zarr and codecs warmed up outside the measurement
        region_peak = _peak_bytes(lambda: slide.read_region(0, 9_000, 9_100, 512, 512))
        thumbnail_peak = _peak_bytes(lambda: slide.thumbnail(1024))
    assert region_peak < 8_000_000, region_peak  # 0.8 MB returned, up to 4 tiles of 0.8 MB decoded
    assert thumbnail_peak < 32_000_000, thumbnail_peak  # the 1250-px level, resized


def test_uncompressed_single_strip_image_is_read_by_rows(tmp_path):
    """One strip holding a whole 6000x4000 image (72 MB): a region reads only its rows."""
    path = write_plain_tiff(tmp_path / "one_strip.tif", 6000, 4000, rowsperstrip=4000, source=_periodic_tissue())
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages[0].dataoffsets) == 1
    with open_slide(path) as slide:
        slide.read_region(0, 0, 0, 8, 8)
        peak = _peak_bytes(lambda: slide.read_region(0, 2_000, 1_000, 512, 512))
        np.testing.assert_array_equal(slide.read_region(0, 5_900, 3_950, 200, 100)[:50, :100], _periodic_tissue()(5_900, 3_950, 100, 50))
    assert peak < 4_000_000, peak

"""viewer.slide.openslide_reader: OpenSlide behind the SlideSource interface.

Synthetic slides only: a tiled generic TIFF and an Aperio-like SVS written with tifffile (read
back with tifffile as the reference), and a Hamamatsu VMS (a text index plus JPEG files, a
format only OpenSlide reads). Bad files must give one-line ImageErrors naming the file; a corrupt
tile must not make the rest of the slide unreadable (OpenSlide errors latch on their handle).
"""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from viewer.errors import ImageError
from viewer.slide import open_slide
from viewer.slide import openslide_reader
from viewer.slide.openslide_reader import OpenSlideSlide, _over_white, detect_format

TILE = 256
APERIO = "Aperio Image Library v12.0.15\r\n"


# --------------------------------------------------------------------------- writers


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB: any misplaced pixel shows (for lossless tiles)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int, width: int) -> np.ndarray:
    """Smooth RGB waves: JPEG keeps it within a few levels, and sub-pixel shifts barely change it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 100 * np.sin(x / 41), 128 + 100 * np.cos(y / 53), 128 + 60 * np.sin((x + y) / 71)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def write_generic_tiff(path: Path, pixels: np.ndarray, compression: str = "zlib", dpi: float | None = 72.0) -> Path:
    """A tiled two-level pyramid with no vendor metadata, like an image tool's export (72 dpi tag)."""
    options = {"photometric": "rgb", "compression": compression, "tile": (TILE, TILE), "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, resolution=None if dpi is None else (dpi, dpi), resolutionunit="INCH" if dpi else None, **options)
        tif.write(pixels[::2, ::2], subfiletype=1, **options)
    return path


def write_svs(path: Path, pixels: np.ndarray, compression: str = "zlib", mpp: float = 0.499,
              level1: np.ndarray | None = None) -> Path:
    """An Aperio-like SVS: tiled level 0, stripped thumbnail, tiled level 1, label and macro."""
    height, width = pixels.shape[:2]
    level1 = pixels[::2, ::2] if level1 is None else level1
    options = {"photometric": "rgb", "compression": compression, "metadata": None}
    description = f"{APERIO}{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) RGB|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, tile=(TILE, TILE), description=description, **options)
        tif.write(pixels[::8, ::8], description=f"{APERIO}thumbnail", **options)
        tif.write(level1, tile=(TILE, TILE), description=f"{APERIO}{width}x{height} -> {level1.shape[1]}x{level1.shape[0]}", **options)
        tif.write(noise(60, 120, seed=5), subfiletype=1, description=f"{APERIO}label 120x60", **options)
        tif.write(noise(80, 240, seed=6), subfiletype=9, description=f"{APERIO}macro 240x80", **options)
    return path


def write_jpeg_with_restarts(path: Path, pixels: np.ndarray) -> None:
    """A baseline 4:4:4 JPEG with a restart marker every half MCU row (as VMS requires)."""
    width = pixels.shape[1]
    assert width % 16 == 0, "two restart intervals of 8-px MCUs per row"
    Image.fromarray(pixels).save(path, quality=95, subsampling=0, restart_marker_blocks=width // 16)


def write_vms(folder: Path, pixels: np.ndarray, columns: int = 2, rows: int = 1, mpp: float = 0.25) -> Path:
    """A Hamamatsu VMS: ``name.vms`` index, ``columns x rows`` JPEG pieces, map and macro JPEGs.

    Level 0 is the JPEG pieces side by side. OpenSlide requires restart markers (it uses them as
    tile boundaries) and a map image; PhysicalWidth/Height are in nanometres.
    """
    folder.mkdir(parents=True, exist_ok=True)
    height, width = pixels.shape[:2]
    piece_w, piece_h = width // columns, height // rows
    lines = [
        "[Virtual Microscope Specimen]", "NoLayers=1", f"NoJpegColumns={columns}", f"NoJpegRows={rows}",
        "MapFile=slide_map.jpg", "MacroImage=slide_macro.jpg", "SourceLens=20",
        f"PhysicalWidth={round(width * mpp * 1000)}", f"PhysicalHeight={round(height * mpp * 1000)}",
    ]
    for row in range(rows):
        for col in range(columns):
            name = f"slide({col},{row}).jpg"
            write_jpeg_with_restarts(folder / name, pixels[row * piece_h : (row + 1) * piece_h, col * piece_w : (col + 1) * piece_w])
            lines.append(f"ImageFile({col},{row})={name}")
    write_jpeg_with_restarts(folder / "slide_map.jpg", pixels[::4, ::4])
    Image.fromarray(smooth(64, 96)).save(folder / "slide_macro.jpg", quality=95)
    index = folder / "slide.vms"
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return index


def decoded_jpeg_mosaic(index: Path) -> np.ndarray:
    """Level 0 of a synthetic VMS as Pillow decodes its JPEG pieces (the reference)."""
    pieces: dict[tuple[int, int], np.ndarray] = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.startswith("ImageFile("):
            key, name = line.split("=", 1)
            col, row = (int(v) for v in key[len("ImageFile(") : -1].split(","))
            pieces[(col, row)] = np.asarray(Image.open(index.parent / name).convert("RGB"))
    columns = 1 + max(c for c, _ in pieces)
    rows = 1 + max(r for _, r in pieces)
    return np.vstack([np.hstack([pieces[(c, r)] for c in range(columns)]) for r in range(rows)])


def assert_one_line_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    assert path.name in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# Regions in level pixels: inside one tile, across tile corners, at and past the edges.
REGIONS = [(0, 0, 100, 80), (200, 180, 130, 150), (250, 250, 300, 20), (-30, -20, 90, 70), (400, 300, 300, 300)]


def reference_region(level_pixels: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``level_pixels[y:y+h, x:x+w]`` with white outside, like SlideSource.read_region."""
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    height, width = level_pixels.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = level_pixels[y0:y1, x0:x1]
    return out


# --------------------------------------------------------------------------- TIFF family through OpenSlide


def test_generic_tiff_levels_pixels_and_72_dpi_tag(tmp_path):
    pixels = noise(700, 900)
    path = write_generic_tiff(tmp_path / "generic.tif", pixels)
    assert detect_format(path) == "generic-tiff"
    with open_slide(path, backend="openslide") as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert (slide.backend, slide.vendor) == ("openslide", "generic-tiff")
        assert [(lv.width, lv.height, lv.downsample, lv.virtual) for lv in slide.levels] == [
            (900, 700, 1.0, False), (450, 350, 2.0, False)]
        # OpenSlide turns the 72-dpi tag into ~353 µm per pixel: no microscope scan, so unknown.
        assert float(slide.properties["openslide.mpp-x"]) > 300
        assert slide.mpp is None
        assert any("353" in note and "unknown" in note for note in slide.notes), slide.notes
        assert slide.tile_size == (TILE, TILE)
        with tifffile.TiffFile(path) as tif:
            stored = [page.asarray() for page in tif.pages]
        for level, level_pixels in enumerate(stored):
            for region in REGIONS:
                got = slide.read_region(level, *region)
                # Lossless tiles: OpenSlide must return exactly the stored pixels.
                assert np.array_equal(got, reference_region(level_pixels, *region)), (level, region)


@pytest.mark.parametrize("compression, tolerance", [("zlib", 0), ("jpeg", 2)])
def test_svs_like_file(tmp_path, compression, tolerance):
    pixels = noise(700, 900) if compression == "zlib" else smooth(700, 900)
    path = write_svs(tmp_path / "slide.svs", pixels, compression=compression)
    assert detect_format(path) == "aperio"
    with open_slide(path, backend="openslide") as slide:
        assert slide.vendor == "aperio"
        assert [(lv.width, lv.height, lv.downsample) for lv in slide.native_levels] == [(900, 700, 1.0), (450, 350, 2.0)]
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.objective_power == 20
        assert set(slide.associated_names()) == {"label", "macro", "thumbnail"}
        assert slide.tile_size == (TILE, TILE)
        info = slide.info()
        assert info["mpp"] == pytest.approx([0.499, 0.499]) and info["vendor"] == "aperio" and info["objective_power"] == 20
        with tifffile.TiffFile(path) as tif:
            stored = {0: tif.pages[0].asarray(), 1: tif.pages[2].asarray()}
            label = tif.pages[3].asarray()
        for level, level_pixels in stored.items():
            for region in REGIONS:
                difference = max_difference(slide.read_region(level, *region), reference_region(level_pixels, *region))
                assert difference <= tolerance, (level, region, difference)
        assert max_difference(slide.read_associated("label"), label) <= tolerance
        with pytest.raises(KeyError):
            slide.read_associated("barcode")


def test_non_integer_downsample_reads_the_level_in_its_own_pixels(tmp_path):
    # 901x701 with a 450x350 level 1: OpenSlide reports a downsample of ~2.0025, so level-1
    # pixel x starts at level-0 pixel round(x * 2.0025), not 2x (2 level-0 px off by x = 400).
    y, x = np.mgrid[0:701, 0:901].astype(np.float64)
    waves = np.stack([128 + 120 * np.sin(x / 9), 128 + 120 * np.sin(y / 9), np.full_like(x, 128)], axis=-1)
    level1 = waves.round().astype(np.uint8)[:700:2, :900:2]  # stored as is: its own pixels are the truth
    path = write_svs(tmp_path / "odd.svs", smooth(701, 901), level1=level1)
    with open_slide(path, backend="openslide") as slide:
        d = slide.native_levels[1].downsample
        assert d != 2.0 and d == pytest.approx(2.0, abs=0.01)
        # Where x * d is (nearly) a whole number, OpenSlide's sub-pixel shift vanishes: exact-ish.
        # (x * d) - 2x grows by 0.0025 per pixel: whole again (2x + 1) near x = 394.
        near_whole = [v for v in range(300, 400) if abs(v * d - round(v * d)) < 0.02]
        assert near_whole and round(near_whole[0] * d) != 2 * near_whole[0]
        for v in near_whole:
            got = slide.read_region(1, v, 3, 40, 10)
            assert max_difference(got, level1[3:13, v : v + 40]) <= 2, v
        # Anywhere else the shift is at most 0.5/d level px: blended a little, never displaced.
        for x0, y0, w, h in [(301, 203, 60, 50), (390, 300, 60, 50), (0, 0, 450, 350)]:
            got = slide.read_region(1, x0, y0, w, h)
            expected = level1[y0 : y0 + h, x0 : x0 + w]
            assert float(np.abs(got.astype(float) - expected).mean()) < 4, (x0, y0)
            # The level's last row and column are not pale (blended with the transparent outside).
            assert max_difference(got[-1], expected[-1]) <= 12 and max_difference(got[:, -1], expected[:, -1]) <= 12


def test_missing_tile_is_white_not_black(tmp_path):
    # A tile with a zero byte count is "missing" for OpenSlide's Aperio reader: transparent,
    # which must come out as white glass.
    pixels = noise(700, 900, seed=3)
    path = write_svs(tmp_path / "missing.svs", pixels)
    with tifffile.TiffFile(path) as tif:
        counts = tif.pages[0].tags["TileByteCounts"]
        assert counts.dtype == 4 and counts.count > 1  # LONG values stored out of line
        offset = counts.valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = b"\0\0\0\0"  # tile (0, 0)
    path.write_bytes(bytes(raw))
    with open_slide(path, backend="openslide") as slide:
        assert (slide.read_region(0, 0, 0, TILE, TILE) == 255).all()
        assert np.array_equal(slide.read_region(0, TILE, 0, TILE, TILE), pixels[:TILE, TILE : 2 * TILE])


def test_over_white_composites_straight_alpha():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    expected = np.array([[[10, 20, 30], [255, 255, 255], [127, 127, 127], [244, 224, 204]]], dtype=np.uint8)
    assert np.array_equal(_over_white(rgba), expected)


def test_large_reads_go_in_pieces_and_match_one_read(tmp_path, monkeypatch):
    pixels = noise(700, 900, seed=4)
    path = write_generic_tiff(tmp_path / "pieces.tif", pixels)
    with open_slide(path, backend="openslide") as slide:
        calls = []
        original = slide._read_piece

        def counting(level, location, size):
            calls.append(size)
            return original(level, location, size)

        monkeypatch.setattr(slide, "_read_piece", counting)
        monkeypatch.setattr(openslide_reader, "READ_PIECE", 128)
        whole = slide.read_region(0, 0, 0, 900, 700)
        assert np.array_equal(whole, pixels)
        assert len(calls) == 8 * 6 and max(max(size) for size in calls) == 128
        assert np.array_equal(slide.read_region(1, 10, 20, 300, 200), pixels[::2, ::2][20:220, 10:310])


# --------------------------------------------------------------------------- a format only OpenSlide reads


def test_hamamatsu_vms_is_routed_to_openslide_by_content(tmp_path):
    index = write_vms(tmp_path / "vms", smooth(128, 512))
    assert detect_format(index) == "hamamatsu"
    with open_slide(index) as slide:  # no backend: chosen from the file's content
        assert (slide.backend, slide.vendor) == ("openslide", "hamamatsu")
        assert (slide.width, slide.height) == (512, 128)
        assert slide.levels[0] == openslide_reader.Level(512, 128, 1.0)
        # The map image and libjpeg's 1/2, 1/4, 1/8 scalings become levels.
        assert [lv.downsample for lv in slide.levels[:4]] == [1.0, 2.0, 4.0, 8.0]
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.objective_power == 20
        assert slide.associated_names() == ("macro",)
        assert slide.read_associated("macro").shape == (64, 96, 3)
        reference = decoded_jpeg_mosaic(index)
        for x, y, w, h in [(0, 0, 512, 128), (200, 30, 150, 60), (250, 0, 20, 128), (500, 120, 40, 40)]:
            got = slide.read_region(0, x, y, w, h)
            assert max_difference(got, reference_region(reference, x, y, w, h)) <= 2, (x, y)
        half = slide.read_region(1, 0, 0, 256, 64)
        assert max_difference(half, reference[::2, ::2]) <= 40  # a real downscale of the same image
        assert float(np.abs(half.astype(float) - reference[::2, ::2]).mean()) < 4


@pytest.mark.parametrize("kind", ["text", "zip", "random"])
def test_unsupported_files_give_one_line_errors(tmp_path, kind):
    path = tmp_path / "not-a-slide.svs"
    if kind == "text":
        path.write_text("patient notes, not a slide\n" * 20, encoding="utf-8")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("slide.txt", "hello")
    else:
        path.write_bytes(np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert detect_format(path) is None
    with pytest.raises(ImageError) as plain_route:
        open_slide(path)
    assert_one_line_error(plain_route, path)
    with pytest.raises(ImageError) as forced:
        open_slide(path, backend="openslide")
    assert_one_line_error(forced, path, "not a slide format OpenSlide can read")


def test_detect_format_never_raises(tmp_path):
    assert detect_format(tmp_path / "missing.svs") is None
    assert detect_format(tmp_path) is None
    assert detect_format("bad\0name.svs") is None


# --------------------------------------------------------------------------- broken files


def test_truncated_and_garbled_files(tmp_path):
    whole = write_svs(tmp_path / "whole.svs", noise(700, 900))
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    garbled = tmp_path / "garbled.svs"
    garbled.write_bytes(b"II*\x00" + np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for path in (truncated, garbled):
        with pytest.raises(ImageError) as caught:
            slide = open_slide(path, backend="openslide")
            # If OpenSlide accepts the header, the lost tiles must fail when read, not crash.
            for level, info in enumerate(slide.levels):
                slide.read_region(level, 0, 0, info.width, info.height)
        assert_one_line_error(caught, path)


def test_broken_vms_pieces(tmp_path):
    index = write_vms(tmp_path / "vms", smooth(128, 512))
    (index.parent / "slide(1,0).jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageError) as caught:
        open_slide(index)
    assert_one_line_error(caught, index, "OpenSlide")


def corrupt_one_tile(path: Path, tile_index: int) -> None:
    """Overwrite the middle of one tile's compressed bytes with noise (headers stay valid)."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[tile_index], tif.pages[0].databytecounts[tile_index]
    raw = bytearray(path.read_bytes())
    raw[offset + 8 : offset + count - 8] = np.random.default_rng(1).integers(0, 256, count - 16, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def test_corrupt_tile_is_an_error_and_the_rest_stays_readable(tmp_path):
    pixels = noise(700, 900, seed=8)
    path = write_svs(tmp_path / "corrupt-tile.svs", pixels)
    corrupt_one_tile(path, 5)  # 4 tiles per row: tile (col 1, row 1)
    with open_slide(path, backend="openslide") as slide:
        for _ in range(2):  # again: the error must not stick to the reader
            with pytest.raises(ImageError) as caught:
                slide.read_region(0, TILE + 10, TILE + 10, 20, 20)
            assert_one_line_error(caught, path, "cannot be decoded")
            # OpenSlide's error latched on that handle; the reader carries on with a fresh one.
            assert np.array_equal(slide.read_region(0, 0, 0, 300, 200), pixels[:200, :300])
            assert np.array_equal(slide.read_region(1, 0, 0, 100, 100), pixels[::2, ::2][:100, :100])


# --------------------------------------------------------------------------- threads and closing


def test_concurrent_reads_match_serial_reads(tmp_path):
    pixels = noise(1400, 1800, seed=11)
    path = write_generic_tiff(tmp_path / "threads.tif", pixels, dpi=None)
    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(120):
        level = int(rng.integers(0, 2))
        w, h = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        x, y = int(rng.integers(-50, 1800 >> level)), int(rng.integers(-50, 1400 >> level))
        jobs.append((level, x, y, w, h))
    levels = [pixels, pixels[::2, ::2]]
    with open_slide(path, backend="openslide") as slide, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: slide.read_region(*job), jobs))
    for job, got in zip(jobs, results):
        level, x, y, w, h = job
        assert np.array_equal(got, reference_region(levels[level], x, y, w, h)), job


def test_concurrent_reads_with_a_corrupt_tile(tmp_path):
    # Threads reading good tiles share the handle that a bad tile latches: they must still get
    # their pixels, and every read of the bad tile must fail with ImageError.
    pixels = noise(700, 900, seed=12)
    path = write_svs(tmp_path / "shared.svs", pixels)
    corrupt_one_tile(path, 5)
    good = [(0, 0, 0, 200, 200), (0, 600, 0, 256, 256), (0, 0, 520, 300, 180), (1, 0, 0, 200, 100)]
    bad = (0, TILE + 5, TILE + 5, 40, 40)
    jobs = (good + [bad]) * 12
    with open_slide(path, backend="openslide") as slide:

        def read(job):
            try:
                return slide.read_region(*job)
            except ImageError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(read, jobs))
    levels = [pixels, pixels[::2, ::2]]
    for job, got in zip(jobs, results):
        if job == bad:
            assert isinstance(got, ImageError) and "\n" not in str(got)
        else:
            assert isinstance(got, np.ndarray), f"{job}: {got}"
            assert np.array_equal(got, reference_region(levels[job[0]], *job[1:])), job


def test_close(tmp_path):
    path = write_generic_tiff(tmp_path / "close.tif", noise(300, 400))
    slide = OpenSlideSlide.open(path)
    assert slide.read_region(0, 0, 0, 10, 10).shape == (10, 10, 3)
    slide.close()
    slide.close()  # twice is harmless
    with pytest.raises(ImageError) as caught:
        slide.read_region(0, 0, 0, 10, 10)
    assert_one_line_error(caught, path, "closed")


def test_open_refuses_missing_files_and_folders(tmp_path):
    for path, words in [(tmp_path / "missing.svs", ["not found"]), (tmp_path, ["folder"])]:
        with pytest.raises(ImageError) as caught:
            OpenSlideSlide.open(path)
        assert_one_line_error(caught, path, *words)

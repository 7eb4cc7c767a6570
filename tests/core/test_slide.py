"""viewer.slide: every image either opens with the right pixels or raises a one-line ImageError.

No QApplication here: this is the Qt-free core.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from viewer.slide import decode as slide_module
from viewer.errors import ImageError, InputError
from viewer.slide import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Slide, max_pixels_setting, open_slide, to_rgb_uint8

RNG = np.random.default_rng(1234)
RGB = RNG.integers(0, 256, (64, 80, 3), dtype=np.uint8)
"""A deterministic 80x64 RGB test image (noise, so any pixel mix-up shows)."""
_yy, _xx = np.mgrid[0:64, 0:80]
SMOOTH = np.dstack([_xx * 3, _yy * 3, 255 - _xx * 2]).astype(np.uint8)
"""A smooth gradient: what lossy JPEG reproduces closely."""


def assert_one_line(info: pytest.ExceptionInfo, path, *words: str) -> str:
    """The message is one line, names the file and contains every word (case-insensitive)."""
    text = str(info.value)
    assert "\n" not in text and "\r" not in text, text
    assert str(path) in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def opened(path, **kwargs) -> Slide:
    result = open_slide(path, **kwargs)
    assert isinstance(result, Slide)
    assert result.read_all().dtype == np.uint8 and result.read_all().ndim == 3 and result.read_all().shape[2] == 3
    assert result.read_all().flags.c_contiguous and not result.read_all().flags.writeable
    assert (result.height, result.width) == result.read_all().shape[:2]
    assert result.name == Path(path).name and result.path == Path(path)
    return result


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------- formats that open


@pytest.mark.parametrize(
    "compression",
    [None, "lzw", "zlib", "packbits", "lzma", "zstd", "webp"],
    ids=lambda c: c or "uncompressed",
)
def test_lossless_tiff_compressions_open_with_exact_pixels(tmp_path, compression):
    if compression is not None:
        import imagecodecs

        codec = {"zlib": "ZLIB", "lzw": "LZW", "packbits": "PACKBITS", "lzma": "LZMA", "zstd": "ZSTD", "webp": "WEBP"}[
            compression
        ]
        if not getattr(imagecodecs, codec).available:
            pytest.skip(f"imagecodecs has no {codec} codec here")
    path = tmp_path / "image.tif"
    kwargs = {"compression": compression, "photometric": "rgb"}
    if compression == "webp":
        kwargs["compressionargs"] = {"level": 100, "lossless": True}
    tifffile.imwrite(path, RGB, **kwargs)
    np.testing.assert_array_equal(opened(path).read_all(), RGB)


def test_jpeg_compressed_tiff_opens_close_to_the_original(tmp_path):
    path = tmp_path / "jpeg.tif"
    smooth = SMOOTH
    tifffile.imwrite(path, smooth, compression="jpeg", compressionargs={"level": 95}, photometric="rgb")
    pixels = opened(path).read_all()
    assert pixels.shape == smooth.shape
    assert np.abs(pixels.astype(int) - smooth).mean() < 3


@pytest.mark.parametrize(
    "layout",
    [
        {"tile": (32, 32)},
        {"tile": (16, 48)},
        {"rowsperstrip": 7},
        {"rowsperstrip": 1, "compression": "zlib"},
        {"planarconfig": "separate"},
        {"planarconfig": "separate", "compression": "lzw"},
        {"bigtiff": True},
        {"bigtiff": True, "compression": "zlib", "tile": (32, 32)},
        {"byteorder": ">"},
    ],
    ids=["tiled", "tiled-odd", "striped", "one-row-strips-deflate", "planar", "planar-lzw", "bigtiff", "bigtiff-tiled-deflate", "big-endian"],
)
def test_tiff_layouts_open_with_exact_pixels(tmp_path, layout):
    path = tmp_path / "layout.tif"
    array = RGB
    if "tile" in layout:  # tiles must be multiples of 16
        array = np.ascontiguousarray(np.pad(RGB, ((0, 0), (0, 16), (0, 0))))
    if layout.get("planarconfig") == "separate":
        tifffile.imwrite(path, np.moveaxis(array, -1, 0), photometric="rgb", **layout)
    else:
        tifffile.imwrite(path, array, photometric="rgb", **layout)
    np.testing.assert_array_equal(opened(path).read_all(), array)


def test_real_brecahad_tiff_opens(shared_data_dir):
    path = sorted((shared_data_dir / "images").glob("*.tif"))[0]
    result = opened(path)
    assert (result.width, result.height) == (1360, 1024)
    np.testing.assert_array_equal(result.read_all(), tifffile.imread(path))
    assert not result.notes


def test_png_rgb_rgba_grey_16bit_palette_and_1bit(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(opened(tmp_path / "rgb.png").read_all(), RGB)

    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one fully transparent pixel: composited over white
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    result = opened(tmp_path / "rgba.png")
    expected = RGB.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(result.read_all(), expected)
    assert any("alpha" in note for note in result.notes)

    grey = RGB[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    result = opened(tmp_path / "grey.png")
    np.testing.assert_array_equal(result.read_all(), np.repeat(grey[..., None], 3, axis=2))
    assert any("grey" in note for note in result.notes)

    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    result = opened(tmp_path / "grey16.png")
    np.testing.assert_array_equal(result.read_all()[..., 0], grey)
    assert any("16-bit" in note for note in result.notes)

    Image.fromarray(RGB).convert("P").save(tmp_path / "palette.png")
    assert opened(tmp_path / "palette.png").read_all().shape == RGB.shape

    Image.fromarray(grey > 127).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(opened(tmp_path / "bits.png").read_all()[..., 0], np.where(grey > 127, 255, 0))


def test_jpeg_rgb_grey_and_cmyk(tmp_path):
    smooth = SMOOTH
    Image.fromarray(smooth).save(tmp_path / "rgb.jpg", quality=95)
    assert np.abs(opened(tmp_path / "rgb.jpg").read_all().astype(int) - smooth).mean() < 3

    Image.fromarray(smooth[..., 1]).save(tmp_path / "grey.jpeg", quality=95)
    result = opened(tmp_path / "grey.jpeg")
    assert np.abs(result.read_all()[..., 0].astype(int) - smooth[..., 1]).mean() < 3
    assert any("grey" in note for note in result.notes)

    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    result = opened(tmp_path / "cmyk.jpg")
    assert result.read_all().shape == smooth.shape
    assert np.abs(result.read_all().astype(int) - smooth).mean() < 6


def test_content_decides_the_format_not_the_suffix(tmp_path):
    path = tmp_path / "really_a_png.tif"
    Image.fromarray(RGB).save(path, format="PNG")
    np.testing.assert_array_equal(opened(path).read_all(), RGB)


def test_pillow_bomb_limit_does_not_override_ours(tmp_path, monkeypatch):
    """Pillow's own decompression-bomb check (and its stderr warning) must not apply."""
    from PIL import Image as PILImage

    path = tmp_path / "normal.png"
    Image.fromarray(RGB).save(path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse 5120 px
    np.testing.assert_array_equal(opened(path).read_all(), RGB)
    with pytest.raises(ImageError) as info:
        open_slide(path, max_pixels=100)
    assert_one_line(info, path, "limit", "HISTOVIEWER_MAX_PIXELS")


# --------------------------------------------------------------------------- pixel conversions


def test_single_channel_tiff_is_grey(tmp_path):
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, RGB[..., 2])
    result = opened(path)
    np.testing.assert_array_equal(result.read_all(), np.repeat(RGB[..., 2:3], 3, axis=2))
    assert any("grey" in note for note in result.notes)


def test_16bit_tiff_is_scaled_by_its_bit_depth(tmp_path):
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, RGB.astype(np.uint16) * 257, photometric="rgb")  # full 16-bit range
    result = opened(path)
    np.testing.assert_array_equal(result.read_all(), RGB)
    assert any("16-bit" in note for note in result.notes)

    path12 = tmp_path / "u12.tif"  # a 12-bit scanner: 0..4095 must not come out nearly black
    tifffile.imwrite(path12, (RGB.astype(np.uint16) << 4) | 0xF, photometric="rgb")
    assert np.abs(opened(path12).read_all().astype(int) - RGB).max() <= 1


@pytest.mark.parametrize(
    ("scale", "note"), [(1 / 255, "[0, 1]"), (1.0, "[0, 255]"), (10.0, "stretched")], ids=["unit", "byte", "other"]
)
def test_float_tiff(tmp_path, scale, note):
    path = tmp_path / "float.tif"
    data = RGB.astype(np.float32) * np.float32(scale)
    data[0, 0] = (0.0, 0.0, 0.0)
    data[0, 1] = (255 * scale,) * 3  # a known full range, so 'stretched' maps back exactly
    tifffile.imwrite(path, data, photometric="rgb")
    result = opened(path)
    expected = RGB.copy()
    expected[0, 0], expected[0, 1] = 0, 255
    assert np.abs(result.read_all().astype(int) - expected).max() <= 1
    assert any(note in n for n in result.notes), result.notes


def test_rgba_tiff_is_composited_over_white(tmp_path):
    path = tmp_path / "rgba.tif"
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    rgba[:, :10, 3] = 0
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=[2])
    result = opened(path)
    assert (result.read_all()[:, :10] == 255).all()
    np.testing.assert_array_equal(result.read_all()[:, 10:], RGB[:, 10:])


@pytest.mark.parametrize("pages", [2, 5])
def test_multipage_stack_shows_the_first_page_and_says_so(tmp_path, pages):
    path = tmp_path / "stack.tif"
    stack = np.stack([np.roll(RGB, k, axis=1) for k in range(pages)])
    tifffile.imwrite(path, stack, photometric="rgb")
    result = opened(path)
    np.testing.assert_array_equal(result.read_all(), stack[0])
    assert any(f"{pages} pages" in note and "first" in note for note in result.notes), result.notes


def test_separate_series_show_the_first_and_say_so(tmp_path):
    path = tmp_path / "series.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(RGB, photometric="rgb")
        writer.write(RGB[:40, :40, 0])
    result = opened(path)
    np.testing.assert_array_equal(result.read_all(), RGB)
    assert any("2 image series" in note for note in result.notes)


def test_grey_stack_first_page(tmp_path):
    path = tmp_path / "grey_stack.tif"
    stack = RNG.integers(0, 256, (4, 40, 50), dtype=np.uint8)
    tifffile.imwrite(path, stack, photometric="minisblack")
    result = opened(path)
    np.testing.assert_array_equal(result.read_all()[..., 0], stack[0])


def test_to_rgb_uint8_refusals_and_notes():
    with pytest.raises(ImageError) as info:
        to_rgb_uint8(np.full((40, 40), np.nan, np.float32), "nan.tif")
    assert_one_line(info, "nan.tif", "NaN")
    with pytest.raises(ImageError, match="negative"):
        to_rgb_uint8(np.full((40, 40), -1, np.int16), "neg.tif")
    with pytest.raises(ImageError, match="complex"):
        to_rgb_uint8(np.zeros((40, 40), np.complex64), "c.tif")
    with pytest.raises(ImageError, match="2 channels"):
        to_rgb_uint8(np.zeros((40, 40, 2), np.uint8), "two.tif")
    with pytest.raises(ImageError, match="layout"):
        to_rgb_uint8(np.zeros((2, 40, 40, 3), np.uint8), "4d.tif")
    notes: list[str] = []
    out = to_rgb_uint8(np.zeros((40, 40, 6), np.uint8), "six.tif", notes)
    assert out.shape == (40, 40, 3) and any("6 channels" in n for n in notes)
    assert to_rgb_uint8(np.ones((40, 40), bool), "b.tif").max() == 255


# --------------------------------------------------------------------------- files that are refused


@pytest.mark.parametrize(("width", "height"), [(31, 64), (64, 31), (10, 10), (1, 1)])
def test_images_smaller_than_one_window_are_refused(tmp_path, width, height):
    path = tmp_path / f"small_{width}x{height}.tif"
    tifffile.imwrite(path, RGB[:height, :width], photometric="rgb")
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, f"{width}x{height}", "32x32")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.tif"
    path.write_bytes(np.random.default_rng(5).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "not a TIFF, JPEG or PNG")


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (b'{"tumor": [{"x": 0.5, "y": 0.5}]}', "JSON"),
        (b"\xef\xbb\xbf[1, 2, 3]", "JSON"),
        (b"just some notes about the slide\n", "text"),
        (b"PK\x03\x04\x14\x00\x00\x00", "zip"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"BM6\x00\x00\x00\x00\x00", "BMP"),
    ],
    ids=["pdf", "json", "json-bom", "text", "zip", "gif", "bmp"],
)
def test_non_images_renamed_to_tif_are_refused_with_a_hint(tmp_path, content, hint):
    path = tmp_path / "renamed.tif"
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "not a TIFF, JPEG or PNG", hint)


def _truncation_points(size: int) -> list[int]:
    return sorted({4, 8, 12, 16, 40, 100, 200, size // 4, size // 2, size - 100, size - 1})


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["uncompressed", "deflate"])
def test_truncated_tiff_is_refused_at_every_point(tmp_path, compression):
    data = tiff_bytes(RGB, photometric="rgb", compression=compression, rowsperstrip=16)
    for n in _truncation_points(len(data)):
        path = tmp_path / f"truncated_{n}.tif"
        path.write_bytes(data[:n])
        with pytest.raises(ImageError) as info:
            open_slide(path)
        assert_one_line(info, path)


def test_truncated_pixel_data_is_named_as_truncated(tmp_path):
    data = tiff_bytes(RGB, photometric="rgb")
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "truncated")


@pytest.mark.parametrize("compression", ["zlib", "lzw"])
def test_corrupt_compressed_strip_is_refused(tmp_path, compression):
    data = bytearray(tiff_bytes(RGB, photometric="rgb", compression=compression, rowsperstrip=16))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset = tif.pages[0].dataoffsets[1]
    for k in range(10, 30):
        data[offset + k] ^= 0xFF
    path = tmp_path / "corrupt.tif"
    path.write_bytes(bytes(data))
    # TIFFs are read lazily: the header opens, decoding the damaged strip fails.
    with pytest.raises(ImageError) as info:
        open_slide(path).read_all()
    assert_one_line(info, path, "corrupt")


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_png_and_jpeg(tmp_path, kind):
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format=kind.upper())
    data = buf.getvalue()
    for n in (3, 8, 20, 60, len(data) // 2, len(data) - 40):
        path = tmp_path / f"cut_{n}.{kind}"
        path.write_bytes(data[:n])
        with pytest.raises(ImageError) as info:
            open_slide(path)
        assert_one_line(info, path)


def test_missing_file_folder_and_bad_names(tmp_path):
    with pytest.raises(ImageError) as info:
        open_slide(tmp_path / "nope.tif")
    assert_one_line(info, tmp_path / "nope.tif", "not found")
    with pytest.raises(ImageError) as info:
        open_slide(tmp_path)
    assert_one_line(info, tmp_path, "folder")
    long_name = tmp_path / ("a" * 300 + ".tif")  # used to escape as OSError(ENAMETOOLONG)
    with pytest.raises(ImageError) as info:
        open_slide(long_name)
    assert_one_line(info, "aaaa", "too long")
    with pytest.raises(ImageError, match="valid file name"):  # used to escape as ValueError
        open_slide("bad\0name.tif")
    under_a_file = tmp_path / "plain.txt"
    under_a_file.write_text("x")
    with pytest.raises(ImageError, match="not found"):
        open_slide(under_a_file / "x.tif")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.tif"
    os.mkfifo(path)  # opening it for reading would block forever
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_refused():
    with pytest.raises(ImageError, match="not a regular file"):
        open_slide("/dev/zero")


# --------------------------------------------------------------------------- unreadable files


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads chmod-000 files anyway")
def test_chmod_000_file_is_unreadable(tmp_path):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, RGB, photometric="rgb")
    path.chmod(0)
    try:
        with pytest.raises(ImageError) as info:
            open_slide(path)
        assert_one_line(info, path, "permission denied")
    finally:
        path.chmod(0o644)


def test_unreadable_file_via_access_check(tmp_path, monkeypatch):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, RGB, photometric="rgb")
    monkeypatch.setattr(slide_module.os, "access", lambda p, mode, **kw: False)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "permission denied")


def test_unreadable_file_via_open(tmp_path, monkeypatch):
    """os.access can say yes and open() still fail (ACLs, network file systems)."""
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, RGB, photometric="rgb")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(slide_module, "open", refuse, raising=False)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "permission denied")


def test_read_error_inside_the_decoder_is_a_read_error(tmp_path, monkeypatch):
    path = tmp_path / "flaky.tif"
    tifffile.imwrite(path, RGB, photometric="rgb")

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tifffile, "TiffFile", broken)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "cannot be read", "Input/output error")


# --------------------------------------------------------------------------- sizes and limits


def crafted_tiff(width: int, height: int, *, samples: int = 1, big_endian: bool = False) -> bytes:
    """A 230-byte TIFF whose header declares width x height 8-bit pixels (one 16-byte strip)."""
    e = ">" if big_endian else "<"
    photometric = 1 if samples == 1 else 2
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, photometric),
        (273, 4, 1, 200),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    out = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8) + struct.pack(e + "H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack(e + "HH", value, 0) if kind == 3 else struct.pack(e + "I", value)
        out += struct.pack(e + "HHI", tag, kind, count) + packed
    out += struct.pack(e + "I", 0)
    return out.ljust(216, b"\0")


def crafted_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# TIFFs are read by regions, so their size alone is no reason to refuse; a 230-byte file that
# declares 10^10 uncompressed pixels is refused as truncated. PNGs are decoded whole: the limit.
_TIFF_WORDS = ("100000x100000", "truncated")
_PNG_WORDS = ("above the limit", "HISTOVIEWER_MAX_PIXELS")


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("huge_le.tif", crafted_tiff(100_000, 100_000), _TIFF_WORDS),
        ("huge_be.tif", crafted_tiff(100_000, 100_000, big_endian=True), _TIFF_WORDS),
        ("huge_rgb.tif", crafted_tiff(100_000, 100_000, samples=3), _TIFF_WORDS),
        ("huge.png", crafted_png(100_000, 100_000), _PNG_WORDS),
        ("wide.png", crafted_png(2**31 - 1, 2), _PNG_WORDS),
    ],
)
def test_enormous_declared_dimensions_are_refused_before_allocating(tmp_path, name, data, words):
    path = tmp_path / name
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as info:
            open_slide(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(info, path, *words)
    assert peak < 20_000_000, f"allocated {peak} bytes before refusing"


def test_absurd_samples_per_pixel_refused_from_the_header(tmp_path):
    path = tmp_path / "samples.tif"
    path.write_bytes(crafted_tiff(5000, 5000, samples=60000))  # 1.5 TB if decoded
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "60000 samples per pixel")


def test_pixel_limit_argument(tmp_path):
    # One compressed strip holding the whole image has to be decoded whole: limited when opened.
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", compression="zlib", rowsperstrip=64)
    assert opened(path, max_pixels=80 * 64).width == 80
    with pytest.raises(ImageError) as info:
        open_slide(path, max_pixels=80 * 64 - 1)
    text = assert_one_line(info, path, "80x64", "5120 pixels", "above the limit of 5119 pixels")
    assert "0 megapixels" not in text  # used to say 'above the limit of 0 megapixels'
    with pytest.raises(ValueError):
        open_slide(path, max_pixels=0)
    # Uncompressed pixels are read by rows: the image opens, loading it whole keeps to the limit.
    rows = tmp_path / "rows.tif"
    tifffile.imwrite(rows, RGB, photometric="rgb")
    slide = open_slide(rows, max_pixels=80 * 64 - 1)
    np.testing.assert_array_equal(slide.read_region(0, 0, 10, 80, 30), RGB[10:40])
    with pytest.raises(ImageError) as info:
        slide.read_all()
    assert_one_line(info, rows, "80x64", "too large to load whole", "limit 5119")


def test_pixel_limit_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    Image.fromarray(RGB).save(path)
    monkeypatch.setenv("HISTOVIEWER_MAX_PIXELS", "5000")
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "above the limit")
    assert opened(path, max_pixels=10_000).width == 80  # the argument wins over the variable
    for value, expected in (("4e8", 400_000_000), ("1_000_000", 1_000_000), (" 6000 ", 6000), ("", DEFAULT_MAX_PIXELS)):
        monkeypatch.setenv("HISTOVIEWER_MAX_PIXELS", value)
        assert max_pixels_setting() == expected


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.5", "nan", "inf"])
def test_invalid_pixel_limit_variable_is_reported_not_ignored(tmp_path, monkeypatch, value):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, RGB, photometric="rgb")
    monkeypatch.setenv("HISTOVIEWER_MAX_PIXELS", value)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert "HISTOVIEWER_MAX_PIXELS" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, InputError)


# --------------------------------------------------------------------------- damaged metadata


def test_damaged_tags_become_a_note_not_stderr_output(tmp_path, capfd):
    """tifffile logs bad tags; those lines must not reach stderr (the CLI promises one line)."""
    data = bytearray(tiff_bytes(RGB, photometric="rgb", description="x" * 64))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags["ImageDescription"]
        value_offset_position = tag.offset + 8  # tag code, type, count, then the value offset
    data[value_offset_position : value_offset_position + 4] = struct.pack("<I", 0x7FFFFF00)
    path = tmp_path / "bad_tag.tif"
    path.write_bytes(bytes(data))
    result = opened(path)
    np.testing.assert_array_equal(result.read_all(), RGB)
    assert any("damaged" in note for note in result.notes), result.notes
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_image_suffixes_are_lowercase_with_dots():
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg"} <= set(IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- directory chains


def _with_next_ifd(data: bytes, page: int, target_page: int | None, *, big: bool = False) -> bytes:
    """Point page ``page``'s next-directory offset at page ``target_page`` (None: at itself)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        offsets = [p.offset for p in tif.pages]
    count_fmt, count_size, entry_size, offset_fmt = ("<Q", 8, 20, "<Q") if big else ("<H", 2, 12, "<I")
    at = offsets[page]
    entries = struct.unpack(count_fmt, data[at : at + count_size])[0]
    pointer = at + count_size + entries * entry_size
    target = offsets[page if target_page is None else target_page]
    out = bytearray(data)
    out[pointer : pointer + struct.calcsize(offset_fmt)] = struct.pack(offset_fmt, target)
    return bytes(out)


@pytest.mark.parametrize(
    ("pages", "loop_from", "loop_to", "big"),
    [(2, 1, 0, False), (3, 2, 1, False), (1, 0, None, False), (2, 1, 0, True)],
    ids=["two-page-loop", "three-page-loop", "self-loop", "bigtiff-loop"],
)
def test_looped_directory_chain_is_refused_quickly(tmp_path, pages, loop_from, loop_to, big):
    """Found by fuzzing: two directories pointing at each other kept tifffile busy forever."""
    import time

    stack = np.stack([RGB] * pages) if pages > 1 else RGB
    data = _with_next_ifd(tiff_bytes(stack, photometric="rgb", bigtiff=big), loop_from, loop_to, big=big)
    path = tmp_path / "loop.tif"
    path.write_bytes(data)
    start = time.monotonic()
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert time.monotonic() - start < 5
    assert_one_line(info, path, "loops back")


def test_too_many_pages_are_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([RGB] * 4), photometric="rgb")
    monkeypatch.setattr(slide_module, "MAX_TIFF_PAGES", 3)
    with pytest.raises(ImageError) as info:
        open_slide(path)
    assert_one_line(info, path, "more than 3 pages")
    monkeypatch.setattr(slide_module, "MAX_TIFF_PAGES", 4)
    assert any("4 pages" in n for n in opened(path).notes)


# --------------------------------------------------------------------------- memory bounds


def test_decode_budget_refuses_wide_pixel_types_from_the_header(tmp_path):
    """float64 RGBA needs 32 bytes per pixel: a small compressed file could expand to tens of GB."""
    path = tmp_path / "f64rgba.tif"
    data = np.zeros((40, 40, 4), np.float64)
    data[..., 3] = 1.0
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=[2], compression="zlib")
    with pytest.raises(ImageError) as info:
        open_slide(path, max_pixels=1600)  # 1600 px allowed, but 51 kB to decode > 8 bytes/px
    assert_one_line(info, path, "to decode", "HISTOVIEWER_MAX_PIXELS")
    assert opened(path, max_pixels=6400).width == 40


@pytest.mark.parametrize(
    "pixels",
    [
        RNG.integers(0, 4096, (70, 90, 3), dtype=np.uint16),
        RNG.integers(0, 300, (70, 90), dtype=np.int32),
        RNG.random((70, 90, 3), dtype=np.float32),
        RNG.random((70, 90, 3)) * 1000 - 5,
        RNG.integers(0, 256, (70, 90, 4), dtype=np.uint8),
        RNG.random((70, 90, 4), dtype=np.float32),
        RNG.integers(0, 2, (70, 90), dtype=np.uint8).astype(bool),
    ],
    ids=["u12", "i32", "f32-unit", "f64-stretch", "rgba8", "rgba-float", "bool"],
)
def test_conversion_in_row_blocks_matches_whole_array(monkeypatch, pixels):
    whole = to_rgb_uint8(pixels, "x.tif")
    monkeypatch.setattr(slide_module, "_BLOCK_ELEMENTS", 100)  # ~1 row per block
    blocks = to_rgb_uint8(pixels, "x.tif")
    np.testing.assert_array_equal(blocks, whole)
    assert blocks.dtype == np.uint8 and blocks.shape == (70, 90, 3)

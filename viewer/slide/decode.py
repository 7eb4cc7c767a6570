"""Decode a whole image file into an RGB uint8 array: the plain reader's format checks.

BreCaHAD ships uncompressed TIFF; derivatives ship deflate/LZW/JPEG-compressed TIFF, BigTIFF,
or plain JPEG/PNG. Everything is converted to one representation, a C-contiguous (H, W, 3)
uint8 array, because that is what the display (pyqtgraph's fast path), the ConvNet (scaled to
[0, 1]) and the exporter all want. Anything that cannot be converted sensibly is refused with an
:class:`~viewer.errors.ImageError` naming the file and the problem, *before* large allocations.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from viewer import PATCH_SIZE
from viewer.errors import ImageError, os_reason, stat_input_file

DEFAULT_MAX_PIXELS = 400_000_000
"""Largest image (width x height) opened by default: 20k x 20k, 1.2 GB as RGB.

Override with the ``HISTOVIEWER_MAX_PIXELS`` environment variable or the ``max_pixels`` argument.
The check reads only the file header, so a forged header cannot make us allocate."""

IMAGE_SUFFIXES = (".tif", ".tiff", ".svs", ".jpg", ".jpeg", ".png")
"""File name endings offered in open dialogs and accepted by drag and drop."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


MAX_TIFF_PAGES = 100_000
"""TIFF files with more image directories (pages) than this are refused before tifffile parses them.

tifffile builds an object per page to find the image series; a forged directory chain (or a loop
that tifffile does not notice, e.g. two directories pointing at each other) would otherwise keep
it busy for minutes or forever on a 6 kB file."""

MAX_CHANNELS = 16
"""Images with more samples per pixel than this are refused before decoding (RGB(A) has 3-4)."""


def max_pixels_setting() -> int:
    """The configured pixel limit (``HISTOVIEWER_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`).

    Accepts whole numbers written as ``400000000``, ``400_000_000`` or ``4e8``. A value that is
    not a positive whole number raises :class:`ImageError` instead of being silently ignored:
    a user who raised the limit must not be refused with the default one.
    """
    raw = os.environ.get("HISTOVIEWER_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        value = int(number) if math.isfinite(number) and number == int(number) else 0
    if value <= 0:
        raise ImageError(
            f"HISTOVIEWER_MAX_PIXELS={raw[:40]!r} is not a positive whole number of pixels "
            f"(for example {DEFAULT_MAX_PIXELS})"
        )
    return value


def decode_image(path: str | Path, *, max_pixels: int | None = None, head: bytes | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode a whole TIFF, JPEG or PNG file into ``(pixels, notes)``: (H, W, 3) uint8, read-only.

    The plain reader for images that fit in memory. Raises :class:`ImageError` with a one-line
    message for anything that cannot be shown.
    """
    path = Path(path)
    if max_pixels is None:
        limit = max_pixels_setting()
    else:
        limit = int(max_pixels)
        if limit <= 0:
            raise ValueError(f"max_pixels must be positive, not {max_pixels!r}")
    head = read_head(path) if head is None else head
    notes: list[str] = []
    try:
        if head.startswith(_TIFF_MAGIC):
            pixels = _read_tiff(path, limit, notes)
        elif head.startswith(_JPEG_MAGIC) or head.startswith(_PNG_MAGIC):
            pixels = _read_with_pillow(path, head, limit, notes)
        else:
            raise ImageError(f"is not a TIFF, JPEG or PNG image, nor a slide format OpenSlide reads ({_sniff(head)})", path)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("is too large to fit in memory", path) from exc
    except RecursionError as exc:
        raise ImageError("is corrupt: its structure is nested or looped too deeply to read", path) from exc
    except OSError as exc:
        if exc.errno is not None:  # a read error from the OS, not a codec complaining
            raise ImageError(f"cannot be read ({os_reason(exc)})", path) from exc
        raise ImageError(f"is corrupt or truncated and cannot be decoded ({_describe(exc)})", path) from exc
    except Exception as exc:  # codec and parser errors come in many types
        raise ImageError(f"is corrupt or truncated and cannot be decoded ({_describe(exc)})", path) from exc
    rgb = to_rgb_uint8(pixels, path, notes)
    height, width = rgb.shape[:2]
    if height < PATCH_SIZE or width < PATCH_SIZE:
        raise ImageError(
            f"is {width}x{height} px; images must be at least {PATCH_SIZE}x{PATCH_SIZE} px "
            "(the size of one ConvNet window)",
            path,
        )
    rgb = np.ascontiguousarray(rgb)
    rgb.setflags(write=False)
    return rgb, notes


def read_head(path: Path) -> bytes:
    """The first 16 bytes of a readable regular file (ImageError for anything else)."""
    st = stat_input_file(path, ImageError, "an image file")
    if st.st_size == 0:
        raise ImageError("is empty (0 bytes)", path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except PermissionError:
        raise ImageError("cannot be read (permission denied)", path) from None
    except OSError as exc:
        raise ImageError(f"cannot be read ({os_reason(exc)})", path) from None
    if not head:
        raise ImageError("is empty (0 bytes)", path)
    return head


def _sniff(head: bytes) -> str:
    """Say what a file that is not an image looks like, so the message helps."""
    known = (
        (b"%PDF", "it is a PDF document"),
        (b"PK\x03\x04", "it is a zip archive"),
        (b"GIF8", "it is a GIF image; convert it to PNG or TIFF"),
        (b"BM", "it is a BMP image; convert it to PNG or TIFF"),
        (b"\x89HDF", "it is an HDF5 file"),
        (b"\x93NUMPY", "it is a NumPy array file"),
    )
    for magic, what in known:
        if head.startswith(magic):
            return what
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "it is a WebP image; convert it to PNG or TIFF"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "it looks like JSON text; annotation files go in the annotations option"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it looks like a text file"
    return "unrecognised file header"


def _check_size(path: Path, width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"declares an empty image ({width}x{height} px)", path)
    if width * height > limit:
        raise ImageError(
            f"is {width}x{height} px ({_pixels_text(width * height)}), above the limit of "
            f"{_pixels_text(limit)}; raise HISTOVIEWER_MAX_PIXELS to open it",
            path,
        )


def _pixels_text(count: int) -> str:
    if count >= 10_000_000:
        return f"{count / 1e6:.0f} megapixels"
    if count >= 100_000:
        return f"{count / 1e6:.1f} megapixels"
    return f"{count} pixels"


def _check_channels(path: Path, channels: int, itemsize: int, width: int, height: int, limit: int) -> None:
    """Refuse, from the header alone, pixel layouts that would need a huge decode buffer."""
    if channels > MAX_CHANNELS:
        raise ImageError(f"has {channels} samples per pixel; expected grey, RGB or RGBA", path)
    # Budget: 8 bytes per allowed pixel (16-bit RGBA at the limit; 8-bit RGB needs 3). Beyond
    # that a small compressed file could expand to tens of GB (e.g. float64 RGBA zeros).
    if width * height * channels * itemsize > limit * 8:
        raise ImageError(
            f"needs {width * height * channels * itemsize / 1e9:.1f} GB to decode, above what the "
            "pixel limit allows; raise HISTOVIEWER_MAX_PIXELS to open it",
            path,
        )


class _LogCollector(logging.Handler):
    """Collects tifffile's log records per thread instead of letting them reach stderr.

    tifffile *logs* (rather than raises) when it skips damaged tags; left alone, Python's
    last-resort handler would print them, breaking the CLI's one-line error contract. While a
    thread reads a TIFF the records are collected and summarised in the slide's notes; records
    from other threads (tifffile's decode pool) are dropped.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        bucket = getattr(self._local, "records", None)
        if bucket is not None and len(bucket) < 100:
            try:
                bucket.append(record.getMessage())
            except Exception:  # pragma: no cover - a malformed record must not break reading
                bucket.append(str(record.msg))

    def start(self) -> list[str]:
        self._local.records = []
        return self._local.records

    def stop(self) -> None:
        self._local.records = None


_TIFF_LOG = _LogCollector()
logging.getLogger("tifffile").addHandler(_TIFF_LOG)


@contextlib.contextmanager
def collect_tiff_log(notes: list[str]) -> Iterator[None]:
    """Collect what tifffile logs in this thread while the block runs; summarise it in ``notes``."""
    records = _TIFF_LOG.start()
    try:
        yield
    finally:
        _TIFF_LOG.stop()
        if records:
            notes.append(
                f"the file has {len(records)} damaged or unusual TIFF tag(s) that were ignored "
                f"(first: {_one_line(records[0])})"
            )


def _read_tiff(path: Path, limit: int, notes: list[str]) -> np.ndarray:
    with collect_tiff_log(notes):
        data, axes = _read_tiff_first_plane(path, limit, notes)
    return _first_plane(data, axes, notes)


def _check_ifd_chain(path: Path, max_pages: int | None = None) -> int:
    """Walk the chain of TIFF image directories without decoding anything; return its length.

    Refuses a chain that loops back on itself or is absurdly long. Damage beyond that (offsets
    past the end of the file, truncated directories) is left for tifffile to report.
    """
    import struct

    max_pages = MAX_TIFF_PAGES if max_pages is None else max_pages
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(0)
        header = fh.read(16)
        order = "<" if header[:2] == b"II" else ">"
        version = struct.unpack(order + "H", header[2:4])[0]
        if version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
            if len(header) < 16:
                return 0
            offset = struct.unpack(order + "Q", header[8:16])[0]
            count_fmt, count_size, entry_size, offset_fmt, offset_size, first = "Q", 8, 20, "Q", 8, 16
        else:
            if len(header) < 8:
                return 0
            offset = struct.unpack(order + "I", header[4:8])[0]
            count_fmt, count_size, entry_size, offset_fmt, offset_size, first = "H", 2, 12, "I", 4, 8
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise ImageError("is corrupt: its chain of image directories loops back on itself", path)
            if offset < first or offset + count_size > size:
                break
            seen.add(offset)
            if len(seen) > max_pages:
                raise ImageError(
                    f"has more than {max_pages} pages (image directories); it is damaged or not a slide image",
                    path,
                )
            fh.seek(offset)
            entries = struct.unpack(order + count_fmt, fh.read(count_size))[0]
            next_at = offset + count_size + entries * entry_size
            if next_at + offset_size > size:
                break
            fh.seek(next_at)
            offset = struct.unpack(order + offset_fmt, fh.read(offset_size))[0]
    return len(seen)


def _read_tiff_first_plane(path: Path, limit: int, notes: list[str]) -> tuple[np.ndarray, str]:
    import tifffile

    _check_ifd_chain(path)
    with warnings.catch_warnings():
        # tifffile warns (rather than raising) about some damaged tags; the decode below
        # still fails loudly if the pixels are unusable.
        warnings.simplefilter("ignore")
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageError("contains no image data (no readable image in the TIFF structure)", path)
            series = tif.series[0]
            axes = series.axes
            shape = tuple(int(n) for n in series.shape)
            if "Y" not in axes or "X" not in axes:
                raise ImageError(f"has no 2-D image plane (axes {axes})", path)
            width, height = shape[axes.index("X")], shape[axes.index("Y")]
            _check_size(path, width, height, limit)
            if len(tif.series) > 1:
                notes.append(f"file holds {len(tif.series)} image series; showing the first")
            pages = len(series.pages)
            first = series.pages[0] if pages else None
            if first is None:
                raise ImageError("contains no image data (no readable image in the TIFF structure)", path)
            page_shape = tuple(int(n) for n in first.shape)
            page_axes = first.axes
            channels = page_shape[page_axes.index("S")] if "S" in page_axes else 1
            others = int(np.prod([n for a, n in zip(page_axes, page_shape) if a not in "YXS"], dtype=np.int64))
            itemsize = np.dtype(first.dtype).itemsize if first.dtype is not None else 8
            _check_channels(path, channels * max(others, 1), itemsize, width, height, limit)
            _check_not_truncated(tif, series, path)
            if pages > 1:
                # Read only the first page: a 1000-page stack must not be loaded whole.
                notes.append(f"multi-page image ({pages} pages); showing the first")
                return first.asarray(), first.axes
            return series.asarray(), axes


def _check_not_truncated(tif, series, path: Path) -> None:
    """tifffile silently zero-fills strips that lie past the end of the file; refuse instead."""
    size = tif.filehandle.size
    for page in series.pages[:1]:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for offset, count in zip(offsets, counts):
            if offset + count > size or (count == 0 and offset == 0 and page.compression == 1):
                raise ImageError("is truncated: its image data ends before the header says it should", path)


def _first_plane(data: np.ndarray, axes: str, notes: list[str]) -> np.ndarray:
    """Reduce a tifffile array with named axes to (Y, X) or (Y, X, S)."""
    index: list[object] = []
    dropped: list[str] = []
    for axis, size in zip(axes, data.shape):
        if axis in "YXS":
            index.append(slice(None))
        else:
            index.append(0)
            if size > 1:
                dropped.append(f"{size} {_AXIS_NAMES.get(axis, axis)}")
    if dropped:
        notes.append(f"multi-page image ({', '.join(dropped)}); showing the first")
    plane = data[tuple(index)]
    kept = [a for a in axes if a in "YXS"]
    order = [kept.index(a) for a in "YXS" if a in kept]
    return np.transpose(plane, order)


_AXIS_NAMES = {"I": "pages", "Z": "z-planes", "T": "time points", "C": "channels", "Q": "planes", "R": "levels"}


def _read_with_pillow(path: Path, head: bytes, limit: int, notes: list[str]) -> np.ndarray:
    # The format plugins are used directly rather than Image.open(): Image.open applies
    # Pillow's own decompression-bomb limit (~179 megapixels, and a warning printed to stderr
    # above ~89), which would override HISTOVIEWER_MAX_PIXELS. _check_size below is the limit.
    from PIL import JpegImagePlugin, PngImagePlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if head.startswith(_PNG_MAGIC):
            img = PngImagePlugin.PngImageFile(os.fspath(path))
        else:
            img = JpegImagePlugin.jpeg_factory(os.fspath(path))
        with img:
            width, height = img.size
            _check_size(path, width, height, limit)
            _check_channels(path, len(img.getbands()), 4, width, height, limit)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"multi-frame image with {frames} frames; showing the first")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return np.asarray(img)
            if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
                return np.asarray(img.convert("RGBA"))
            if img.mode in ("L", "1"):
                return np.asarray(img.convert("L"))
            return np.asarray(img.convert("RGB"))


def to_rgb_uint8(pixels: np.ndarray, path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """Convert grey, 16-bit, float or RGBA pixels to (H, W, 3) uint8, noting what was done.

    Conversions run over blocks of rows, so the temporaries stay small (tens of MB) whatever the
    image size: only the input and the uint8 result are ever whole in memory.
    """
    notes = [] if notes is None else notes
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        notes.append("single-channel image shown as grey")
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageError(f"has unsupported pixel layout (shape {arr.shape})", path)
    channels = arr.shape[-1]
    if channels not in (1, 3, 4):
        if channels > 4 and channels < MAX_CHANNELS:
            notes.append(f"{channels} channels; the first three shown as RGB")
            arr = arr[..., :3]
        else:
            raise ImageError(f"has {channels} channels; expected grey, RGB or RGBA", path)
    arr = _to_uint8(arr, path, notes)
    if arr.shape[-1] == 4:
        # Transparent regions of slide scans are background glass: composite over white.
        arr = _by_rows(arr, 3, _over_white)
        notes.append("alpha channel composited over white")
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


_BLOCK_ELEMENTS = 1 << 22
"""Array elements converted per block of rows (4 M: a float64 temporary of 32 MB)."""


def _by_rows(arr: np.ndarray, out_channels: int, convert) -> np.ndarray:
    """Apply ``convert`` (block -> uint8 block) over blocks of rows into one uint8 result."""
    height = arr.shape[0]
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_ELEMENTS // per_row)
    out = np.empty((height, arr.shape[1], out_channels), dtype=np.uint8)
    for start in range(0, height, step):
        out[start : start + step] = convert(arr[start : start + step])
    return out


def _over_white(block: np.ndarray) -> np.ndarray:
    alpha = block[..., 3:4].astype(np.uint16)
    rgb = block[..., :3].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _all_finite(arr: np.ndarray) -> bool:
    step = max(1, _BLOCK_ELEMENTS // max(1, int(np.prod(arr.shape[1:], dtype=np.int64))))
    return all(np.isfinite(arr[start : start + step]).all() for start in range(0, arr.shape[0], step))


def _to_uint8(arr: np.ndarray, path: str | Path, notes: list[str]) -> np.ndarray:
    kind = arr.dtype.kind
    channels = arr.shape[-1]
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return _by_rows(arr, channels, lambda b: b.astype(np.uint8) * np.uint8(255))
    if kind in "ui":
        top = int(arr.max(initial=0))
        if kind == "i":
            if int(arr.min(initial=0)) < 0:
                raise ImageError("has negative pixel values; expected an RGB photograph of a slide", path)
            notes.append(f"signed {arr.dtype.itemsize * 8}-bit image scaled to 8 bits")
        else:
            notes.append(f"{arr.dtype.itemsize * 8}-bit image scaled to 8 bits")
        # Many 16-bit scanners use only 10-14 bits: scale by the data's bit depth, not 65535,
        # so the image is not shown nearly black.
        bits = max(8, top.bit_length())
        scale = 255.0 / ((1 << bits) - 1)
        return _by_rows(arr, channels, lambda b: (b.astype(np.float64) * scale + 0.5).astype(np.uint8))
    if kind == "f":
        if not _all_finite(arr):
            raise ImageError("has NaN or infinite pixel values", path)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            notes.append("floating-point image in [0, 1] scaled to 8 bits")
            offset, scale = 0.0, 255.0
        elif lo >= 0.0 and hi <= 255.0:
            notes.append("floating-point image in [0, 255] converted to 8 bits")
            offset, scale = 0.0, 1.0
        else:
            notes.append(f"floating-point image with range [{lo:g}, {hi:g}] stretched to 8 bits")
            offset, scale = lo, (255.0 / (hi - lo) if hi > lo else 0.0)

        def convert(block: np.ndarray) -> np.ndarray:
            scaled = (block.astype(np.float64) - offset) * scale
            return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

        return _by_rows(arr, channels, convert)
    raise ImageError(f"has unsupported pixel type {arr.dtype}", path)


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}"[:160] if text else type(exc).__name__

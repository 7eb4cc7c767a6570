"""The TIFF-family reader: SVS, NDPI, SCN, OME-TIFF, pyramidal and plain 8-bit RGB/grey TIFF.

tifffile parses the structure; pixels are read through zarr (``series.aszarr(level=k)``), so a
region read decodes only the tiles or strips under it. Uncompressed contiguous images (such as
BreCaHAD's originals) are read row by row straight from the file instead, because their single
strip can be the whole image.

Only 8-bit RGB(A) or grey images are taken; anything else (16-bit, float, stacks, planar
layouts) is refused with :class:`NotThisBackend` so the plain reader converts it as before.
Before any pixel is read, the header is checked per level: data past the end of the file, all
tiles missing, a size the file cannot hold, or tiles too large to decode at once are refused
with one-line :class:`ImageError`\\ s.
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from viewer import PATCH_SIZE
from viewer.errors import ImageError, os_reason
from viewer.slide.decode import (
    _check_ifd_chain,
    _describe,
    _over_white,
    _pixels_text,
    collect_tiff_log,
    max_pixels_setting,
    to_rgb_uint8,
)
from viewer.slide.source import Level, NotThisBackend, SlideSource, checked_mpp

MAX_DECLARED_PIXELS = 10**12
"""No scanner makes a level this large (the largest slides are ~2e10 px): a damaged header."""

MAX_COMPRESSION_RATIO = 20_000
"""Decoded bytes per stored byte above which a level's header cannot be believed.

JPEG slides compress ~10-50:1, deflate at most ~1000:1 even on blank glass."""

ASSOCIATED = ("thumbnail", "label", "macro")
"""Series names (lower case) that tifffile gives a slide's associated images."""

MAX_ASSOCIATED_PIXELS = 50_000_000
"""Associated images are decoded whole; larger ones are not offered."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

_VENDORS = (
    ("is_svs", "aperio"),
    ("is_ndpi", "hamamatsu"),
    ("is_scn", "leica"),
    ("is_philips", "philips"),
    ("is_bif", "ventana"),
    ("is_ome", "ome"),
)

_PHOTOMETRIC_MINISBLACK, _PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 1, 2, 6
_COMPRESSION_NONE, _COMPRESSION_JPEG = 1, 7

_LENGTH_UNITS_IN_UM = {
    "µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "pm": 1e-6,
    "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6, "in": 25400.0,
}  # fmt: skip


class TiffSlide(SlideSource):
    """A TIFF-family slide read by regions with tifffile + zarr. Thread-safe."""

    backend = "tiff"

    def __init__(self, path: Path, tif, levels: list, *, limit: int, read_all_limit: int | None) -> None:
        super().__init__()
        self.path = path
        self._tif = tif
        self._read_all_limit = read_all_limit
        self._closed = False
        self._guard = threading.Lock()
        first = levels[0].keyframe
        self.vendor = next((name for flag, name in _VENDORS if _flag(tif, flag)), "generic-tiff")
        self._samples = _samples(levels[0])
        self._readers = [_level_reader(path, k, series, tif.filehandle.size, limit) for k, series in enumerate(levels)]
        w0, h0 = self._readers[0].width, self._readers[0].height
        if w0 < PATCH_SIZE or h0 < PATCH_SIZE:
            raise ImageError(
                f"is {w0}x{h0} px; images must be at least {PATCH_SIZE}x{PATCH_SIZE} px "
                "(the size of one ConvNet window)",
                path,
            )
        for k, reader in enumerate(self._readers):
            if reader.missing:
                self.notes.append(f"{reader.missing} {reader.unit} of level {k} are missing from the file; shown as white")
        self.native_levels = tuple(
            Level(r.width, r.height, (w0 / r.width + h0 / r.height) / 2) if k else Level(w0, h0, 1.0)
            for k, r in enumerate(self._readers)
        )
        chunks = first.chunks
        self.tile_size = (int(chunks[1]), int(chunks[0])) if first.is_tiled else (w0, min(int(first.rowsperstrip or h0), h0))
        self.properties = _properties(tif, first)
        self.mpp = checked_mpp(_mpp(tif, first, self.notes), self.notes)
        self._associated = _associated_series(tif, self.notes)
        others = len(tif.series) - 1 - len(self._associated)
        if others > 0:
            self.notes.append(f"file holds {others + 1} image series; showing the first")
        if self._samples == 1:
            self.notes.append("single-channel image shown as grey")
        elif self._samples == 4:
            self.notes.append("alpha channel composited over white")
        self._finish_levels()

    # Opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, head: bytes, *, max_pixels: int | None = None) -> TiffSlide:
        """Open a TIFF lazily (headers only). :class:`NotThisBackend` when it is not an 8-bit
        RGB/grey image (``"try-openslide"`` when tifffile cannot make sense of it)."""
        import tifffile

        path = Path(path)
        if not head.startswith(_TIFF_MAGIC):
            raise NotThisBackend("not a TIFF file")
        # The largest block decoded at once, and the default limit of read_all().
        limit = max_pixels_setting() if max_pixels is None else int(max_pixels)
        log_notes: list[str] = []
        tif = None
        try:
            _check_ifd_chain(path)  # loops and absurd page counts, before tifffile walks them
            with collect_tiff_log(log_notes), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tifffile warns about some damaged tags; checked below
                try:
                    tif = tifffile.TiffFile(path)
                    series = tif.series
                except (MemoryError, RecursionError, OSError):
                    raise
                except Exception as exc:  # tifffile's parse errors come in many types
                    raise NotThisBackend("try-openslide") from exc
                levels = _slide_levels(tif, series)
                slide = cls(path, tif, levels, limit=limit, read_all_limit=max_pixels)
            slide.notes.extend(log_notes)
            return slide
        except BaseException as exc:
            if tif is not None:
                tif.close()
            if isinstance(exc, (ImageError, NotThisBackend)):
                raise
            if isinstance(exc, OSError) and exc.errno is not None:
                raise ImageError(f"cannot be read ({os_reason(exc)})", path) from exc
            if isinstance(exc, MemoryError):
                raise ImageError("is too large to fit in memory", path) from exc
            if isinstance(exc, RecursionError):
                raise ImageError("is corrupt: its structure is nested or looped too deeply to read", path) from exc
            if isinstance(exc, Exception):
                raise NotThisBackend("try-openslide") from exc
            raise

    # Reading ------------------------------------------------------------------------------
    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._closed:
            raise ImageError("was closed; open it again to read it", self.path)
        try:
            block = self._readers[level].read(x, y, w, h)
        except ImageError:
            raise
        except Exception as exc:  # codec errors come in many types
            if self._closed:
                raise ImageError("was closed while being read", self.path) from exc
            raise ImageError(
                f"is corrupt: level {level} region x={x}, y={y}, {w}x{h} px cannot be decoded ({_describe(exc)})",
                self.path,
            ) from exc
        return _to_rgb(block)

    def read_all(self, level: int = 0, *, max_pixels: int | None = None) -> np.ndarray:
        """A whole level in memory; the default limit is the one the slide was opened with."""
        return super().read_all(level, max_pixels=self._read_all_limit if max_pixels is None else max_pixels)

    def associated_names(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def read_associated(self, name: str) -> np.ndarray:
        series = self._associated[name]  # KeyError for names the file does not hold
        if self._closed:
            raise ImageError("was closed; open it again to read it", self.path)
        try:
            pixels = series.asarray()
        except Exception as exc:
            raise ImageError(f"has a damaged {name} image ({_describe(exc)})", self.path) from exc
        return np.ascontiguousarray(to_rgb_uint8(pixels, self.path, []))

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
        for reader in self._readers:
            reader.close()
        with self._tif.filehandle.lock:  # let a read in progress finish its seek and read first
            self._tif.close()


# --------------------------------------------------------------------------- which TIFFs


def _flag(tif, name: str) -> bool:
    try:
        return bool(getattr(tif, name))
    except Exception:  # a damaged first page can make tifffile's format probes fail
        return False


def _slide_levels(tif, series: list) -> list:
    """The first series' pyramid levels if they hold 8-bit RGB(A) or grey images, else refuse."""
    import tifffile

    vendor_format = any(_flag(tif, flag) for flag, _ in _VENDORS[:5])
    refuse = "try-openslide" if vendor_format else "not an 8-bit RGB or grey image"
    if not series:
        raise NotThisBackend("try-openslide")
    first = series[0]
    page = first.keyframe
    if page is None or first.dtype != np.uint8 or not _is_plane(first):
        raise NotThisBackend(refuse)
    samples = _samples(first)
    photometric = int(page.photometric)
    if samples == 1 and photometric != _PHOTOMETRIC_MINISBLACK:
        raise NotThisBackend(refuse)  # palette, inverted grey, masks: the plain reader's conversions
    if samples in (3, 4) and photometric != _PHOTOMETRIC_RGB and not (
        photometric == _PHOTOMETRIC_YCBCR and samples == 3 and page.compression == _COMPRESSION_JPEG
    ):
        raise NotThisBackend(refuse)  # CMYK, Lab, raw YCbCr
    if samples not in (1, 3, 4):
        raise NotThisBackend(refuse)
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        raise NotThisBackend("try-openslide") from None  # a codec imagecodecs lacks (OpenSlide may have it)
    levels = [first]
    for level in first.levels[1:]:
        kf = level.keyframe
        if (
            kf is None or level.dtype != np.uint8 or not _is_plane(level) or _samples(level) != samples
            or level.shape[0] >= levels[-1].shape[0] or level.shape[1] >= levels[-1].shape[1]
        ):
            break  # keep the consistent top of the pyramid; the base class adds virtual levels
        levels.append(level)
    return levels


def _is_plane(series) -> bool:
    return series.axes in ("YX", "YXS") and len(series.shape) == len(series.axes)


def _samples(series) -> int:
    return int(series.shape[2]) if series.axes == "YXS" else 1


# --------------------------------------------------------------------------- per-level readers


def _level_reader(path: Path, index: int, series, file_size: int, limit: int):
    """Check one level's header against the file (no pixel is read) and return its reader."""
    page, kf = series.pages[0] if len(series.pages) == 1 else None, series.keyframe
    if page is None or kf is None:
        raise NotThisBackend("try-openslide")
    height, width, samples = int(series.shape[0]), int(series.shape[1]), _samples(series)
    where = "the full-resolution level (level 0)" if index == 0 else f"pyramid level {index}"
    if width <= 0 or height <= 0:
        raise ImageError(f"declares an empty image ({width}x{height} px) in {where}", path)
    if width * height > MAX_DECLARED_PIXELS:
        raise ImageError(f"declares an absurd size of {width}x{height} px for {where}; its header is damaged", path)
    offsets = [int(o) for o in page.dataoffsets]
    if kf.compression == _COMPRESSION_NONE and page.is_contiguous and kf.is_final and offsets and offsets[0] > 0:
        needed = width * height * samples
        if offsets[0] + needed > file_size:
            raise ImageError(
                f"is truncated: {where} ({width}x{height} px) needs {needed} bytes of pixel data "
                f"but the file ends {max(0, file_size - offsets[0])} bytes after it starts",
                path,
            )
        return _RowReader(page.parent.filehandle, offsets[0], width, height, samples)
    missing, unit = _check_chunks(path, where, page, kf, width, height, samples, file_size, limit)
    return _ZarrReader(series, width, height, samples, missing=missing, unit=unit)


def _check_chunks(path: Path, where: str, page, kf, width: int, height: int, samples: int, file_size: int, limit: int) -> tuple[int, str]:
    """Refuse a tiled or striped level whose tile table cannot be right; return how many of its
    tiles (or strips) are missing, and which of the two it has."""
    offsets = [int(o) for o in page.dataoffsets]
    counts = [int(c) for c in page.databytecounts]
    expected = int(np.prod(kf.chunked, dtype=np.int64))
    chunk_h, chunk_w = (int(n) for n in kf.chunks[:2])
    chunk_px = chunk_h * chunk_w
    unit = "tiles" if kf.is_tiled else "strips"
    per_row = int(kf.chunked[1]) if kf.is_tiled and len(kf.chunked) > 1 else 1
    if len(offsets) < expected - per_row:  # some writers leave out the last row of tiles, no more
        raise ImageError(
            f"declares {width}x{height} px for {where}, which needs {expected} {unit}, but lists only "
            f"{len(offsets)}; its header is damaged",
            path,
        )
    present = [(i, o, c) for i, (o, c) in enumerate(zip(offsets[:expected], counts[:expected])) if o > 0 and c > 0]
    if not present:
        raise ImageError(f"has no image data for {where}: all its {expected} {unit} are missing", path)
    beyond = sum(1 for _, o, c in present if o + c > file_size)
    if beyond:
        raise ImageError(f"is truncated: {beyond} of the {expected} {unit} of {where} lie past the end of the file", path)
    stored = sum(c for _, _, c in present)
    if kf.compression == _COMPRESSION_NONE:
        for i, _, count in present:
            rows = chunk_h if kf.is_tiled else min(chunk_h, height - i * chunk_h)
            if count < rows * chunk_w * samples:
                raise ImageError(f"is truncated or damaged: {unit} of {where} hold fewer bytes than their pixels need", path)
    elif len(present) * chunk_px * samples > stored * MAX_COMPRESSION_RATIO:
        raise ImageError(
            f"declares {width}x{height} px for {where} but stores only {stored} bytes of image data for it; "
            "its header is damaged",
            path,
        )
    if chunk_px > limit:  # every read decodes at least one whole tile or strip
        if chunk_h >= height and chunk_w >= width:
            raise ImageError(
                f"is {width}x{height} px ({_pixels_text(width * height)}), above the limit of "
                f"{_pixels_text(limit)}; raise HISTOVIEWER_MAX_PIXELS to open it",
                path,
            )
        raise ImageError(
            f"stores {where} in {unit} of {chunk_w}x{chunk_h} px ({_pixels_text(chunk_px)} each), above the "
            f"limit of {_pixels_text(limit)} decoded at once; raise HISTOVIEWER_MAX_PIXELS to open it",
            path,
        )
    return expected - len(present), unit


class _ZarrReader:
    """Regions of one level through tifffile's zarr store: only the chunks under them are decoded.

    tifffile's store serialises its file reads with the file handle's lock (set here), and decodes
    outside it, so one store serves every thread; ``maxworkers`` > 1 makes it decode on worker
    threads instead of blocking zarr's single event loop."""

    def __init__(self, series, width: int, height: int, samples: int, *, missing: int, unit: str) -> None:
        self.width, self.height, self.samples = width, height, samples
        self.missing, self.unit = missing, unit
        self._series = series
        self._array = None
        self._store = None
        self._lock = threading.Lock()
        series.keyframe.parent.filehandle.set_lock(True)
        # tifffile builds a page's decoder on first use and, for JPEG, peeks at the file without
        # its lock while doing so: build it now, while only the opening thread uses the file.
        series.keyframe.init_decode()

    def _zarr(self):
        with self._lock:
            if self._array is None:
                import zarr

                # Missing (sparse) tiles read as white glass, like OpenSlide's transparent tiles.
                self._store = self._series.aszarr(level=0, fillvalue=255, maxworkers=4)
                self._array = zarr.open(self._store, mode="r", zarr_format=2)
            return self._array

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        block = np.asarray(self._zarr()[y : y + h, x : x + w])
        return block.reshape(h, w, self.samples)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._array = None


class _RowReader:
    """Regions of an uncompressed contiguous image, read row by row from the file."""

    def __init__(self, filehandle, offset: int, width: int, height: int, samples: int) -> None:
        self.width, self.height, self.samples = width, height, samples
        self.missing, self.unit = 0, "rows"
        self._fh = filehandle
        self._fh.set_lock(True)
        self._offset = offset

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        row = self.width * self.samples
        out = np.empty((h, w, self.samples), np.uint8)
        whole_rows = w * 2 >= self.width  # one read beats h small ones when most of each row is wanted
        with self._fh.lock:
            if whole_rows:
                self._fh.seek(self._offset + y * row)
                data = self._fh.read(h * row)
                if len(data) != h * row:
                    raise EOFError("the file ends inside the image data")
                out[:] = np.frombuffer(data, np.uint8).reshape(h, self.width, self.samples)[:, x : x + w]
            else:
                for r in range(h):
                    self._fh.seek(self._offset + (y + r) * row + x * self.samples)
                    data = self._fh.read(w * self.samples)
                    if len(data) != w * self.samples:
                        raise EOFError("the file ends inside the image data")
                    out[r] = np.frombuffer(data, np.uint8).reshape(w, self.samples)
        return out

    def close(self) -> None:
        pass


def _to_rgb(block: np.ndarray) -> np.ndarray:
    if block.shape[2] == 3:
        return block
    if block.shape[2] == 4:
        return _over_white(block)
    return np.repeat(block, 3, axis=2)


# --------------------------------------------------------------------------- metadata


def _associated_series(tif, notes: list[str]) -> dict:
    """``{name: series}`` of the thumbnail, label and macro images that can be decoded safely."""
    found: dict = {}
    size = tif.filehandle.size
    for series in tif.series[1:]:
        name = (series.name or "").strip().lower()
        if name not in ASSOCIATED or name in found:
            continue
        page = series.keyframe
        pixels = int(np.prod(series.shape[:2], dtype=np.int64)) if len(series.shape) >= 2 else 0
        extents = list(zip(page.dataoffsets, page.databytecounts)) if page is not None else []
        if not 0 < pixels <= MAX_ASSOCIATED_PIXELS or not extents or any(o <= 0 or c <= 0 or o + c > size for o, c in extents):
            notes.append(f"the {name} image is damaged or too large and is not offered")
            continue
        try:
            page.init_decode()  # as for the levels: not lazily, from a reading thread
        except Exception:
            notes.append(f"the {name} image cannot be decoded and is not offered")
            continue
        found[name] = series
    return found


def _mpp(tif, page, notes: list[str]) -> tuple[float, float] | None:
    """µm per level-0 pixel from the vendor metadata or the resolution tags (unchecked)."""
    if _flag(tif, "is_svs"):
        fields = _svs_fields(page.description)
        try:
            value = float(fields["MPP"])
            return value, value
        except (KeyError, ValueError):
            pass
    if _flag(tif, "is_ome"):
        size = _ome_pixel_size(tif, notes)
        if size is not None:
            return size
    return _resolution_mpp(page)


def _svs_fields(description: str) -> dict[str, str]:
    """``key = value`` fields of an Aperio ImageDescription (after the header line)."""
    fields: dict[str, str] = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def _ome_pixel_size(tif, notes: list[str]) -> tuple[float, float] | None:
    try:
        root = ElementTree.fromstring(tif.ome_metadata or "")
    except ElementTree.ParseError:
        notes.append("the OME-XML metadata cannot be parsed; pixel size unknown")
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    values = []
    for axis in ("X", "Y"):
        raw = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib.get("PhysicalSizeX"))
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in _LENGTH_UNITS_IN_UM:
            notes.append(f"OME pixel size unit {unit[:20]!r} is not a length unit HistoViewer knows; pixel size unknown")
            return None
        try:
            values.append(float(raw) * _LENGTH_UNITS_IN_UM[unit])
        except ValueError:
            return None
    return values[0], values[1]


def _resolution_mpp(page) -> tuple[float, float] | None:
    """From XResolution/YResolution (pixels per unit) and ResolutionUnit."""
    per_unit = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}  # inch, cm, mm, µm (µm per unit)
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    if unit not in per_unit:
        return None  # 1 = no absolute unit
    values = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name, tags["XResolution"])
        try:
            numerator, denominator = tag.value
            resolution = numerator / denominator
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if not math.isfinite(resolution) or resolution <= 0:
            return None
        values.append(per_unit[unit] / resolution)
    return values[0], values[1]


_PROPERTY_TAGS = (
    "ImageDescription", "Software", "Make", "Model", "DateTime", "Artist", "HostComputer",
    "XResolution", "YResolution", "ResolutionUnit", "Compression", "Photometric",
)  # fmt: skip


def _properties(tif, page) -> dict[str, str]:
    """Flat ``str -> str`` metadata: baseline tags as ``tiff.*``, vendor fields by vendor."""
    props: dict[str, str] = {}
    for name in _PROPERTY_TAGS:
        tag = page.tags.get(name)
        if tag is None:
            continue
        value = tag.value
        if name == "ImageDescription" and len(str(value)) > 4000:
            continue  # OME/SCN XML: parsed below instead of copied whole
        props[f"tiff.{name}"] = _text(getattr(value, "name", value))
    if _flag(tif, "is_svs"):
        props["aperio.Header"] = page.description.split("|")[0].splitlines()[0].strip()
        for key, value in _svs_fields(page.description).items():
            props[f"aperio.{key}"] = value
        if "aperio.AppMag" in props:
            props["objective-power"] = props["aperio.AppMag"]
    if _flag(tif, "is_ndpi"):
        try:
            for key, value in (page.ndpi_tags or {}).items():
                if key not in ("McuStarts", "McuStartsHighBytes"):
                    props[f"hamamatsu.{key}"] = _text(value)
        except Exception:  # damaged vendor tags: keep the rest
            pass
        if "hamamatsu.Magnification" in props:
            props["objective-power"] = props["hamamatsu.Magnification"]
    if _flag(tif, "is_ome"):
        try:
            root = ElementTree.fromstring(tif.ome_metadata or "")
            for el in root.iter():
                tag = el.tag.rsplit("}", 1)[-1]
                if tag == "Pixels":
                    for key, value in el.attrib.items():
                        props.setdefault(f"ome.{key}", value)
                elif tag == "Objective" and "NominalMagnification" in el.attrib:
                    props.setdefault("objective-power", el.attrib["NominalMagnification"])
        except ElementTree.ParseError:
            pass
    if not props.get("objective-power"):
        props.pop("objective-power", None)
    return props


def _text(value: object, limit: int = 4000) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

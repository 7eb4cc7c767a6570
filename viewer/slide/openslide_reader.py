"""The OpenSlide reader: whole-slide formats tifffile cannot read (MRXS, VMS, Philips, Ventana...).

The openslide-bin wheel ships the C library; openslide-python (>= 1.4) finds it by itself.

Three properties of OpenSlide shape this module:

- ``read_region`` takes its location in **level-0** pixels while :class:`SlideSource` works in the
  requested level's pixels, so locations are converted (see :meth:`OpenSlideSlide._read_native`).
- Errors *latch*: once a call on an ``OpenSlide`` object fails (a corrupt tile, an I/O error),
  every later call on that object fails too (openslide.h, "Error Handling"). One bad tile must
  not make the rest of the slide unreadable, so a failed handle is retired and the next read
  opens a fresh one.
- Every function except ``openslide_close`` is thread-safe (openslide.h): many threads read
  through one handle at once, and a handle is closed only when no read is using it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from viewer.errors import ImageError, stat_input_file
from viewer.slide.source import BACKGROUND, Level, SlideSource, checked_mpp

READ_PIECE = 2048
"""Largest side, in level pixels, of one OpenSlide ``read_region`` call.

OpenSlide fills a w x h x 4-byte buffer per call and the Python binding copies it once more, so a
big request is read in pieces of at most 2048 x 2048 (16 MB each) straight into the result."""


def detect_format(path: str | Path) -> str | None:
    """OpenSlide's vendor name for the file (``"aperio"``, ``"hamamatsu"``, ``"mirax"``...),
    or ``None`` when OpenSlide does not recognise it. Never raises."""
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # OpenSlide missing, unreadable file, odd name: "not OpenSlide's"
        return None


class _Handle:
    """One ``openslide.OpenSlide`` object and the number of reads currently using it."""

    def __init__(self, slide) -> None:
        self.slide = slide
        self.users = 0


class OpenSlideSlide(SlideSource):
    """A slide read through OpenSlide. Thread-safe."""

    backend = "openslide"

    def __init__(self, path: Path, slide) -> None:
        """Describe an opened ``openslide.OpenSlide``; use :meth:`open` rather than this."""
        super().__init__()
        self.path = Path(path)
        self.properties = {str(k): str(v) for k, v in slide.properties.items()}
        self.vendor = self.properties.get("openslide.vendor") or detect_format(self.path) or "?"
        sizes, downsamples = slide.level_dimensions, slide.level_downsamples
        if not sizes or any(w <= 0 or h <= 0 for w, h in sizes):
            raise ImageError(f"OpenSlide reports no usable pyramid levels ({list(sizes)})", self.path)
        self.native_levels = tuple(Level(int(w), int(h), float(d)) for (w, h), d in zip(sizes, downsamples))
        self.mpp = checked_mpp(self._recorded_mpp(), self.notes)
        self.objective_power = _positive_float(self.properties.get("openslide.objective-power"))
        """Magnification of the scanner objective (20, 40...) if recorded; often inaccurate."""
        tile = (
            _positive_int(self.properties.get("openslide.level[0].tile-width")),
            _positive_int(self.properties.get("openslide.level[0].tile-height")),
        )
        if tile[0] and tile[1]:
            self.tile_size = (tile[0], tile[1])
        self._associated = tuple(slide.associated_images.keys())
        self._lock = threading.Lock()
        self._current: _Handle | None = _Handle(slide)
        self._closed = False
        self._finish_levels()

    @classmethod
    def open(cls, path: str | Path) -> OpenSlideSlide:
        """Open ``path`` with OpenSlide; :class:`ImageError` (one line) when it cannot."""
        path = Path(path)
        stat_input_file(path, ImageError, "a slide file")
        openslide = _import_openslide(path)
        try:
            slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise ImageError("is not a slide format OpenSlide can read", path) from None
        except openslide.OpenSlideError as exc:
            raise ImageError(f"is a slide OpenSlide recognises but cannot open ({_describe(exc)})", path) from None
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageError(f"cannot be opened by OpenSlide ({_describe(exc)})", path) from None
        try:
            return cls(path, slide)
        except Exception as exc:
            slide.close()
            if isinstance(exc, (ImageError, MemoryError)):
                raise
            raise ImageError(f"cannot be opened by OpenSlide ({_describe(exc)})", path) from None

    def _recorded_mpp(self) -> tuple[float, float] | None:
        raw_x, raw_y = self.properties.get("openslide.mpp-x"), self.properties.get("openslide.mpp-y")
        if raw_x is None and raw_y is None:
            return None
        try:
            x = float(raw_x if raw_x is not None else raw_y)
            y = float(raw_y if raw_y is not None else raw_x)
        except ValueError:
            return (float("nan"), float("nan"))  # checked_mpp notes it as invalid
        if raw_x is None or raw_y is None:
            self.notes.append("the file records the pixel size in one direction only; square pixels assumed")
        return (x, y)

    # Description --------------------------------------------------------------------------
    def associated_names(self) -> tuple[str, ...]:
        return self._associated

    def info(self) -> dict:
        return super().info() | {"objective_power": self.objective_power}

    # Reading ------------------------------------------------------------------------------
    def read_associated(self, name: str) -> np.ndarray:
        if name not in self._associated:
            raise KeyError(name)
        with self._borrow() as handle:
            try:
                image = handle.slide.associated_images[name]
            except _openslide_error() as exc:
                self._retire(handle)
                raise ImageError(f"associated image {name!r} cannot be decoded ({_describe(exc)})", self.path) from None
        # The binding returns straight (not premultiplied) RGBA.
        return _over_white(np.asarray(image))

    def _read_native(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level ``level`` pixels ``[y, y+h) x [x, x+w)``, read in pieces of :data:`READ_PIECE`.

        OpenSlide wants the location in level-0 pixels: ``round(x * downsample)``. For integer
        downsamples (every level of most slides) this is exact. For a non-integer downsample
        (e.g. 2.0025 for a 450 px level of a 901 px slide) OpenSlide maps the location back to
        ``round(x * d) / d``, up to ``0.5 / d`` level pixels off the pixel grid, and paints the
        tiles at that sub-pixel offset: pixels may be blended slightly (about 1 grey level on
        smooth tissue) with their neighbours. Each piece is located on its own, so a region
        read whole or piece by piece is the same.
        """
        info = self.native_levels[level]
        d = info.downsample
        out = np.empty((h, w, 3), dtype=np.uint8)
        for py in range(0, h, READ_PIECE):
            for px in range(0, w, READ_PIECE):
                pw, ph = min(READ_PIECE, w - px), min(READ_PIECE, h - py)
                location = (round((x + px) * d), round((y + py) * d))
                rgba = self._read_piece(level, location, (pw, ph))
                piece = out[py : py + ph, px : px + pw]
                piece[...] = _over_white(rgba)
                if d != int(d):
                    # Shifted by a fraction of a pixel, the level's last column/row is painted
                    # partly from beyond the edge (transparent). Straight RGB there is the
                    # slide's own colour; blending it with white would draw a pale line.
                    if x + px + pw == info.width:
                        _opaque_where_painted(piece[:, -1], rgba[:, -1])
                    if y + py + ph == info.height:
                        _opaque_where_painted(piece[-1], rgba[-1])
        return out

    def _read_piece(self, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Straight-alpha RGBA ``(h, w, 4)`` of one OpenSlide ``read_region`` call."""
        with self._borrow() as handle:
            try:
                return np.asarray(handle.slide.read_region(location, level, size))
            except _openslide_error():
                self._retire(handle)
            except MemoryError:
                raise
            except Exception as exc:  # not OpenSlide's own error: the handle is still good
                raise self._region_error(level, location, size, exc) from None
        # The shared handle failed, perhaps latched by another thread's bad tile: read this piece
        # alone on a private handle to tell a bad region from a good one caught in someone's error.
        openslide = _import_openslide(self.path)
        try:
            with openslide.OpenSlide(str(self.path)) as private:
                return np.asarray(private.read_region(location, level, size))
        except MemoryError:
            raise
        except Exception as exc:
            raise self._region_error(level, location, size, exc) from None

    def _region_error(self, level: int, location: tuple[int, int], size: tuple[int, int], exc: Exception) -> ImageError:
        return ImageError(
            f"level {level} region at level-0 ({location[0]}, {location[1]}), {size[0]}x{size[1]} px, "
            f"cannot be decoded ({_describe(exc)})",
            self.path,
        )

    # Handles ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _borrow(self) -> Iterator[_Handle]:
        """The current handle, counted as in use until the ``with`` block ends."""
        with self._lock:
            if self._closed:
                raise ImageError("was closed; open it again to read it", self.path)
            if self._current is None:  # retired after an error: reopen
                openslide = _import_openslide(self.path)
                try:
                    self._current = _Handle(openslide.OpenSlide(str(self.path)))
                except Exception as exc:
                    raise ImageError(f"cannot be reopened by OpenSlide after an error ({_describe(exc)})", self.path) from None
            handle = self._current
            handle.users += 1
        try:
            yield handle
        finally:
            with self._lock:
                handle.users -= 1
                retired = handle is not self._current
                if retired and handle.users == 0:
                    handle.slide.close()  # openslide_close must not overlap any other call on it

    def _retire(self, handle: _Handle) -> None:
        """Stop handing out ``handle`` (its error has latched); the last user closes it."""
        with self._lock:
            if self._current is handle:
                self._current = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handle, self._current = self._current, None
            if handle is not None and handle.users == 0:
                handle.slide.close()
            # Otherwise the read still using it closes it when it finishes (see _borrow).


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of straight-alpha RGBA composited over white.

    Transparent pixels are where the slide has no data (outside the scanned area, or between the
    scanned tiles of a MIRAX slide): white, like the glass. The C library returns premultiplied
    ARGB; openslide-python converts it to straight RGBA, hence the blend here.
    """
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.size == 0 or int(alpha.min()) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    # rgb*a + 255*(255-a) <= 255*255, so uint16 holds it; +127 rounds to nearest.
    mixed = (rgb.astype(np.uint16) * a + BACKGROUND * (255 - a) + 127) // 255
    return mixed.astype(np.uint8)


def _opaque_where_painted(rgb: np.ndarray, rgba: np.ndarray) -> None:
    """Set ``rgb`` to ``rgba``'s colour wherever some of the slide was painted (alpha > 0)."""
    painted = rgba[..., 3] > 0
    rgb[painted] = rgba[painted, :3]


def _import_openslide(path: Path):
    try:
        import openslide
    except Exception as exc:  # ImportError, or OSError when the C library cannot load
        raise ImageError(f"needs OpenSlide to be read, and it cannot be loaded ({_describe(exc)})", path) from None
    return openslide


def _openslide_error() -> type[Exception]:
    import openslide

    return openslide.OpenSlideError


def _describe(exc: BaseException) -> str:
    from viewer.slide.decode import _describe as describe

    return describe(exc)


def _positive_float(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None

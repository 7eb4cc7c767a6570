"""Slides and images: one interface (:class:`SlideSource`), readers chosen by file content.

``open_slide(path)`` returns a :class:`SlideSource` for anything HistoViewer can show:

- the TIFF family (SVS, NDPI, SCN, OME-TIFF, pyramidal and plain RGB TIFF): ``tiff`` reader,
  tifffile + zarr, reading only the tiles under each request;
- other whole-slide formats (MRXS, VMS, Philips, Ventana, DICOM...) and TIFFs the first reader
  refuses: ``openslide`` reader (the openslide-bin wheel ships the C library);
- JPEG, PNG and TIFFs that are not RGB slides (16-bit, float, stacks): ``plain`` reader, decoded
  whole within the configured pixel limit.

The reader is chosen by the file's bytes, not its name. Every failure is an
:class:`~viewer.errors.ImageError` with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from viewer.errors import ImageError
from viewer.slide.decode import DEFAULT_MAX_PIXELS, max_pixels_setting, read_head, to_rgb_uint8
from viewer.slide.source import Level, NotThisBackend, SlideSource, checked_mpp

IMAGE_SUFFIXES = (
    ".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf", ".ome.tif", ".ome.tiff", ".mrxs", ".vms", ".vmu",
    ".bif", ".dcm", ".jpg", ".jpeg", ".png",
)
"""File name endings offered in open dialogs and accepted by drag and drop."""

Slide = SlideSource
"""Older name of :class:`SlideSource`."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PLAIN_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "Level", "Slide", "SlideSource", "checked_mpp", "max_pixels_setting",
    "open_slide", "to_rgb_uint8",
]


def open_slide(path: str | Path, *, max_pixels: int | None = None, backend: str | None = None) -> SlideSource:
    """Open an image or whole-slide file lazily; only the header is read here.

    ``max_pixels`` limits images the plain reader decodes whole (default: the
    ``HISTOVIEWER_MAX_PIXELS`` setting); tiled slides have no size limit since they are read by
    regions. ``backend`` forces a reader (``"tiff"``, ``"openslide"`` or ``"plain"``).
    """
    path = Path(path)
    if max_pixels is not None and int(max_pixels) <= 0:
        raise ValueError(f"max_pixels must be positive, not {max_pixels!r}")
    head = read_head(path)
    if backend is not None:
        try:
            return _open_with(backend, path, head, max_pixels)
        except NotThisBackend:
            raise ImageError(f"cannot be read by the {backend} reader (not a file of that kind)", path) from None
    if head.startswith(_PLAIN_MAGIC):
        return _open_with("plain", path, head, max_pixels)
    if head.startswith(_TIFF_MAGIC):
        try:
            return _open_with("tiff", path, head, max_pixels)
        except NotThisBackend as refused:
            # An RGB-slide-shaped TIFF that tifffile cannot read may be a vendor TIFF OpenSlide knows.
            if refused.args and refused.args[0] == "try-openslide" and _openslide_detects(path):
                return _open_with("openslide", path, head, max_pixels)
            return _open_with("plain", path, head, max_pixels)
    if _openslide_detects(path):
        return _open_with("openslide", path, head, max_pixels)
    # Not a format any reader knows: the plain reader says what the file looks like.
    return _open_with("plain", path, head, max_pixels)


def _open_with(backend: str, path: Path, head: bytes, max_pixels: int | None) -> SlideSource:
    if backend == "plain":
        from viewer.slide.plain import PlainSlide

        return PlainSlide.open(path, head, max_pixels=max_pixels)
    if backend == "tiff":
        from viewer.slide.tiff import TiffSlide

        return TiffSlide.open(path, head, max_pixels=max_pixels)
    if backend == "openslide":
        from viewer.slide.openslide_reader import OpenSlideSlide

        return OpenSlideSlide.open(path)
    raise ValueError(f"unknown slide backend {backend!r}; use tiff, openslide or plain")


def _openslide_detects(path: Path) -> bool:
    """Whether OpenSlide recognises the file (False when OpenSlide is not installed)."""
    try:
        from viewer.slide.openslide_reader import detect_format
    except ImportError:  # pragma: no cover - openslide is a dependency
        return False
    return detect_format(path) is not None


def as_image_error(exc: BaseException, path: Path) -> ImageError:
    """Wrap an unexpected reader exception as a one-line ImageError naming the file."""
    from viewer.slide.decode import _describe

    return ImageError(f"is corrupt or cannot be decoded ({_describe(exc)})", path)

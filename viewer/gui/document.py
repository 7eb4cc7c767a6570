"""What the window has open, and opening an image with its annotations before it swaps to it.

:func:`read_image` runs in a worker thread and touches no Qt object. It only opens the slide
(the reader parses the header; pixels are read later, tile by tile, by the canvas) and reads the
annotations, so even a multi-gigabyte slide is on screen within a second. Whatever it raises
reaches the user as a message box while the previous image stays on screen. :class:`Document`
is the one shared record of what is open, read by every controller of the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from viewer.annotations import Annotations, find_annotations_for, load_annotation_file
from viewer.errors import InputError
from viewer.slide import SlideSource, open_slide


@dataclass(frozen=True, eq=False)
class OpenedImage:
    slide: SlideSource
    """The opened slide: levels, pixel size and region reads (no pixels are held here)."""
    annotations: Annotations | None
    annotation_problem: str | None
    """Why annotations next to the image could not be read (the image still opens)."""


@dataclass(eq=False)
class Document:
    """What the window shows; changed on the main thread only, once new data is complete."""

    opened: OpenedImage | None = None
    annotations: Annotations | None = None
    """The annotations on screen: those found with the image, or a file opened later."""


def read_image(path: str | Path, annotations_path: str | Path | None = None) -> OpenedImage:
    """Open ``path`` and its annotations (``annotations_path``, the BreCaHAD ground truth, or
    ``<stem>.geojson`` beside the image)."""
    slide = open_slide(path)
    source = Path(annotations_path) if annotations_path is not None else find_annotations_for(slide.path)
    if source is None:  # annotations saved beside a whole slide as QuPath GeoJSON
        beside = Path(slide.path).with_suffix(".geojson")
        source = beside if beside.is_file() else None
    annotations, problem = None, None
    if source is not None:
        try:
            annotations = load_annotation_file(source, (slide.width, slide.height))
        except InputError as exc:
            problem = str(exc)
    return OpenedImage(slide, annotations, problem)

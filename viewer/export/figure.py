"""Write an overlay figure of a slide region at a downsample: the one call behind
``histoviewer export`` and the GUI's File › Export Overlay, so both write the same pixels.

``.tif``/``.tiff``: a tiled pyramidal TIFF (see :mod:`viewer.export.tiff_writer`), rendered
tile by tile, any size, no legend. ``.png``/``.jpg``: the whole figure in memory, so limited
to :data:`MAX_FIGURE_PIXELS`, with the optional legend panel. Always written to a temporary
file and renamed (:mod:`viewer.atomic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viewer.errors import InputError, OutputError
from viewer.export.render import OverlayRenderer, render_array, whole_region
from viewer.overlay import OverlayStyle, add_legend, overlay_format, save_overlay

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.data import HeatmapData
    from viewer.slide.source import SlideSource

MAX_FIGURE_PIXELS = 64_000_000
"""Largest PNG/JPEG figure (e.g. 8000 x 8000 px, ~200 MB of RGB while it is encoded)."""

MAX_JPEG_SIDE = 65_500
"""JPEG cannot store a side longer than 65535 px."""

Progress = Callable[[float], None]
"""Called with the fraction of the output written so far (0..1)."""


@dataclass(frozen=True)
class ExportSettings:
    """What part of the slide, at what scale: the choices of the CLI and of the GUI's dialog.

    ``region``: level-0 ``(x, y, w, h)`` or ``None`` for the whole slide. ``downsample`` (>= 1)
    or ``max_size`` (longest output side in px; never enlarges) sets the scale.
    """

    region: tuple[int, int, int, int] | None = None
    downsample: float | None = None
    max_size: int | None = None
    compression: str = "jpeg"
    tile: int = 512

    def resolve(self, slide: SlideSource) -> tuple[tuple[int, int, int, int], float]:
        """``(region, downsample)`` for ``slide``; :class:`InputError` for a region outside it."""
        region = self.region or whole_region(slide)
        x, y, w, h = (int(v) for v in region)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > slide.width or y + h > slide.height:
            raise InputError(f"the region {x},{y},{w},{h} is not inside the {slide.width}x{slide.height} px slide")
        if self.downsample is not None and self.max_size is not None:
            raise InputError("give --downsample or --max-size, not both")
        if self.max_size is not None:
            if self.max_size < 1:
                raise InputError(f"--max-size must be at least 1 pixel (got {self.max_size})")
            return (x, y, w, h), max(1.0, max(w, h) / self.max_size)
        d = 1.0 if self.downsample is None else float(self.downsample)
        if not (math.isfinite(d) and 1.0 <= d <= 1e5):
            raise InputError(f"--downsample must be between 1 and 100000 (got {self.downsample})")
        return (x, y, w, h), d


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size: tuple[int, int]
    """Output (width, height) of the image part (level 0 of a pyramid), legend excluded."""
    levels: int
    """Pyramid levels written (1 for PNG/JPEG)."""
    legend: bool
    """Whether a legend panel was added."""


def check_figure_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse a PNG/JPEG that would not fit in memory (one line suggesting .tif or --max-size)."""
    width, height = size
    kind = overlay_format(path)
    too_big = width * height > MAX_FIGURE_PIXELS or (kind == "JPEG" and max(size) > MAX_JPEG_SIDE)
    if kind != "TIFF" and too_big:
        raise OutputError(
            f"a {width}x{height} px figure is too large for {kind} (limit {MAX_FIGURE_PIXELS // 1_000_000} Mpx, "
            "made in memory); write a .tif (tiled pyramid) or reduce it with --max-size or --downsample",
            path,
        )


def export_overlay(
    slide: SlideSource,
    heatmap: HeatmapData | None,
    annotations: Any,
    style: OverlayStyle,
    path: str | Path,
    settings: ExportSettings = ExportSettings(),
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Render and write the overlay figure; the file type follows the suffix of ``path``."""
    from viewer.atomic import atomic_output, check_writable

    path = Path(path)
    kind = overlay_format(path)
    region, downsample = settings.resolve(slide)
    renderer = OverlayRenderer.for_region(slide, heatmap, annotations, style, region=region, downsample=downsample)
    size = renderer.frame.size
    check_figure_size(path, size)
    check_writable(path, force=force)
    if kind != "TIFF":
        image = render_array(renderer)
        if style.legend:
            image = add_legend(image, style, renderer.heatmap is not None, renderer.class_counts())
        save_overlay(image, path, force=force)
        if progress is not None:
            progress(1.0)
        return ExportResult(path, size, 1, style.legend)

    from viewer.export.tiff_writer import pyramid_sizes, write_pyramid

    sizes = pyramid_sizes(*size, settings.tile)
    total = sum(h for _, h in sizes)
    done = [0]

    def rows_written(_level: int, rows: int) -> None:
        done[0] += rows
        if progress is not None:
            progress(done[0] / total)

    def level_renderer(k: int):
        level = renderer if k == 0 else renderer.at(renderer.frame.reduced(2**k))
        return level.block

    mpp = None if slide.mpp is None else (slide.mpp[0] * downsample, slide.mpp[1] * downsample)
    with atomic_output(path, force=force) as tmp:
        write_pyramid(tmp, *size, level_renderer, tile=settings.tile, compression=settings.compression,
                      mpp=mpp, on_rows=rows_written)
    return ExportResult(path, size, len(sizes), False)

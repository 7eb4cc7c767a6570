"""Analysis pixels: the resolution the model sees, and the grid of heatmap cells on a slide.

A ConvNet trained at 40x sees other structures at 20x, so a slide is analysed at the pixel size
the model expects, not at whatever its level 0 happens to be. The *analysis image* of a region
is that region resampled so one analysis pixel covers ``scale`` level-0 pixels:

    level-0 (x, y) = origin + scale * analysis (x, y)

The heatmap grid is defined on analysis pixels exactly as for a plain image (cell ``(r, c)`` =
window with top-left ``(stride*c, stride*r)``), so with ``scale == 1`` and ``origin == (0, 0)``
the geometry is exactly that of :func:`viewer.heatmap.engine.compute_heatmap` on the pixels.

Slides that record no pixel size, and every plain image, are analysed at scale 1 with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from viewer import DEFAULT_STRIDE, PATCH_SIZE
from viewer.errors import InputError
from viewer.slide.source import BACKGROUND, SlideSource

SCALE_TOLERANCE = 0.02
"""Pixel sizes within 2 % of the model's count as equal (scale 1, read level 0 as it is):
scanners report e.g. 0.2520 vs 0.2500 µm, a difference a ConvNet does not notice and resampling
would only blur."""


@dataclass(frozen=True)
class AnalysisGrid:
    """Where the heatmap of a slide region lies: origin and scale to level 0, size, stride."""

    origin: tuple[int, int]
    """Level-0 (x, y) of analysis pixel (0, 0)."""
    scale: float
    """Level-0 pixels per analysis pixel."""
    width: int
    height: int
    """Size of the analysis image in analysis pixels."""
    stride: int = DEFAULT_STRIDE
    mpp: float | None = None
    """µm per analysis pixel, when known."""

    @property
    def shape(self) -> tuple[int, int]:
        from viewer.heatmap.engine import heatmap_shape

        return heatmap_shape(self.height, self.width, self.stride)

    def cell_centre_level0(self, row, col):
        """Level-0 (x, y) of a cell's window centre (scalars or arrays)."""
        x = self.origin[0] + (self.stride * np.asarray(col) + PATCH_SIZE / 2) * self.scale
        y = self.origin[1] + (self.stride * np.asarray(row) + PATCH_SIZE / 2) * self.scale
        return x, y

    def level0_rect(self) -> tuple[float, float, float, float]:
        """Where to draw the whole heatmap array in level-0 pixels: (x, y, width, height).

        Cell (r, c) is a square of ``stride*scale`` level-0 px centred on its window centre.
        """
        rows, cols = self.shape
        s = self.stride * self.scale
        x0 = self.origin[0] + (PATCH_SIZE / 2 - self.stride / 2) * self.scale
        y0 = self.origin[1] + (PATCH_SIZE / 2 - self.stride / 2) * self.scale
        return (x0, y0, cols * s, rows * s)

    def as_attrs(self) -> dict:
        return {
            "patch": PATCH_SIZE, "stride": self.stride, "scale": self.scale,
            "origin": [int(self.origin[0]), int(self.origin[1])],
            "analysis_size": [self.width, self.height], "analysis_mpp": self.mpp,
        }


def analysis_scale(slide_mpp: tuple[float, float] | None, model_mpp: float | None, notes: list[str]) -> tuple[float, float | None]:
    """``(scale, analysis mpp)`` for a slide: level-0 px per analysis px.

    Scale 1 (level 0 as it is) when the slide's or the model's pixel size is unknown, or when
    they agree within :data:`SCALE_TOLERANCE`; otherwise slide pixels are resampled so a 32 px
    window covers the same tissue as in training.
    """
    if slide_mpp is None:
        notes.append("the slide records no pixel size: analysed at level 0 as it is (scale 1); use --mpp to set it")
        return 1.0, None
    slide = (float(slide_mpp[0]) + float(slide_mpp[1])) / 2
    if model_mpp is None:
        notes.append("the model records no pixel size: analysed at level 0 as it is (scale 1)")
        return 1.0, slide
    scale = float(model_mpp) / slide
    if abs(scale - 1.0) <= SCALE_TOLERANCE:
        return 1.0, slide
    return scale, float(model_mpp)


def region_grid(
    slide: SlideSource,
    region: tuple[int, int, int, int] | None,
    scale: float,
    stride: int = DEFAULT_STRIDE,
    mpp: float | None = None,
) -> AnalysisGrid:
    """The analysis grid of a level-0 region ``(x, y, w, h)`` (``None``: the whole slide)."""
    if region is None:
        region = (0, 0, slide.width, slide.height)
    x, y, w, h = (int(v) for v in region)
    if w <= 0 or h <= 0:
        raise InputError(f"the region {x},{y},{w},{h} is empty")
    if x < 0 or y < 0 or x + w > slide.width or y + h > slide.height:
        raise InputError(
            f"the region {x},{y},{w},{h} is not inside the {slide.width}x{slide.height} px slide"
        )
    width, height = math.floor(w / scale), math.floor(h / scale)
    if width < PATCH_SIZE or height < PATCH_SIZE:
        raise InputError(
            f"the region {x},{y},{w},{h} is {width}x{height} analysis px; the heatmap needs at least "
            f"{PATCH_SIZE}x{PATCH_SIZE}"
        )
    return AnalysisGrid((x, y), float(scale), width, height, int(stride), mpp)


class AnalysisImage:
    """Reads blocks of the analysis image of a slide region, resampling only what is asked.

    ``block(x, y, w, h)`` (analysis px) returns (h, w, 3) uint8; outside the region is white.
    At scale 1 it is a plain level-0 read. Otherwise it reads the finest level that is not
    coarser than the analysis pixel, and resamples (area-averaging when shrinking, bilinear
    when enlarging) with exact fractional source boxes, so neighbouring blocks agree.
    """

    def __init__(self, slide: SlideSource, grid: AnalysisGrid) -> None:
        self.slide = slide
        self.grid = grid
        self.level = 0 if grid.scale == 1.0 else slide.best_level_for_downsample(grid.scale)

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.grid.height, self.grid.width, 3)

    def block(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        grid = self.grid
        out = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        # Clip to the analysis image: the region's edge, not the slide's, bounds what is read.
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + w, grid.width), min(y + h, grid.height)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        ox, oy = grid.origin
        if grid.scale == 1.0:
            out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = self.slide.read_region(0, ox + cx0, oy + cy0, cx1 - cx0, cy1 - cy0)
            return out
        out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = self._resampled(cx0, cy0, cx1 - cx0, cy1 - cy0)
        return out

    def _resampled(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        from PIL import Image

        grid = self.grid
        ds = self.slide.levels[self.level].downsample
        # The block's level-0 box, then in the chosen level's pixels (fractional).
        lx0 = (grid.origin[0] + x * grid.scale) / ds
        ly0 = (grid.origin[1] + y * grid.scale) / ds
        lx1 = (grid.origin[0] + (x + w) * grid.scale) / ds
        ly1 = (grid.origin[1] + (y + h) * grid.scale) / ds
        # Read whole pixels around the box with a 1 px margin for the bilinear filter.
        rx0, ry0 = math.floor(lx0) - 1, math.floor(ly0) - 1
        rx1, ry1 = math.ceil(lx1) + 1, math.ceil(ly1) + 1
        source = self.slide.read_region(self.level, rx0, ry0, rx1 - rx0, ry1 - ry0)
        shrink = grid.scale / ds >= 1.0
        resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        box = (lx0 - rx0, ly0 - ry0, lx1 - rx0, ly1 - ry0)
        return np.asarray(Image.fromarray(source).resize((w, h), resample, box=box), dtype=np.uint8)

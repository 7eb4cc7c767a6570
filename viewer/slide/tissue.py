"""Tissue detection: which parts of a slide hold tissue, so the heatmap skips bare glass.

The approach of TIAToolbox, CLAM and Slideflow: look at a low-resolution copy of the slide
(a few MB, never level 0 of a big slide), threshold the HSV saturation with Otsu's method
(glass is white or grey, H&E-stained tissue is coloured), then clean the mask with morphology.

Robustness, because Otsu always splits an image in two even when it has no glass:

- A floor on the threshold (:data:`SATURATION_FLOOR`): on blank glass Otsu would split noise.
- The "background" class Otsu finds must look like glass -- bright and nearly colourless. On an
  image that is all tissue Otsu separates pale stroma from dark nuclei instead; then there is
  no glass to find and only the floor applies.
- Background regions smaller than :data:`MAX_HOLE_UM2` (fat cells, lumens, tears, gaps between
  fragments, also where they touch the image edge) count as tissue: evaluating them costs a
  little time, missing tumour beside them costs more. The glass around the tissue on a real
  slide is far larger. A consequence: an image smaller than that area (a 1360x1024 crop at
  0.25 µm/px is 0.09 mm²) comes out all tissue unless it is all glass -- on such an image the
  mask saves nothing anyway.

Sizes are physical (µm, from the slide's pixel size; :data:`ASSUMED_MPP` when it records none,
the resolution the analysis assumes for such images), so a crop and a whole slide are cleaned
alike. The mask is never finer than :data:`FINEST_MASK_UM` per pixel: finer detail only slows
the morphology down.

Not handled (yet): pen marks, black scanner borders and bubbles are not told apart from
tissue; dark, saturated ink simply counts as tissue and costs some evaluation time.

Geometry of :meth:`TissueMask.cell_fractions` is the heatmap's: cell ``(r, c)`` is the
``patch`` x ``patch`` analysis-pixel window with top-left ``(stride*c, stride*r)``, at level-0
``origin + analysis * scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from viewer import PATCH_SIZE
from viewer.slide.source import SlideSource

TISSUE_THRESHOLD = 0.5
"""Cells whose window is at least this share tissue are evaluated; the others are left NaN."""

DEFAULT_MAX_SIDE = 2048
"""Longest side of the mask, in mask pixels."""

ASSUMED_MPP = 0.25
"""µm per level-0 pixel assumed when a slide records none: the model's training resolution
(BreCaHAD, 40x), which is also what the analysis assumes for such images (scale 1)."""

FINEST_MASK_UM = 2.0
"""A mask pixel covers at least this many µm: tissue/glass needs no finer detail."""

SATURATION_FLOOR = 0.05
"""The saturation threshold is never below this: white-balanced glass stays under it."""

GLASS_MAX_SATURATION = 0.08
GLASS_MIN_VALUE = 0.7
"""The background class Otsu finds counts as glass only if its median saturation is at most
0.08 and its median brightness (HSV value) at least 0.7 (glass of a dim scan included);
otherwise the image has no glass. A uniform image is glass if its median saturation is low."""

MIN_SEPARATION = 0.05
"""Otsu's two classes must differ by this much in mean saturation, else the image is uniform."""

CLOSE_UM = 8.0
"""Closing radius: bridges gaps between nuclei and fibres."""

OPEN_UM = 4.0
"""Opening radius (at least one mask pixel): removes specks and hair-thin lines."""

MAX_HOLE_UM2 = 100_000.0
"""Background regions below 0.1 mm² (a 316 µm square) become tissue (see above)."""

MIN_OBJECT_UM2 = 2_000.0
"""Tissue pieces below 0.002 mm² (a 45 µm square) are dropped as dust."""

_STRIP_PIXELS = 1 << 22
"""Level pixels read per strip while building the low-resolution image (about 12 MB of RGB)."""

_ROW_BLOCK = 512
"""Cell rows per block in :meth:`TissueMask.cell_fractions` (bounds its scratch memory)."""


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A low-resolution tissue mask of a whole slide.

    Mask pixel ``(i, j)`` covers level-0 ``[j*dx, (j+1)*dx) x [i*dy, (i+1)*dy)`` with
    ``(dx, dy) = downsample``; pixels beyond the slide are background.
    """

    mask: np.ndarray
    """bool (h, w): True = tissue."""
    downsample: tuple[float, float]
    """Level-0 pixels per mask pixel along x and y."""
    fraction: float
    """Share of the slide's area that is tissue (0..1)."""
    threshold: float | None = None
    """The saturation threshold used (None: not thresholded, e.g. :func:`all_tissue`)."""
    level: int | None = None
    """The slide level the mask was computed from."""

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table: ``S[i, j]`` = tissue pixels in ``mask[:i, :j]`` ((h+1, w+1))."""
        h, w = self.mask.shape
        dtype = np.int32 if h * w < 2**31 else np.int64
        table = np.zeros((h + 1, w + 1), dtype=dtype)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=dtype), axis=1, out=table[1:, 1:])
        return table

    def cell_fractions(
        self,
        origin: tuple[float, float],
        scale: float,
        stride: int,
        rows: slice,
        cols: slice,
        patch: int = PATCH_SIZE,
    ) -> np.ndarray:
        """Share of tissue under each cell's ``patch`` x ``patch`` analysis window, float32
        ``(len(rows), len(cols))``. Partly covered mask pixels count by the area covered;
        parts of a window outside the slide count as background."""
        r0, r1 = _bounds(rows, "rows")
        c0, c1 = _bounds(cols, "cols")
        out = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
        if out.size == 0:
            return out
        dx, dy = self.downsample
        span = patch * scale
        xs = (origin[0] + stride * scale * np.arange(c0, c1, dtype=np.float64)) / dx
        x_lo, x_hi = xs, xs + span / dx
        area = (span / dx) * (span / dy)
        for start in range(r0, r1, _ROW_BLOCK):
            stop = min(start + _ROW_BLOCK, r1)
            ys = (origin[1] + stride * scale * np.arange(start, stop, dtype=np.float64)) / dy
            y_lo, y_hi = ys, ys + span / dy
            tissue = (
                self._area_to(x_hi, y_hi) - self._area_to(x_lo, y_hi) - self._area_to(x_hi, y_lo) + self._area_to(x_lo, y_lo)
            )
            out[start - r0 : stop - r0] = np.clip(tissue / area, 0.0, 1.0)
        return out

    def _area_to(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue area (mask px²) in ``[0, x) x [0, y)`` for every ``y`` in ``ys`` (rows) and
        ``x`` in ``xs`` (columns): the summed-area table interpolated bilinearly, which is exact
        for a mask that is constant within each pixel."""
        table = self._integral
        h, w = self.mask.shape
        xs, ys = np.clip(xs, 0, w), np.clip(ys, 0, h)
        ix = np.minimum(np.floor(xs).astype(np.intp), w - 1)
        iy = np.minimum(np.floor(ys).astype(np.intp), h - 1)
        fx, fy = (xs - ix)[None, :], (ys - iy)[:, None]
        lines = table[iy] * (1 - fy) + table[iy + 1] * fy  # (len(ys), w + 1)
        return lines[:, ix] * (1 - fx) + lines[:, ix + 1] * fx


def _bounds(cells: slice, name: str) -> tuple[int, int]:
    if cells.step not in (None, 1) or cells.stop is None:
        raise ValueError(f"{name} must be a slice with a stop and step 1, got {cells!r}")
    start = 0 if cells.start is None else int(cells.start)
    stop = int(cells.stop)
    if start < 0 or stop < start:
        raise ValueError(f"{name} must run forwards from a non-negative start, got {cells!r}")
    return start, stop


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def detect_tissue(slide: SlideSource, *, max_side: int = DEFAULT_MAX_SIDE) -> TissueMask:
    """Find the tissue on ``slide`` from its coarsest level that still has about ``max_side/2``
    px on its longer side, reduced to at most ``max_side`` px (and no finer than
    :data:`FINEST_MASK_UM`)."""
    from scipy import ndimage

    level = _mask_level(slide, max_side)
    info = slide.levels[level]
    mpp = ASSUMED_MPP if slide.mpp is None else (slide.mpp[0] + slide.mpp[1]) / 2
    level_um = mpp * info.downsample
    factor = max(
        math.ceil(max(info.width, info.height) / max_side),
        math.floor(FINEST_MASK_UM / level_um + 1e-9),
        1,
    )
    saturation, value = _reduced_hsv(slide, level, factor)
    downsample = (factor * slide.width / info.width, factor * slide.height / info.height)
    mask_um = mpp * (downsample[0] + downsample[1]) / 2

    threshold = _saturation_threshold(saturation, value)
    mask = saturation >= threshold
    if mask.any():
        mask = _clean(mask, mask_um, ndimage)
    return TissueMask(
        mask=mask,
        downsample=downsample,
        fraction=_area_fraction(mask, downsample, slide.width, slide.height),
        threshold=None if math.isinf(threshold) else float(threshold),
        level=level,
    )


def all_tissue(slide: SlideSource) -> TissueMask:
    """A mask calling the whole slide tissue (``--no-tissue-mask``): every cell is evaluated."""
    return TissueMask(
        mask=np.ones((1, 1), dtype=bool), downsample=(float(slide.width), float(slide.height)), fraction=1.0
    )


def _mask_level(slide: SlideSource, max_side: int) -> int:
    """The coarsest level whose longer side is at least ``max_side / 2`` (level 0 if none is)."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side!r}")
    chosen = 0
    for index, info in enumerate(slide.levels):
        if max(info.width, info.height) >= max_side / 2:
            chosen = index
    return chosen


def _reduced_hsv(slide: SlideSource, level: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (0..1, float32) of ``level`` block-averaged by ``factor``,
    read in horizontal strips so memory stays at a few strips plus the small result."""
    info = slide.levels[level]
    height, width = -(-info.height // factor), -(-info.width // factor)
    saturation = np.empty((height, width), dtype=np.float32)
    value = np.empty((height, width), dtype=np.float32)
    rows_per_strip = max(1, _STRIP_PIXELS // (width * factor * factor))
    for top in range(0, height, rows_per_strip):
        rows = min(rows_per_strip, height - top)
        # Reading past the level's edge returns white glass, which pads the last blocks.
        pixels = slide.read_region(level, 0, top * factor, width * factor, rows * factor)
        rgb = pixels.reshape(rows, factor, width, factor, 3).mean(axis=(1, 3), dtype=np.float32)
        brightest, darkest = rgb.max(axis=2), rgb.min(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            saturation[top : top + rows] = np.where(brightest > 0, (brightest - darkest) / brightest, 0.0)
        value[top : top + rows] = brightest / 255.0
    return saturation, value


def _otsu(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold of values in [0, 1], or None if they do not split (all nearly equal)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    moment = np.cumsum(hist * centres)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = below * above * (moment / below - (moment[-1] - moment) / above) ** 2
    between = np.nan_to_num(between, nan=0.0)
    if not between.any():
        return None
    return float(edges[int(np.argmax(between)) + 1])


def _looks_like_glass(saturation: np.ndarray, value: np.ndarray | None) -> bool:
    """Nearly colourless and, when ``value`` is given, bright."""
    if np.median(saturation) > GLASS_MAX_SATURATION:
        return False
    return value is None or bool(np.median(value) >= GLASS_MIN_VALUE)


def _saturation_threshold(saturation: np.ndarray, value: np.ndarray) -> float:
    """The saturation at and above which a pixel is tissue (``inf``: nothing is)."""
    split = _otsu(saturation)
    if split is not None:
        low = saturation < split
        high = ~low
        if low.any() and high.any() and saturation[high].mean() - saturation[low].mean() >= MIN_SEPARATION:
            if _looks_like_glass(saturation[low], value[low]):
                return max(split, SATURATION_FLOOR)  # a real glass / tissue split
            return SATURATION_FLOOR  # two kinds of tissue (stroma / nuclei): no glass here
    # One uniform population: all glass (of any brightness: a colourless field is not H&E
    # tissue) or all tissue.
    return math.inf if _looks_like_glass(saturation, None) else SATURATION_FLOOR


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _clean(mask: np.ndarray, mask_um: float, ndimage) -> np.ndarray:
    """Closing, filling of small background regions, opening, removal of small pieces."""
    px_area = mask_um * mask_um
    close = max(1, round(CLOSE_UM / mask_um))
    # Pad by replicating the edge so closing and opening do not eat tissue at the image border.
    padded = np.pad(mask, close, mode="edge")
    mask = ndimage.binary_closing(padded, _disk(close))[close:-close, close:-close]

    holes, count = ndimage.label(~mask)
    if count:
        sizes = np.bincount(holes.ravel(), minlength=count + 1) * px_area
        small = sizes < MAX_HOLE_UM2
        small[0] = False  # label 0 is the tissue itself
        mask = mask | small[holes]

    opening = max(1, round(OPEN_UM / mask_um))
    padded = np.pad(mask, opening, mode="edge")
    mask = ndimage.binary_opening(padded, _disk(opening))[opening:-opening, opening:-opening]

    pieces, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(pieces.ravel(), minlength=count + 1) * px_area
        keep = sizes >= MIN_OBJECT_UM2
        keep[0] = False
        mask = keep[pieces]
    return mask


def _area_fraction(mask: np.ndarray, downsample: tuple[float, float], width: int, height: int) -> float:
    """Tissue share of the slide's area, counting edge mask pixels by how much slide they cover."""
    dx, dy = downsample
    h, w = mask.shape
    cover_x = np.clip(width - dx * np.arange(w), 0, dx) / dx
    cover_y = np.clip(height - dy * np.arange(h), 0, dy) / dy
    tissue = float(cover_y @ mask.astype(np.float64) @ cover_x)
    total = float(cover_y.sum() * cover_x.sum())
    return tissue / total if total > 0 else 0.0


__all__ = ["TISSUE_THRESHOLD", "TissueMask", "all_tissue", "detect_tissue"]

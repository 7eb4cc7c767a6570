"""Drawing the overlay: image + heatmap + annotation regions and markers (+ legend), at any output scale.

One painter, two callers: :func:`compose` paints an image held in memory at full resolution,
and :mod:`viewer.export.render` paints blocks of a slide read at a downsample. Both go through
:func:`paint_layers` with an :class:`OutputFrame` saying where the output pixels lie on the
slide, so a figure of a small image and a tile of a whole-slide export follow the same rules
(and the CLI's ``export`` and the GUI's Export Overlay, which both call them, agree). Qt-free.

Heatmap drawing follows :mod:`viewer.heatmap` geometry exactly: cell ``(r, c)`` is a
``stride*scale`` square of level-0 pixels centred on its window centre; an output pixel takes
the colour of the cell whose square contains the pixel's centre (nearest neighbour,
:func:`viewer.heatmap.data.cells_under_pixels`). With ``smooth`` the colour is interpolated
bilinearly between cell centres instead, over the same covered area. Pixels outside the
covered band, cells that are NaN (not computed, or background) and cells below ``threshold``
are left untouched (transparent). Colour index is ``rint(p * 255)`` into the colormap's
256-entry table, as in the GUI. (On a coarse pyramid level of a whole-slide export, where the
cells under one block are too many for one read, a store's overview supplies the values: the
mean of the 8 x 8 block of cells the sampled cell lies in; see :class:`CellSampler`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from viewer import DEFAULT_STRIDE
from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP, colormap_lut, colour_index
from viewer.errors import OutputError
from viewer.heatmap import heatmap_shape

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.data import HeatmapData

DEFAULT_THRESHOLD = 0.5
"""Cells below this probability are not drawn, in the viewer and in every export alike: likely
tumour only, so the tissue under the rest stays readable (0 would veil all tissue)."""

DEFAULT_OPACITY = 0.45
"""Heatmap alpha of the viewer and of every export."""

OVERLAY_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}
"""Output types :func:`save_overlay` writes, by file suffix."""

MARKER_OUTLINE = (0, 0, 0)
"""Thin dark edge on both sides of every marker ring, so rings read on pale and dark tissue alike."""

LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class OverlayStyle:
    """How to draw an overlay. Immutable, so a GUI can hand one to a worker safely.

    ``opacity``: heatmap alpha in [0, 1]. ``threshold``: cells with ``p < threshold`` are not
    drawn. ``visible_classes``: annotation classes to draw (``None`` = all).
    ``marker_radius``: ring radius in output pixels. ``legend``: add a legend panel (see
    :func:`compose`). ``stride``: the stride of a heatmap given as a plain array (a
    :class:`~viewer.heatmap.data.HeatmapData` carries its own grid).
    """

    show_heatmap: bool = True
    show_annotations: bool = True
    opacity: float = DEFAULT_OPACITY
    colormap: str = DEFAULT_COLORMAP
    threshold: float = DEFAULT_THRESHOLD
    visible_classes: tuple[str, ...] | frozenset[str] | None = None
    marker_radius: int = 10
    legend: bool = False
    stride: int = DEFAULT_STRIDE
    smooth: bool = False
    """Interpolate the heatmap bilinearly between cell centres instead of drawing cell squares."""

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise ValueError(f"opacity must be between 0 and 1, got {self.opacity}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.colormap not in COLORMAPS:
            raise ValueError(f"unknown colormap {self.colormap!r}; choose one of {', '.join(COLORMAPS)}")
        if int(self.marker_radius) < 1:
            raise ValueError(f"marker_radius must be at least 1, got {self.marker_radius}")
        if isinstance(self.stride, bool) or int(self.stride) != self.stride or self.stride < 1:
            raise ValueError(f"stride must be a positive whole number, got {self.stride}")


# ---------------------------------------------------------------------------------------------
# Annotations access (an Annotations object, or a plain mapping of pixel points)
# ---------------------------------------------------------------------------------------------


def _class_colour(name: str) -> tuple[int, int, int]:
    from viewer.annotations import class_colour

    return tuple(int(v) for v in class_colour(name))


def _class_label(name: str) -> str:
    from viewer.annotations import class_label

    return class_label(name)


def annotation_points(annotations: Any, width: int, height: int, visible: Sequence[str] | frozenset[str] | None = None) -> dict[str, np.ndarray]:
    """``{class: (N, 2) float pixel (x, y)}`` for the classes to draw, in legend order.

    ``annotations`` is a :class:`viewer.annotations.Annotations` (normalised points, converted
    with ``pixel_points``) or a mapping ``{class: pixel points}``. Empty classes are dropped.
    """
    if annotations is None:
        return {}
    if isinstance(annotations, Mapping):
        items = {name: np.asarray(pts, dtype=np.float64).reshape(-1, 2) for name, pts in annotations.items()}
    else:
        items = {name: np.asarray(annotations.pixel_points(name, width, height), dtype=np.float64).reshape(-1, 2) for name in annotations.classes}
    if visible is not None:
        visible = set(visible)
        items = {name: pts for name, pts in items.items() if name in visible}
    return {name: pts for name, pts in items.items() if len(pts)}


def annotation_regions(annotations: Any, visible: Sequence[str] | frozenset[str] | None = None) -> list[tuple[str, tuple[np.ndarray, ...]]]:
    """``[(class, level-0 rings)]`` of the regions to draw (an Annotations' ``regions``; a plain
    mapping of points has none), filtered by ``visible`` like the points."""
    regions = getattr(annotations, "regions", ()) if annotations is not None else ()
    wanted = None if visible is None else set(visible)
    return [(r.name, tuple(r.rings)) for r in regions if wanted is None or r.name in wanted]


# ---------------------------------------------------------------------------------------------
# Where the output lies on the slide
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFrame:
    """An output image placed on the slide: output pixel ``(i, j)`` (row, column) covers level-0
    ``[x + j*d, x + (j+1)*d) x [y + i*d, y + (i+1)*d)`` with ``d = downsample``."""

    x: float
    y: float
    downsample: float
    width: int
    height: int

    @classmethod
    def for_region(cls, region: tuple[int, int, int, int], downsample: float = 1.0) -> OutputFrame:
        """The frame showing the level-0 rectangle ``(x, y, w, h)`` at ``downsample``: the output is
        ``round(w / d)`` x ``round(h / d)`` px (at least 1), so a whole image at 1 keeps its size."""
        x, y, w, h = region
        d = float(downsample)
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"downsample must be a positive number, got {downsample}")
        return cls(float(x), float(y), d, max(1, round(w / d)), max(1, round(h / d)))

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in output pixels."""
        return self.width, self.height

    def level0_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the level-0 area the whole output covers."""
        d = self.downsample
        return self.x, self.y, self.x + self.width * d, self.y + self.height * d

    def reduced(self, factor: int) -> OutputFrame:
        """The same area ``factor`` times coarser (a pyramid level): size rounded up, so the
        level still covers every pixel of the frame it reduces."""
        return OutputFrame(self.x, self.y, self.downsample * factor, -(-self.width // factor), -(-self.height // factor))

    def to_output(self, points: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Level-0 points ``{class: (N, 2) x, y}`` in output pixel coordinates, sorted by y (so a
        block finds its markers by bisection instead of scanning every point)."""
        d = self.downsample
        out = {}
        for name, pts in points.items():
            # At frame (0, 0, 1) this is exact (x - 0) / 1 == x: the same floats compose always drew.
            pts = (np.asarray(pts, dtype=np.float64).reshape(-1, 2) - (self.x, self.y)) / d
            out[name] = pts[np.argsort(pts[:, 1], kind="stable")]
        return out

    def regions_to_output(self, regions: Sequence[tuple[str, tuple[np.ndarray, ...]]]) -> list[tuple[str, tuple[np.ndarray, ...]]]:
        """Level-0 region rings in output pixel coordinates."""
        d = self.downsample
        return [(name, tuple((np.asarray(r, dtype=np.float64) - (self.x, self.y)) / d for r in rings))
                for name, rings in regions]


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


SPAN_CELLS = 1 << 20
"""Largest rectangle of cells read at once for one output block (4 MB of float32)."""


class CellSampler:
    """Reads the cells output blocks need from a :class:`~viewer.heatmap.data.HeatmapData`.

    At full resolution a block needs the small rectangle of cells under it, read in one go. On a
    coarse pyramid level one output pixel spans many cells and the rectangle under a block can
    be the whole heatmap; then only the sampled cells are taken: by indexing an in-memory
    array, from a store's overview when it has one (each value the mean of its block of cells,
    as the viewer draws zoomed out; read once per export), else band by band.
    """

    def __init__(self, heatmap: HeatmapData) -> None:
        self.heatmap = heatmap
        self.grid = heatmap.grid
        self._overview: tuple[np.ndarray, int] | None | bool = False  # False: not asked yet

    def sampler(self, rows: Sequence[np.ndarray], cols: Sequence[np.ndarray]):
        """``get(r, c) -> cells[np.ix_(r, c)]`` for index arrays taken from ``rows``/``cols``."""
        r_min, r_max = min(int(a.min()) for a in rows), max(int(a.max()) for a in rows)
        c_min, c_max = min(int(a.min()) for a in cols), max(int(a.max()) for a in cols)
        if (r_max - r_min + 1) * (c_max - c_min + 1) <= SPAN_CELLS:
            cells = self.heatmap.read(slice(r_min, r_max + 1), slice(c_min, c_max + 1))
            return lambda r, c: cells[np.ix_(r - r_min, c - c_min)]
        from viewer.heatmap.data import ArrayHeatmap

        if isinstance(self.heatmap, ArrayHeatmap):
            array = self.heatmap.array
            return lambda r, c: np.asarray(array[np.ix_(r, c)], dtype=np.float32)
        overview = self.overview()
        if overview is not None:
            reduced, factor = overview
            return lambda r, c: reduced[np.ix_(r // factor, c // factor)]
        return self._banded(np.unique(np.concatenate(rows)), np.unique(np.concatenate(cols)))

    def overview(self) -> tuple[np.ndarray, int] | None:
        if self._overview is False:
            try:
                self._overview = self.heatmap.overview("mean")
            except (AttributeError, KeyError, NotImplementedError):
                self._overview = None
        return self._overview  # type: ignore[return-value]

    def _banded(self, rows: np.ndarray, cols: np.ndarray):
        """The needed cells gathered from reads of at most :data:`SPAN_CELLS` cells each."""
        table = np.empty((len(rows), len(cols)), dtype=np.float32)
        width = max(1, min(int(cols[-1] - cols[0] + 1), SPAN_CELLS))
        height = max(1, SPAN_CELLS // width)
        for r0 in range(int(rows[0]), int(rows[-1]) + 1, height):
            ri = np.flatnonzero((rows >= r0) & (rows < r0 + height))
            if not len(ri):
                continue
            for c0 in range(int(cols[0]), int(cols[-1]) + 1, width):
                ci = np.flatnonzero((cols >= c0) & (cols < c0 + width))
                if len(ci):
                    cells = self.heatmap.read(slice(r0, int(rows[ri[-1]]) + 1), slice(c0, int(cols[ci[-1]]) + 1))
                    table[np.ix_(ri, ci)] = cells[np.ix_(rows[ri] - r0, cols[ci] - c0)]
        return lambda r, c: table[np.ix_(np.searchsorted(rows, r), np.searchsorted(cols, c))]


def heatmap_values(
    heatmap: HeatmapData | CellSampler, frame: OutputFrame, block: tuple[int, int, int, int], smooth: bool = False,
) -> np.ndarray | None:
    """The probability drawn over each pixel of an output block ``(ox, oy, w, h)``, as float32
    ``(h, w)`` with NaN where nothing is drawn; ``None`` when the block misses the heatmap.

    Reads only the cells under the block (plus one ring for ``smooth``), through a
    :class:`CellSampler` (pass one to reuse it across blocks).
    """
    from viewer.heatmap.data import cell_positions, cells_under_pixels

    cells = heatmap if isinstance(heatmap, CellSampler) else CellSampler(heatmap)
    ox, oy, w, h = block
    grid, d = cells.grid, frame.downsample
    x0, y0 = frame.x + ox * d, frame.y + oy * d
    rows = cells_under_pixels(grid, y0, h, d, axis=0)
    cols = cells_under_pixels(grid, x0, w, d, axis=1)
    ys, xs = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    if not len(ys) or not len(xs):
        return None
    py0, py1, px0, px1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1  # indices grow with position
    rows, cols = rows[py0:py1], cols[px0:px1]
    out = np.full((h, w), np.nan, dtype=np.float32)
    if not smooth:
        out[py0:py1, px0:px1] = cells.sampler([rows], [cols])(rows, cols)
        return out
    n_rows, n_cols = grid.shape
    fr = cell_positions(grid, y0, h, d, axis=0)[py0:py1]
    fc = cell_positions(grid, x0, w, d, axis=1)[px0:px1]
    # Both neighbours of every pixel, clamped at the outer cells (their squares reach half a
    # stride beyond the outermost centres, where the value stays that of the outer cell).
    fr_floor, fc_floor = np.floor(fr), np.floor(fc)
    r_lo = np.clip(fr_floor, 0, n_rows - 1).astype(np.int64)
    r_hi = np.clip(fr_floor + 1, 0, n_rows - 1).astype(np.int64)
    c_lo = np.clip(fc_floor, 0, n_cols - 1).astype(np.int64)
    c_hi = np.clip(fc_floor + 1, 0, n_cols - 1).astype(np.int64)
    ty = (fr - fr_floor).astype(np.float32)[:, None]
    tx = (fc - fc_floor).astype(np.float32)[None, :]
    get = cells.sampler([rows, r_lo, r_hi], [cols, c_lo, c_hi])
    total = np.zeros((py1 - py0, px1 - px0), np.float32)
    weight = np.zeros_like(total)
    for r_idx, wy in ((r_lo, 1 - ty), (r_hi, ty)):
        for c_idx, wx in ((c_lo, 1 - tx), (c_hi, tx)):
            v = get(r_idx, c_idx)
            finite = np.isfinite(v)
            wgt = np.where(finite, wy * wx, np.float32(0))
            total += np.where(finite, v, np.float32(0)) * wgt
            weight += wgt
    # NaN cells stay transparent: only pixels whose nearest cell has a value are drawn, and the
    # interpolation uses the neighbours that have one.
    nearest = get(rows, cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(np.isfinite(nearest) & (weight > 0), total / weight, np.float32(np.nan))
    out[py0:py1, px0:px1] = value
    return out


BLEND_PIXELS = 1 << 17
"""Pixels blended at once: the float temporaries cost about 30 bytes per pixel, so a megapixel
block of a slide export is blended in bands rather than all at once."""


def blend_values(out: np.ndarray, values: np.ndarray, style: OverlayStyle) -> None:
    """Blend probabilities ``values`` ((h, w), NaN = transparent) into RGB ``out`` in place:
    ``under + (over - under) * opacity``, rounded, where ``p >= threshold``."""
    if style.opacity == 0:
        return
    lut = colormap_lut(style.colormap)
    alpha = np.float32(style.opacity)
    band = max(1, BLEND_PIXELS // max(1, values.shape[1]))
    for r0 in range(0, values.shape[0], band):
        part = values[r0 : r0 + band]
        finite = np.isfinite(part)
        show = finite & (np.where(finite, part, 0.0) >= style.threshold)
        if not show.any():
            continue
        block = out[r0 : r0 + band]
        under = block[show].astype(np.float32)
        mixed = lut[colour_index(part[show])].astype(np.float32)
        mixed -= under
        mixed *= alpha
        mixed += under
        np.rint(mixed, out=mixed)
        np.clip(mixed, 0, 255, out=mixed)
        block[show] = mixed.astype(np.uint8)


def blend_heatmap(out: np.ndarray, heatmap: np.ndarray, style: OverlayStyle) -> None:
    """Blend a full-resolution image's ``heatmap`` array into ``out`` in place (see :func:`compose`)."""
    height, width = out.shape[:2]
    data = image_heatmap(heatmap, width, height, style.stride)
    values = heatmap_values(data, OutputFrame(0.0, 0.0, 1.0, width, height), (0, 0, width, height), style.smooth)
    if values is not None:
        blend_values(out, values, style)


def image_heatmap(heatmap: np.ndarray, width: int, height: int, stride: int) -> HeatmapData:
    """A plain image's heatmap array as :class:`~viewer.heatmap.data.HeatmapData` (origin 0,
    scale 1); refuses an array that does not fit the image at ``stride``."""
    from viewer.heatmap.analysis import AnalysisGrid
    from viewer.heatmap.data import ArrayHeatmap

    heatmap = np.asarray(heatmap)
    expected = heatmap_shape(height, width, stride)
    if heatmap.shape != expected:
        raise ValueError(
            f"heatmap shape {heatmap.shape} does not fit a {width}x{height} image at stride {stride} "
            f"(expected {expected})"
        )
    return ArrayHeatmap(heatmap, AnalysisGrid((0, 0), 1.0, int(width), int(height), int(stride)))


def draw_markers(out: np.ndarray, points: Mapping[str, np.ndarray], radius: int, offset: tuple[int, int] = (0, 0)) -> None:
    """Draw a ring of radius ``radius`` px around each point, in its class colour, in place.

    ``points`` are in output pixel coordinates; ``out`` is the block of the output whose
    top-left pixel is ``offset`` (x, y). Rings are 2 px wide (pixel centres within 1 px of the
    circle) with a 1 px dark edge on each side; all edges are drawn before any colour so
    neighbouring markers stay readable.
    """
    height, width = out.shape[:2]
    ox, oy = int(offset[0]), int(offset[1])
    r = float(radius)
    span = np.arange(-int(radius) - 3, int(radius) + 4)
    jobs = []
    for name, pts in points.items():
        colour = np.array(_class_colour(name), dtype=np.uint8)
        for x, y in pts:
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            cx, cy = int(np.floor(x)), int(np.floor(y))
            ys = cy + span
            xs = cx + span
            yk = (ys >= oy) & (ys < oy + height)
            xk = (xs >= ox) & (xs < ox + width)
            if not yk.any() or not xk.any():
                continue
            ys, xs = ys[yk], xs[xk]
            # Distances from whole output coordinates, so a block gives the pixels the whole would.
            dist = np.hypot((xs[None, :] + 0.5) - x, (ys[:, None] + 0.5) - y)
            off = np.abs(dist - r)
            jobs.append((ys[0] - oy, xs[0] - ox, off <= 1.0, (off > 1.0) & (off <= 2.0), colour))
    for y0, x0, _ring, edge, _colour in jobs:
        block = out[y0 : y0 + edge.shape[0], x0 : x0 + edge.shape[1]]
        block[edge] = MARKER_OUTLINE
    for y0, x0, ring, _edge, colour in jobs:
        block = out[y0 : y0 + ring.shape[0], x0 : x0 + ring.shape[1]]
        block[ring] = colour


def markers_near(points: Mapping[str, np.ndarray], block: tuple[int, int, int, int], radius: int) -> dict[str, np.ndarray]:
    """The points (output coordinates, sorted by y as :meth:`OutputFrame.to_output` gives them)
    whose ring can touch the block ``(ox, oy, w, h)``, in their original order."""
    ox, oy, w, h = block
    reach = int(radius) + 4
    near = {}
    for name, pts in points.items():
        lo, hi = np.searchsorted(pts[:, 1], [oy - reach, oy + h + reach])
        sub = pts[lo:hi]
        keep = (sub[:, 0] >= ox - reach) & (sub[:, 0] < ox + w + reach)
        if keep.any():
            near[name] = sub[keep]
    return near


REGION_FILL = 0.18
"""Opacity of a region's tint in its class colour (the outline is opaque)."""
IGNORE_HATCH = (40, 40, 40)
"""Ignore regions are hatched: every 8th diagonal of output pixels is drawn in this colour."""
REGION_OUTLINE_PX = 2


def draw_regions(out: np.ndarray, regions: Sequence[tuple[str, tuple[np.ndarray, ...]]],
                 offset: tuple[int, int] = (0, 0)) -> None:
    """Tint, hatch (``ignore``) and outline regions on ``out`` in place, as the canvas draws them.

    ``regions`` are ``(class, rings)`` in output pixel coordinates; ``out`` is the block whose
    top-left pixel is ``offset``. A pixel belongs to a region when its centre is inside by the
    even-odd rule, and the outline is the region's own pixels within 2 px of its border, so
    every block of a tiled export paints exactly the pixels a single pass would.
    """
    from viewer.annotations.model import IGNORE_CLASS
    from viewer.annotations.regions import points_in_rings

    height, width = out.shape[:2]
    ox, oy = int(offset[0]), int(offset[1])
    pad = REGION_OUTLINE_PX
    for name, rings in regions:
        xy = np.concatenate(rings)
        x0 = max(int(np.floor(xy[:, 0].min())) - pad, ox - pad)
        x1 = min(int(np.ceil(xy[:, 0].max())) + pad + 1, ox + width + pad)
        y0 = max(int(np.floor(xy[:, 1].min())) - pad, oy - pad)
        y1 = min(int(np.ceil(xy[:, 1].max())) + pad + 1, oy + height + pad)
        if x1 <= x0 or y1 <= y0:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1]
        centres = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], axis=1)
        inside = points_in_rings(centres, rings).reshape(gy.shape)
        if not inside.any():
            continue
        # Border: inside pixels with an outside pixel within ``pad`` px along a row or column.
        interior = inside.copy()
        for k in range(1, pad + 1):
            interior[k:, :] &= inside[:-k, :]
            interior[:-k, :] &= inside[k:, :]
            interior[:, k:] &= inside[:, :-k]
            interior[:, :-k] &= inside[:, k:]
            interior[:k, :] = interior[-k:, :] = False
            interior[:, :k] = interior[:, -k:] = False
        # The window of the mask that lies on this block.
        bx0, by0 = max(x0, ox), max(y0, oy)
        bx1, by1 = min(x1, ox + width), min(y1, oy + height)
        if bx1 <= bx0 or by1 <= by0:
            continue
        mask_window = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
        out_window = (slice(by0 - oy, by1 - oy), slice(bx0 - ox, bx1 - ox))
        fill = interior[mask_window]
        border = (inside & ~interior)[mask_window]
        target = out[out_window]
        colour = np.array(_class_colour(name), dtype=np.float32)
        if name == IGNORE_CLASS:
            hatch = ((gx + gy) % 8 == 0)[mask_window] & fill
            target[hatch] = IGNORE_HATCH
        else:
            tinted = target[fill].astype(np.float32) * (1 - REGION_FILL) + colour * REGION_FILL
            target[fill] = np.rint(tinted).astype(np.uint8)
        target[border] = colour.astype(np.uint8)


def paint_layers(
    out: np.ndarray,
    frame: OutputFrame,
    offset: tuple[int, int],
    heatmap: HeatmapData | CellSampler | None,
    markers: Mapping[str, np.ndarray],
    style: OverlayStyle,
    regions: Sequence[tuple[str, tuple[np.ndarray, ...]]] = (),
) -> None:
    """Paint the heatmap, the regions and the markers onto ``out``, the block of ``frame``'s
    output whose top-left pixel is ``offset``, in place.

    ``markers``: output-pixel points from :meth:`OutputFrame.to_output` (already filtered by
    class); ``regions``: output-pixel rings from :meth:`OutputFrame.regions_to_output`. Layers
    the style hides are skipped.
    """
    h, w = out.shape[:2]
    block = (int(offset[0]), int(offset[1]), w, h)
    if style.show_heatmap and heatmap is not None and style.opacity > 0:
        values = heatmap_values(heatmap, frame, block, style.smooth)
        if values is not None:
            blend_values(out, values, style)
    if style.show_annotations and regions:
        draw_regions(out, regions, offset=block[:2])
    if style.show_annotations and markers:
        draw_markers(out, markers_near(markers, block, style.marker_radius), style.marker_radius, offset=block[:2])


# ---------------------------------------------------------------------------------------------
# Legend
# ---------------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def legend_panel(
    height: int,
    *,
    style: OverlayStyle,
    heatmap_shown: bool,
    classes: Mapping[str, int],
    scale: float = 1.0,
) -> np.ndarray:
    """Render the legend panel as an RGB array (at least ``height`` tall): a colour bar for the
    heatmap (0 at the bottom, 1 at the top, threshold marked) and a ring + name + count per class."""
    from PIL import Image, ImageDraw

    unit = max(1.0, scale)
    font_size = int(round(14 * unit))
    font = _font(font_size)
    small = _font(int(round(12 * unit)))
    pad = int(round(12 * unit))
    line = int(round(font_size * 1.6))
    bar_w, bar_h = int(round(22 * unit)), int(round(200 * unit))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str, f) -> int:
        box = probe.textbbox((0, 0), text, font=f)
        return box[2] - box[0]

    entries = [(name, count) for name, count in classes.items()]
    widths = [text_width("Tumour probability", font)] if heatmap_shown else []
    widths += [line + text_width(f"{_class_label(n)} ({c})", font) for n, c in entries]
    if entries:
        widths.append(text_width("Annotations", font))
    panel_w = pad * 2 + max([bar_w + text_width("0.00", small) + pad] + widths)
    panel_h = pad
    if heatmap_shown:
        panel_h += line + bar_h + pad + line // 2
    if entries:
        panel_h += line + line * len(entries) + pad
    panel_h = max(panel_h, int(height))
    img = Image.new("RGB", (panel_w, panel_h), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = pad
    if heatmap_shown:
        draw.text((pad, y), "Tumour probability", fill=LEGEND_TEXT, font=font)
        y += line
        lut = colormap_lut(style.colormap)
        values = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)
        bar = lut[colour_index(values)]
        bar = np.repeat(bar[:, None, :], bar_w, axis=1)
        if style.threshold > 0:  # below the threshold nothing is drawn: show that as hatching
            hidden = values < style.threshold
            yy, xx = np.mgrid[0:bar_h, 0:bar_w]
            hatch = ((yy + xx) // max(2, int(4 * unit)) % 2 == 0)[:, :, None]
            bar[hidden] = np.where(hatch[hidden], 200, 245).astype(np.uint8)
        img.paste(Image.fromarray(np.ascontiguousarray(bar)), (pad, y))
        draw.rectangle((pad - 1, y - 1, pad + bar_w, y + bar_h), outline=LEGEND_TEXT)
        ticks = [1.0, 0.5, 0.0] + ([style.threshold] if 0 < style.threshold < 1 else [])
        for value in ticks:
            ty = y + int(round((1.0 - value) * (bar_h - 1)))
            draw.line((pad + bar_w, ty, pad + bar_w + int(4 * unit), ty), fill=LEGEND_TEXT)
            label = f"{value:.2f}" if value not in (0.0, 0.5, 1.0) else f"{value:g}"
            draw.text((pad + bar_w + int(6 * unit), ty - small.size // 2 - 1), label, fill=LEGEND_TEXT, font=small)
        y += bar_h + pad + line // 2
    if entries:
        draw.text((pad, y), "Annotations", fill=LEGEND_TEXT, font=font)
        y += line
        radius = max(3, int(round(font_size * 0.4)))
        for name, count in entries:
            cx, cy = pad + radius + 2, y + line // 2 - 2
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), outline=MARKER_OUTLINE, width=4)
            draw.ellipse(box, outline=_class_colour(name), width=2)
            draw.text((pad + line, y + (line - font_size) // 2 - 2), f"{_class_label(name)} ({count})", fill=LEGEND_TEXT, font=font)
            y += line
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# The in-memory exporter
# ---------------------------------------------------------------------------------------------


def compose(
    image: np.ndarray,
    heatmap: np.ndarray | None = None,
    annotations: Any = None,
    style: OverlayStyle = OverlayStyle(),
) -> np.ndarray:
    """The overlay as a new (H, W, 3) uint8 array at the image's full resolution.

    Layers, bottom to top: the image; the heatmap (if ``style.show_heatmap`` and ``heatmap`` is
    given; float ``(rows, cols)`` of :func:`viewer.heatmap.heatmap_shape` at ``style.stride``,
    NaN = not computed = transparent) blended with ``style.opacity``; annotation regions (tinted,
    ``ignore`` hatched, outlined) and rings (if
    ``style.show_annotations``; an :class:`~viewer.annotations.Annotations` or a mapping
    ``{class: (N, 2) pixel x, y}``, filtered by ``style.visible_classes``).

    With ``style.legend`` a white legend panel is appended on the **right**, so the result is
    **wider** than the image (``W + panel``) and, for images shorter than the panel, **taller**
    (the image sits at the top-left; the extra area is white). The image area is unchanged.

    Equal, pixel for pixel, to :func:`viewer.export.render.render_overlay` of the same image at
    downsample 1: both paint through :func:`paint_layers`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    out = np.array(image, dtype=np.uint8, copy=True, order="C")
    height, width = out.shape[:2]
    heatmap_shown = bool(style.show_heatmap and heatmap is not None)
    data = image_heatmap(heatmap, width, height, style.stride) if heatmap_shown else None
    points: dict[str, np.ndarray] = {}
    regions: list = []
    if style.show_annotations and annotations is not None:
        points = annotation_points(annotations, width, height, style.visible_classes)
        regions = annotation_regions(annotations, style.visible_classes)
    frame = OutputFrame(0.0, 0.0, 1.0, width, height)
    paint_layers(out, frame, (0, 0), data, frame.to_output(points), style, frame.regions_to_output(regions))
    if not style.legend:
        return out
    return add_legend(out, style, heatmap_shown, {name: len(pts) for name, pts in points.items()})


def add_legend(image: np.ndarray, style: OverlayStyle, heatmap_shown: bool, classes: Mapping[str, int]) -> np.ndarray:
    """``image`` with the legend panel on its right (white below a short image); a new array."""
    height, width = image.shape[:2]
    panel = legend_panel(
        height, style=style, heatmap_shown=heatmap_shown, classes=classes,
        scale=max(1.0, min(height, width) / 768),
    )
    canvas = np.full((max(height, panel.shape[0]), width + panel.shape[1], 3), LEGEND_BACKGROUND, dtype=np.uint8)
    canvas[:height, :width] = image
    canvas[: panel.shape[0], width:] = panel
    return canvas


def save_overlay(array: np.ndarray, path: str | Path, force: bool = False) -> Path:
    """Write an RGB overlay as PNG, TIFF (deflate) or JPEG (by suffix), atomically.

    Refuses to overwrite an existing file unless ``force``; raises :class:`OutputError` with a
    one-line message naming the file.
    """
    from viewer.atomic import atomic_output, check_writable

    path = Path(path)
    kind = overlay_format(path)
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"overlay must be an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    check_writable(path, force=force)
    with atomic_output(path, force=force) as tmp:
        if kind == "TIFF":
            import tifffile

            tifffile.imwrite(tmp, np.ascontiguousarray(array), photometric="rgb", compression="zlib")
        else:
            from PIL import Image

            options = {"compress_level": 6} if kind == "PNG" else {"quality": 95}
            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format=kind, **options)
    return path


def overlay_format(path: str | Path) -> str:
    """``"PNG"``, ``"TIFF"`` or ``"JPEG"`` for an output file name; raises :class:`OutputError` otherwise."""
    path = Path(path)
    kind = OVERLAY_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise OutputError("unsupported overlay file type; use .png, .tif/.tiff or .jpg", path)
    return kind

"""Tumour-probability heatmaps: geometry, the tiled engine, and heatmap files.

Geometry (see README "Heatmap geometry")
    Cell ``(r, c)`` is the probability of the 32x32 window whose top-left pixel is
    ``(x, y) = (stride*c, stride*r)``. It belongs to the window centre
    ``(stride*c + 16, stride*r + 16)`` and is drawn as a ``stride`` x ``stride`` square centred
    there, so the whole array is drawn at ``(16 - stride/2, 16 - stride/2)`` with scale ``stride``
    (:func:`heatmap_rect`). Row ``r`` of the array is image ``y``, column ``c`` is image ``x``.

The engine
    :func:`iter_heatmap_tiles` is the only engine: :func:`compute_heatmap` and the CLI drain it,
    the GUI worker consumes it tile by tile. It is a plain generator doing all of its work
    synchronously inside ``next()``; stop iterating (or ``close()`` it) and nothing more runs.

    For models shaped like Table 1 (valid convolutions, square max-pools with total
    down-sampling ``D`` = 4, Flatten, Dense layers) and strides that are multiples of ``D``, each
    tile is evaluated fully convolutionally: the convolutions run once over the tile plus a
    ``32 - stride`` px halo, the first Dense layer becomes a 6x6 convolution with stride
    ``stride/4`` on the last pooled grid and later Dense layers become 1x1 convolutions. Because
    every window starts at a multiple of 4 px, the pooling grids of the tile and of each window
    coincide and the result equals cutting out every window (to float round-off). Other strides
    and other models fall back to batches of windows through the Keras model itself.

Tiles (:func:`plan_heatmap`)
    Bulk work (compute_heatmap, the CLI, whole slides) uses tiles of about 1024 px for images in
    memory (the halo costs ~5 %; a 1360 x 1024 image takes two calls) and 512 x 768 px for slide
    regions read block by block (less memory per call); interactive work gets one small
    first tile (about 256 px, a few ms) at the point of interest, then bulk tiles. Every tile
    is evaluated on a block padded up to a multiple of about 64 px (:func:`tile_quantum`), so
    only a few block shapes ever occur (oneDNN sets up kernels per shape) and a cell's value
    does not depend on the tile it was computed in.

Precision
    ``precision="float32"`` (default) is exact as above. ``"bfloat16"`` runs every layer but the last
    in bfloat16 on CPUs with bfloat16 units, the first on the raw 0-255 pixel values (about 2.4-2.5
    times the speed; probabilities within ~0.02), see :func:`_exact_function`; elsewhere it warns once
    and computes in float32 (:mod:`viewer.heatmap.precision`).

Keras and TensorFlow are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from viewer import DEFAULT_STRIDE, PATCH_SIZE, __version__
from viewer.errors import InputError, OutputError

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from viewer.heatmap.analysis import AnalysisImage

WINDOW_CENTRE_OFFSET = PATCH_SIZE // 2
"""Offset from a window's top-left pixel to its centre, in pixels (16)."""

METHOD_EXACT = "fully-convolutional"
METHOD_WINDOWS = "windows"
METHODS = ("auto", METHOD_EXACT, METHOD_WINDOWS)
"""``method`` values for the engine: ``auto`` picks the exact fully convolutional pass when the
model and stride allow it and batched windows otherwise."""

_INTERACTIVE_TILE_PX = 256
"""Side of a first, interactive tile in image pixels (32 cells at stride 8, a 280 px block with
its halo): a few ms warm on two cores, so the first painted tile never waits for a big one."""

_BULK_TILE_PX = (1024, 1408)
"""Rows x columns of a bulk tile of an image in memory, in image pixels (128 x 176 cells at
stride 8, a 1048 x 1432 px block): a BreCaHAD field (1360 x 1024) is one call, padded by 3 %
to whole shape quanta. Square 1024 px tiles took two calls and 1.06-1.12x the time of one
pass over the image (the halo between them, a second call); this shape ~1.04x. Its transient
memory is ~410 MB (peak RSS added, ``benchmarks/tile_memory.py``): the first
convolution's float32 output is 128 bytes per pixel and TensorFlow's max-pool about doubles
that at its peak."""

_BULK_TILE_PX_BFLOAT16 = (1472, 1472)
"""The same for bfloat16: its activations take half the bytes, so a tile of about 1.5 times the
area takes less memory (~320 MB, ``benchmarks/tile_memory.py``), and a 1360 x 1024 image is
one call (two calls' halos and overhead cost bfloat16 ~15 %, since everything else got twice as
fast)."""

_STREAMED_TILE_PX = (512, 768)
"""Rows x columns of a bulk tile of an image read block by block (a slide region; 64 x 96 cells
at stride 8, a 536 x 792 px block): ~115 MB transient instead of ~410 MB, which keeps a slide's
run within its memory budget (tests/core/test_slide_memory.py) for ~3 % of speed per cell.
Wide rather than tall: the same area runs slightly faster."""

_STREAMED_TILE_PX_BFLOAT16 = (1024, 1024)
"""The same for bfloat16 (128 x 128 cells): half the bytes per activation, so about 2.7 times the
area for ~1.3 times the memory (~155 MB peak over a 1048 px block, ~115 MB for float32's
536 x 792 px); its halo and calls weigh twice as much in bfloat16, and this tile made a bfloat16
slide run ~5 % faster in alternated runs. Tiles of any size give bfloat16 the same bits per cell
too (a test checks it), so resumed stores stay exact."""

_SHAPE_QUANTUM_PX = 64
"""Tiles are padded up to a multiple of about this many image pixels (8 cells at stride 8) per
side (:func:`tile_quantum`): tile shapes come from a small fixed set (at most 8 x 12
per stride), so oneDNN's kernels made for a shape are reused by every later tile of that shape,
while an edge tile wastes at most 56 px of padding."""

_TARGET_TILE_CELLS_WINDOWS = 32
"""Default tile side in cells for the batched-window fallback (1024 windows per tile)."""

_WINDOW_BATCH = 256
"""Fixed batch size of the fallback's traced model call (partial batches are padded)."""


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or int(stride) != stride or int(stride) < 1:
        raise ValueError(f"stride must be a positive whole number of pixels, got {stride!r}")
    return int(stride)


def heatmap_shape(height: int, width: int, stride: int = DEFAULT_STRIDE) -> tuple[int, int]:
    """Shape ``((H - 32)//stride + 1, (W - 32)//stride + 1)`` of an image's heatmap (0 if smaller than a window)."""
    stride = _check_stride(stride)
    rows = (int(height) - PATCH_SIZE) // stride + 1 if height >= PATCH_SIZE else 0
    cols = (int(width) - PATCH_SIZE) // stride + 1 if width >= PATCH_SIZE else 0
    return rows, cols


def cell_centre(row, col, stride: int = DEFAULT_STRIDE):
    """Image pixel ``(x, y) = (stride*col + 16, stride*row + 16)`` a cell's probability belongs to.

    Works on scalars and on numpy arrays of indices alike.
    """
    return stride * col + WINDOW_CENTRE_OFFSET, stride * row + WINDOW_CENTRE_OFFSET


def window_origin(row, col, stride: int = DEFAULT_STRIDE):
    """Top-left pixel ``(x, y) = (stride*col, stride*row)`` of the 32x32 window of a cell."""
    return stride * col, stride * row


def heatmap_rect(rows: int, cols: int, stride: int = DEFAULT_STRIDE) -> tuple[float, float, float, float]:
    """Where to draw a ``rows`` x ``cols`` heatmap over the image: ``(x, y, width, height)`` in pixels.

    Cell ``(r, c)`` is the square ``[x + stride*c, x + stride*(c+1)) x [y + stride*r, ...)`` with
    ``x = y = 16 - stride/2``: a stride-sized square centred on its window centre. Pass the
    result to e.g. ``ImageItem.setRect``.
    """
    stride = _check_stride(stride)
    origin = WINDOW_CENTRE_OFFSET - stride / 2
    return (origin, origin, float(cols * stride), float(rows * stride))


def pixel_cell_index(length: int, cells: int, stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """For each pixel ``0..length-1`` along one axis, the cell drawn over its centre, or -1.

    A pixel ``i`` covers ``[i, i+1)``; its centre ``i + 0.5`` lies in the square of cell
    ``floor((i + 0.5 - (16 - stride/2)) / stride)``. This is the nearest-neighbour rule that
    :func:`viewer.overlay.compose` uses, and the same squares :func:`heatmap_rect` describes.
    """
    stride = _check_stride(stride)
    centres = np.arange(int(length), dtype=np.float64) + 0.5
    index = np.floor((centres - (WINDOW_CENTRE_OFFSET - stride / 2)) / stride).astype(np.int64)
    index[(index < 0) | (index >= cells)] = -1
    return index


def pixel_to_cell(x: float, y: float, shape: tuple[int, int], stride: int = DEFAULT_STRIDE) -> tuple[int, int] | None:
    """The heatmap cell ``(row, col)`` drawn at image point ``(x, y)``, or ``None`` outside the heatmap."""
    stride = _check_stride(stride)
    origin = WINDOW_CENTRE_OFFSET - stride / 2
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    col = math.floor((x - origin) / stride)
    row = math.floor((y - origin) / stride)
    if 0 <= row < shape[0] and 0 <= col < shape[1]:
        return row, col
    return None


def blank_heatmap(height: int, width: int, stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """A float32 heatmap for an image, all NaN (= not computed yet), to fill tile by tile."""
    return np.full(heatmap_shape(height, width, stride), np.nan, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Plan: which tiles, in which order
# ---------------------------------------------------------------------------------------------


class HeatmapTile(NamedTuple):
    """One finished tile: ``heatmap[rows, cols] = probabilities`` (float32)."""

    rows: slice
    cols: slice
    probabilities: np.ndarray


def tile_quantum(stride: int = DEFAULT_STRIDE) -> int:
    """Tile sides of the adaptive plans are padded up to a multiple of this many cells: about
    64 px, and always a multiple of 4 cells. On blocks whose sides are multiples of 4 cells
    oneDNN computes every cell bit for bit the same whatever the block's size (other sizes
    differ in the last bit), so a store resumed with chunks grouped differently still equals an
    uninterrupted run exactly."""
    stride = _check_stride(stride)
    return max(4, round(_SHAPE_QUANTUM_PX / stride / 4) * 4)


def _quantised(cells_px: float, stride: int) -> int:
    """About ``cells_px`` image pixels in cells, a multiple of :func:`tile_quantum`."""
    q = tile_quantum(stride)
    return max(q, round(cells_px / stride / q) * q)


def default_tile_cells(stride: int = DEFAULT_STRIDE) -> int:
    """Side in cells of an interactive tile: about 256 px of image (32 cells at stride 8) for
    strides that are multiples of 4 (the exact fully convolutional pass), 32 cells (1024
    windows) otherwise. The first tile of an interactive plan, and a microscope field's chunk."""
    stride = _check_stride(stride)
    if stride % 4 == 0:
        return _quantised(_INTERACTIVE_TILE_PX, stride)
    return _TARGET_TILE_CELLS_WINDOWS


def bulk_tile_cells(stride: int = DEFAULT_STRIDE, *, streamed: bool = False,
                    precision: str = "float32") -> tuple[int, int]:
    """``(rows, cols)`` in cells of a bulk tile for the fully convolutional pass: about
    1024 x 1408 px of image (128 x 176 cells at stride 8) for an image in memory (about
    1472 x 1472 px in bfloat16: less memory), 512 x 768 px (64 x 96 cells; 1024 x 1024 px in
    bfloat16) for one read block by block (``streamed``, a slide region). 32 x 32 cells for
    strides that are not multiples of 4 (batched windows, where tile size changes nothing but
    how often a run can be stopped)."""
    stride = _check_stride(stride)
    if stride % 4 == 0:
        if streamed:
            rows_px, cols_px = _STREAMED_TILE_PX_BFLOAT16 if precision == "bfloat16" else _STREAMED_TILE_PX
        else:
            rows_px, cols_px = _BULK_TILE_PX_BFLOAT16 if precision == "bfloat16" else _BULK_TILE_PX
        return _quantised(rows_px, stride), _quantised(cols_px, stride)
    return _TARGET_TILE_CELLS_WINDOWS, _TARGET_TILE_CELLS_WINDOWS


def _balanced(cells: int, target: int) -> int:
    """Tile length near ``target`` that splits ``cells`` into equal tiles (no thin last tile)."""
    if cells <= 0:
        return 1
    count = -(-cells // max(1, target))
    return -(-cells // count)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class HeatmapPlan:
    """The tiles of one heatmap, in the order the engine computes them.

    ``len(plan)`` is the number of tiles the engine will yield (use it for progress);
    ``plan.tiles[i]`` is the ``(row_slice, col_slice)`` of the i-th tile. The tiles cover every
    cell exactly once. ``tile_rows`` x ``tile_cols`` is the largest tile.

    Shapes: each tile is evaluated on a block padded to :meth:`padded_shape` (the padding only
    feeds windows outside the tile, which are dropped). With ``quantum=None`` every tile is padded
    to ``tile_rows`` x ``tile_cols`` (one shape per plan); with ``quantum=(qr, qc)`` each side is
    rounded up to a multiple of ``qr`` / ``qc`` cells, so tiles of different sizes share a few
    fixed shapes.
    """

    height: int
    width: int
    stride: int
    tile_rows: int
    tile_cols: int
    tiles: tuple[tuple[slice, slice], ...]
    order_from: tuple[float, float] | None = None
    quantum: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the finished heatmap."""
        return heatmap_shape(self.height, self.width, self.stride)

    @property
    def cells(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        return iter(self.tiles)

    def padded_shape(self, rows: slice, cols: slice) -> tuple[int, int]:
        """``(rows, cols)`` in cells of the block a tile is evaluated on."""
        if self.quantum is None:
            return self.tile_rows, self.tile_cols
        return _round_up(rows.stop - rows.start, self.quantum[0]), _round_up(cols.stop - cols.start, self.quantum[1])

    def block_box(self, rows: slice, cols: slice) -> tuple[int, int, int, int]:
        """The image block ``(x, y, w, h)`` the exact pass reads for a tile: its padded shape
        plus the 32 px window (readers can fetch it ahead of the engine)."""
        pad_rows, pad_cols = self.padded_shape(rows, cols)
        s = self.stride
        return cols.start * s, rows.start * s, (pad_cols - 1) * s + PATCH_SIZE, (pad_rows - 1) * s + PATCH_SIZE

    def padded_cells(self) -> int:
        """Cells evaluated including the padding (work done, against :attr:`cells` needed)."""
        total = 0
        for rows, cols in self.tiles:
            r, c = self.padded_shape(rows, cols)
            total += r * c
        return total

    def tile_centre(self, index: int) -> tuple[float, float]:
        """Image pixel ``(x, y)`` at the centre of a tile's window centres."""
        return _tile_centre(self.tiles[index], self.stride)


def _tile_centre(tile: tuple[slice, slice], stride: int) -> tuple[float, float]:
    rows, cols = tile
    x0, y0 = cell_centre(rows.start, cols.start, stride)
    x1, y1 = cell_centre(rows.stop - 1, cols.stop - 1, stride)
    return (x0 + x1) / 2, (y0 + y1) / 2


def _cover(r0: int, r1: int, c0: int, c1: int, side: int, side_cols: int | None = None) -> list[tuple[slice, slice]]:
    """Tiles of ``side`` x ``side_cols`` (default ``side``) cells over the rectangle, in raster
    order; the last row and column of tiles are shorter."""
    side_cols = side if side_cols is None else side_cols
    return [
        (slice(r, min(r + side, r1)), slice(c, min(c + side_cols, c1)))
        for r in range(r0, r1, side)
        for c in range(c0, c1, side_cols)
    ]


def _interactive_tiles(rows: int, cols: int, stride: int, point: tuple[float, float], streamed: bool,
                       precision: str = "float32") -> list[tuple[slice, slice]]:
    """One small tile around ``point``, then bulk tiles over the rest (bands above and below it,
    pieces left and right of it)."""
    small = default_tile_cells(stride)
    big_rows, big_cols = bulk_tile_cells(stride, streamed=streamed, precision=precision)
    cx = (point[0] - WINDOW_CENTRE_OFFSET) / stride  # the cell column whose centre is at x
    cy = (point[1] - WINDOW_CENTRE_OFFSET) / stride
    n_r, n_c = min(small, rows), min(small, cols)
    r0 = int(min(max(round(cy - n_r / 2 + 0.5), 0), rows - n_r))
    c0 = int(min(max(round(cx - n_c / 2 + 0.5), 0), cols - n_c))
    r1, c1 = r0 + n_r, c0 + n_c
    rest = _cover(0, r0, 0, cols, big_rows, big_cols) + _cover(r1, rows, 0, cols, big_rows, big_cols)
    rest += _cover(r0, r1, 0, c0, big_rows, big_cols) + _cover(r0, r1, c1, cols, big_rows, big_cols)
    return [(slice(r0, r1), slice(c0, c1))] + rest


def plan_heatmap(
    height: int,
    width: int,
    stride: int = DEFAULT_STRIDE,
    *,
    tile_cells: int | tuple[int, int] | None = None,
    order_from: tuple[float, float] | None = None,
    streamed: bool = False,
    precision: str = "float32",
) -> HeatmapPlan:
    """Cut the heatmap of a ``height`` x ``width`` image into tiles, in computing order.

    ``tile_cells``: tile size in cells, an int or ``(rows, cols)``: every tile that size (edge
    tiles smaller, evaluated padded to it). ``None``, the adaptive plan: bulk tiles of
    :func:`bulk_tile_cells` (about 1024 px; 512 x 768 px if ``streamed``, for images read block
    by block) with edge tiles padded to a multiple of
    :func:`tile_quantum`; with ``order_from`` the first tile is a small interactive one
    (:func:`default_tile_cells`, about 256 px) around that point, so it is painted at once.
    (Strides that are not multiples of 4 use balanced tiles of 32 cells.)

    ``precision``: the bulk tiles of an image in memory are larger in bfloat16 (same memory).

    ``order_from``: an image pixel ``(x, y)`` (e.g. the centre of the visible area); tiles are
    ordered by the distance of their centre from it, nearest first (ties in raster order).
    ``None``: raster order. Cheap (no TensorFlow); the engine uses exactly this plan, so
    ``len()`` gives the tile count.
    """
    stride = _check_stride(stride)
    rows, cols = heatmap_shape(height, width, stride)
    quantum: tuple[int, int] | None = None
    if tile_cells is not None:
        tile_rows, tile_cols = (tile_cells, tile_cells) if np.isscalar(tile_cells) else tuple(tile_cells)
        if int(tile_rows) != tile_rows or int(tile_cols) != tile_cols or tile_rows < 1 or tile_cols < 1:
            raise ValueError(f"tile_cells must be positive whole numbers, got {tile_cells!r}")
        tile_rows, tile_cols = int(tile_rows), int(tile_cols)
    elif stride % 4:
        target = default_tile_cells(stride)
        tile_rows, tile_cols = _balanced(rows, target), _balanced(cols, target)
    else:
        q = tile_quantum(stride)
        quantum = (q, q)
        if order_from is not None and rows and cols:
            tiles = _interactive_tiles(rows, cols, stride, (float(order_from[0]), float(order_from[1])), streamed,
                                       precision)
        else:
            tiles = _cover(0, rows, 0, cols, *bulk_tile_cells(stride, streamed=streamed, precision=precision))
    if quantum is None:
        tiles = _cover(0, rows, 0, cols, tile_rows, tile_cols)
    else:
        tile_rows = max((r.stop - r.start for r, _ in tiles), default=1)
        tile_cols = max((c.stop - c.start for _, c in tiles), default=1)
    if order_from is not None:
        px, py = float(order_from[0]), float(order_from[1])
        first = tiles[:1] if quantum is not None else []  # the interactive tile stays first

        def distance(item: tuple[int, tuple[slice, slice]]) -> tuple[float, int]:
            index, tile = item
            x, y = _tile_centre(tile, stride)
            return (math.hypot(x - px, y - py), index)

        tiles = first + [tile for _, tile in sorted(enumerate(tiles[len(first):]), key=distance)]
        order_from = (px, py)
    return HeatmapPlan(int(height), int(width), stride, tile_rows, tile_cols, tuple(tiles), order_from, quantum)


# ---------------------------------------------------------------------------------------------
# Model analysis: can this model be evaluated fully convolutionally?
# ---------------------------------------------------------------------------------------------


_ACTIVATIONS = ("relu", "sigmoid", "linear", "tanh", "elu", "selu", "softplus", "silu", "swish")


@dataclass
class _NetSpec:
    """A Table-1-shaped network as plain arrays: conv/pool stages, then Dense layers as convs."""

    features: list[tuple] = field(default_factory=list)
    """("conv", kernel (kh,kw,cin,cout), bias|None, activation) or ("pool", size)."""
    dense: list[tuple] = field(default_factory=list)
    """(kernel (kh,kw,cin,cout), bias|None, activation); the first one spans the whole feature map."""
    downsample: int = 1
    """Product of the pool sizes: windows must start on multiples of this."""


def _activation_name(keras, fn) -> str | None:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001 - custom callables
        return None
    if isinstance(name, dict):
        name = name.get("config", {}).get("name") if name.get("class_name") == "function" else None
    return name if name in _ACTIVATIONS else None


def _analyse(model) -> tuple[_NetSpec | None, str]:
    """Read a Sequential Conv2D/MaxPooling2D/Flatten/Dense model into a :class:`_NetSpec`.

    Returns ``(None, reason)`` for anything else; the engine then uses batched windows.
    """
    from viewer.model import import_keras

    keras = import_keras()
    L = keras.layers
    if not isinstance(model, keras.Sequential):
        return None, "not a Sequential model"
    spec = _NetSpec()
    height = width = PATCH_SIZE
    channels = 3
    flat: tuple[int, int, int] | None = None
    for layer in model.layers:
        kind = type(layer)
        if kind in (L.Dropout, L.InputLayer):
            continue
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and getattr(policy, "compute_dtype", "float32") != "float32":
            return None, f"layer {layer.name} computes in {policy.compute_dtype}"
        if flat is None and kind is L.Conv2D:
            if (
                tuple(layer.strides) != (1, 1)
                or tuple(layer.dilation_rate) != (1, 1)
                or layer.padding != "valid"
                or layer.data_format != "channels_last"
                or getattr(layer, "groups", 1) != 1
            ):
                return None, f"layer {layer.name} is not a plain valid stride-1 convolution"
            act = _activation_name(keras, layer.activation)
            if act is None:
                return None, f"layer {layer.name} has an unsupported activation"
            weights = layer.get_weights()
            kernel = np.asarray(weights[0], dtype=np.float32)
            bias = np.asarray(weights[1], dtype=np.float32) if layer.use_bias else None
            kh, kw, cin, cout = kernel.shape
            if cin != channels:
                return None, f"layer {layer.name} has unexpected input channels"
            height, width, channels = height - kh + 1, width - kw + 1, cout
            spec.features.append(("conv", kernel, bias, act))
        elif flat is None and kind is L.MaxPooling2D:
            pool = tuple(layer.pool_size)
            strides = tuple(layer.strides) if layer.strides is not None else pool
            if pool[0] != pool[1] or strides != pool or layer.data_format != "channels_last":
                return None, f"layer {layer.name} is not a square non-overlapping max-pool"
            size = pool[0]
            if size == 1:
                continue  # Table 1's 1x1 max-pool is the identity
            if layer.padding != "valid":
                return None, f"layer {layer.name} uses 'same' padding"
            height, width = height // size, width // size
            spec.downsample *= size
            spec.features.append(("pool", size))
        elif flat is None and kind is L.Flatten:
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                return None, f"layer {layer.name} flattens channels-first"
            flat = (height, width, channels)
        elif flat is not None and kind is L.Dense:
            act = _activation_name(keras, layer.activation)
            if act is None:
                return None, f"layer {layer.name} has an unsupported activation"
            weights = layer.get_weights()
            kernel = np.asarray(weights[0], dtype=np.float32)
            bias = np.asarray(weights[1], dtype=np.float32) if layer.use_bias else None
            if not spec.dense:
                fh, fw, fc = flat
                if kernel.shape[0] != fh * fw * fc:
                    return None, f"layer {layer.name} does not match the flattened feature map"
                kernel = kernel.reshape(fh, fw, fc, kernel.shape[1])  # Flatten is row-major (h, w, c)
            else:
                kernel = kernel.reshape(1, 1, *kernel.shape)
            spec.dense.append((kernel, bias, act))
        else:
            return None, f"layer {layer.name} ({kind.__name__}) is not supported by the fully convolutional pass"
    if flat is None or not spec.dense or height < 1 or width < 1:
        return None, "no Flatten + Dense head"
    if spec.dense[-1][0].shape[-1] != 1:
        return None, "the last Dense layer does not have one unit"
    return spec, ""


def _weights_fingerprint(model) -> tuple:
    """Changes when any weight does (checked on every heatmap call, since the traced passes hold
    the weights as constants). CRC-32 per array, not a cryptographic hash: it only has to notice
    training or ``set_weights``, and BLAKE2 over the 0.7 MB of weights plus copies cost a
    bfloat16 run on a microscope field ~5 % of its time."""
    import zlib

    return tuple((array.shape, zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B")))
                 for array in model.get_weights())


class _ModelEngines:
    """Per-model cache: the analysed spec, the traced exact pass per (stride, precision), the
    traced window batch."""

    def __init__(self, model) -> None:
        self.spec, self.reason = _analyse(model)
        self.fingerprint = _weights_fingerprint(model) if self.spec is not None else None
        self.exact: dict[tuple[int, str], Any] = {}
        self.windows: Any = None
        self.lock = threading.Lock()


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def _engines_for(model) -> _ModelEngines:
    with _ENGINES_LOCK:
        engines = _ENGINES.get(model)
    if engines is not None and engines.spec is not None:
        # Weights may have changed (training): the traced functions hold them as constants.
        if _weights_fingerprint(model) != engines.fingerprint:
            engines = None
    if engines is None:
        engines = _ModelEngines(model)
        with _ENGINES_LOCK:
            _ENGINES[model] = engines
    return engines


def heatmap_method(model, stride: int = DEFAULT_STRIDE) -> str:
    """``"fully-convolutional"`` if the engine can evaluate ``model`` exactly as one
    convolutional pass at this stride, else ``"windows"`` (batched windows, same numbers, slower)."""
    stride = _check_stride(stride)
    engines = _engines_for(model)
    if engines.spec is not None and stride % engines.spec.downsample == 0:
        return METHOD_EXACT
    return METHOD_WINDOWS


def effective_precision(model, stride: int = DEFAULT_STRIDE, precision: str = "float32") -> str:
    """The precision the engine computes ``model`` in at ``stride`` when asked for ``precision``
    (already checked against the CPU, see :func:`viewer.heatmap.precision.resolve_precision`):
    bfloat16 runs in the fully convolutional pass only, so a model or stride that falls back to
    batched windows is computed (exactly) in float32."""
    from viewer.heatmap.precision import BFLOAT16, FLOAT32, check_precision

    precision = check_precision(precision)
    if precision == BFLOAT16 and heatmap_method(model, stride) != METHOD_EXACT:
        return FLOAT32
    return precision


# ---------------------------------------------------------------------------------------------
# Evaluators
# ---------------------------------------------------------------------------------------------


def _tf():
    from viewer.model import import_keras

    import_keras()  # sets the quiet TF logging environment first
    import tensorflow as tf

    return tf


def _tf_activation(tf, name: str):
    return {
        "relu": tf.nn.relu,
        "sigmoid": tf.sigmoid,
        "linear": None,
        "tanh": tf.tanh,
        "elu": tf.nn.elu,
        "selu": tf.nn.selu,
        "softplus": tf.nn.softplus,
        "silu": tf.nn.silu,
        "swish": tf.nn.silu,
    }[name]


def _exact_function(engines: _ModelEngines, stride: int, precision: str = "float32"):
    """Traced fully convolutional pass over one (1, h, w, 3) uint8 tile (cached per stride and
    precision).

    Traced once with free height and width: a new tile shape then costs only oneDNN's kernel
    set-up (a few ms), not a new trace and graph optimisation (~40 ms). Plans pad their tiles to
    a few fixed shapes, so those kernels are reused for every tile.

    ``precision="bfloat16"``: every layer but the last runs in bfloat16 (weights rounded,
    products accumulated in float32 by oneDNN); the last layer and its sigmoid are float32.
    The first convolution reads the raw 0-255 pixel values, which bfloat16 holds exactly (8
    significant bits), with its weights divided by 255 instead: rounding the [0, 1] pixels
    to bfloat16 was the largest error of a plain all-bfloat16 pass (issue 10: max |diff| up to
    0.078), while rounding the scaled weights costs no more than rounding any other layer's.
    Keeping that convolution in float32 instead was as accurate but held the speed-up to about
    1.9x, since the float32 convolution, its pool and the cast were a third of the time.
    """
    key = (stride, precision)
    with engines.lock:
        fn = engines.exact.get(key)
        if fn is not None:
            return fn
        tf = _tf()
        spec = engines.spec
        step = stride // spec.downsample
        layers = [stage for stage in spec.features]
        layers += [("conv", kernel, bias, act, step if i == 0 else 1) for i, (kernel, bias, act) in enumerate(spec.dense)]
        low = tf.bfloat16 if precision == "bfloat16" else tf.float32
        # Stages [0, last) compute in `low`; the last in float32.
        last = len(layers) - 1
        # In bfloat16 the first convolution takes the pixel values as they are (exact in
        # bfloat16) and its weights carry the 1/255; in float32 the pixels are scaled as in
        # training, so float32 stays bit-for-bit the network's own arithmetic.
        fold_scale = precision == "bfloat16" and layers[0][0] == "conv"
        stages = []
        for i, stage in enumerate(layers):
            dtype = low if i < last else tf.float32
            if stage[0] == "pool":
                stages.append(("pool", stage[1], dtype))
                continue
            _, kernel, bias, act = stage[:4]
            if i == 0 and fold_scale:
                kernel = np.asarray(kernel, np.float32) / np.float32(255.0)
            conv_stride = stage[4] if len(stage) > 4 else 1
            stages.append((
                "conv", tf.constant(kernel, dtype=dtype), None if bias is None else tf.constant(bias, dtype=dtype),
                conv_stride, _tf_activation(tf, act), dtype,
            ))

        def forward(tile):
            x = tf.cast(tile, low) if fold_scale else tf.cast(tile, tf.float32) / 255.0
            for stage in stages:
                dtype = stage[-1]
                if x.dtype != dtype:
                    x = tf.cast(x, dtype)
                if stage[0] == "pool":
                    x = tf.nn.max_pool2d(x, stage[1], stage[1], "VALID")
                    continue
                _, kernel, bias, conv_stride, act, _ = stage
                x = tf.nn.conv2d(x, kernel, conv_stride, "VALID")
                if bias is not None:
                    x = tf.nn.bias_add(x, bias)
                if act is not None:
                    x = act(x)
            return tf.cast(x[0, :, :, 0], tf.float32)

        fn = tf.function(forward, input_signature=[tf.TensorSpec((1, None, None, 3), tf.uint8)], autograph=False)
        fn = fn.get_concrete_function()
        engines.exact[key] = fn
        return fn


def _windows_function(engines: _ModelEngines, model):
    """Traced model call on a fixed (256, 32, 32, 3) uint8 batch (cached per model)."""
    with engines.lock:
        if engines.windows is not None:
            return engines.windows
        tf = _tf()
        ref = weakref.ref(model)  # the cache must not keep the model alive

        def forward(batch):
            x = tf.cast(batch, tf.float32) / 255.0
            y = ref()(x, training=False)
            return tf.reshape(tf.cast(y, tf.float32), [-1])

        fn = tf.function(
            forward, input_signature=[tf.TensorSpec((_WINDOW_BATCH, PATCH_SIZE, PATCH_SIZE, 3), tf.uint8)], autograph=False
        ).get_concrete_function()
        engines.windows = fn
        return fn


_STATS = {"tiles": 0, "calls": 0}
"""Counters for tests: tiles evaluated and traced-function calls made (all threads)."""


class _ArrayPixels:
    """An in-RAM image behind the same ``block(x, y, w, h)`` call as a slide's analysis image.

    Blocks inside the image are views (no copy); blocks reaching past the bottom/right edge are
    zero-padded copies. Padded pixels only feed windows outside the heatmap, which are dropped.
    """

    _buffers = threading.local()
    """Per thread, the last padded block's array, reused for the next one of the same shape: a
    fresh 4 MB array per call (page faults, then freeing it) cost a bfloat16 field ~3 % of its
    time. The engine is done with a block before it asks for the next one in the same thread."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[:2]

    def block(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if x + w <= self.width and y + h <= self.height:
            return self.image[y : y + h, x : x + w]
        out = getattr(self._buffers, "block", None)
        if out is None or out.shape != (h, w, 3):
            out = self._buffers.block = np.empty((h, w, 3), dtype=np.uint8)
        part = self.image[y : y + h, x : x + w]
        ph, pw = part.shape[:2]
        out[:ph, :pw] = part
        out[ph:] = 0  # past the image: zeros, whose windows are dropped
        out[:ph, pw:] = 0
        return out


class _ExactEvaluator:
    def __init__(self, engines: _ModelEngines, pixels, plan: HeatmapPlan, precision: str) -> None:
        self.stride = plan.stride
        self.plan = plan
        self.pixels = pixels
        self.fn = _exact_function(engines, plan.stride, precision)

    def __call__(self, rows: slice, cols: slice) -> np.ndarray:
        # Each tile reads a block of one of the plan's few fixed shapes (padded past the tile),
        # so oneDNN reuses its kernels from tile to tile. Padded windows are dropped.
        block = self.pixels.block(*self.plan.block_box(rows, cols))[None]
        _STATS["calls"] += 1
        out = self.fn(block).numpy()
        return np.ascontiguousarray(out[: rows.stop - rows.start, : cols.stop - cols.start], dtype=np.float32)


class _WindowEvaluator:
    def __init__(self, engines: _ModelEngines, model, pixels, plan: HeatmapPlan) -> None:
        self.stride = plan.stride
        self.pixels = pixels
        self.fn = _windows_function(engines, model)
        self.batch = np.zeros((_WINDOW_BATCH, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)

    def __call__(self, rows: slice, cols: slice) -> np.ndarray:
        s = self.stride
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        y0, x0 = rows.start * s, cols.start * s
        region = self.pixels.block(x0, y0, (n_c - 1) * s + PATCH_SIZE, (n_r - 1) * s + PATCH_SIZE)
        windows = np.lib.stride_tricks.sliding_window_view(region, (PATCH_SIZE, PATCH_SIZE, 3))[::s, ::s, 0]
        windows = windows.reshape(n_r * n_c, PATCH_SIZE, PATCH_SIZE, 3)
        out = np.empty(n_r * n_c, dtype=np.float32)
        for start in range(0, len(out), _WINDOW_BATCH):
            chunk = windows[start : start + _WINDOW_BATCH]
            self.batch[: len(chunk)] = chunk
            _STATS["calls"] += 1
            out[start : start + len(chunk)] = self.fn(self.batch).numpy()[: len(chunk)]
        return out.reshape(n_r, n_c)


# ---------------------------------------------------------------------------------------------
# Public engine API
# ---------------------------------------------------------------------------------------------


def _check_image(image):
    """An (H, W, 3) uint8 array, or an object with ``height``, ``width`` and ``block(x, y, w, h)``
    such as :class:`viewer.heatmap.analysis.AnalysisImage` (a slide region read on demand)."""
    if hasattr(image, "block"):
        if image.height < PATCH_SIZE or image.width < PATCH_SIZE:
            raise InputError(
                f"image is {image.width}x{image.height} px; the heatmap needs at least {PATCH_SIZE}x{PATCH_SIZE} px"
            )
        return image
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got {image.dtype}")
    if image.shape[0] < PATCH_SIZE or image.shape[1] < PATCH_SIZE:
        raise InputError(
            f"image is {image.shape[1]}x{image.shape[0]} px; the heatmap needs at least {PATCH_SIZE}x{PATCH_SIZE} px"
        )
    return image


def iter_heatmap_tiles(
    image: np.ndarray | AnalysisImage,
    model: keras.Model,
    stride: int = DEFAULT_STRIDE,
    *,
    tile_cells: int | tuple[int, int] | None = None,
    order_from: tuple[float, float] | None = None,
    plan: HeatmapPlan | None = None,
    method: str = "auto",
    precision: str = "float32",
) -> Iterator[HeatmapTile]:
    """Compute a heatmap tile by tile: yields :class:`HeatmapTile` ``(rows, cols, probabilities)``.

    ``image``: (H, W, 3) uint8 (scaled to [0, 1] inside), or an
    :class:`~viewer.heatmap.analysis.AnalysisImage` that reads each tile plus its halo from a
    slide on demand (never the whole slide). ``model``: maps 32x32x3 float windows
    to one probability. Tiles come in the order of ``plan`` (default
    ``plan_heatmap(H, W, stride, tile_cells=..., order_from=...)``, so ``len()`` of that plan is
    the number of tiles): outward from the image pixel ``order_from`` if given (a small first
    tile there, then bulk tiles), else raster. Every cell is yielded exactly once. ``method``:
    ``"auto"`` (exact fully convolutional pass when possible), ``"fully-convolutional"`` (error
    if impossible) or ``"windows"``.

    ``precision``: ``"float32"`` (default; equal to the sliding window to float round-off) or
    ``"bfloat16"`` (about 2.4-2.5 times as fast on CPUs with bfloat16 units; probabilities within about
    0.02 of float32). On a CPU without bfloat16 units, bfloat16 warns once and computes in
    float32; the batched-window fallback always computes in float32
    (:func:`effective_precision` says which one a run uses).

    Arguments are checked and the model is analysed when this is called; the tiles themselves
    are computed lazily, one per ``next()``, in the calling thread. To cancel, stop iterating:
    no work runs in the background. Keep a reference to the image unchanged while iterating.
    """
    image = _check_image(image)
    stride = _check_stride(stride)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    precision = _runnable_precision(precision)
    pixels = image if hasattr(image, "block") else _ArrayPixels(image)
    if plan is None:
        plan = plan_heatmap(pixels.height, pixels.width, stride, tile_cells=tile_cells, order_from=order_from,
                            streamed=hasattr(image, "block"), precision=precision)
    elif (plan.height, plan.width, plan.stride) != (pixels.height, pixels.width, stride):
        raise ValueError("plan was made for a different image size or stride")
    engines = _engines_for(model)
    exact_ok = engines.spec is not None and stride % engines.spec.downsample == 0
    if method == METHOD_EXACT and not exact_ok:
        why = engines.reason or f"stride {stride} is not a multiple of {engines.spec.downsample}"
        raise ValueError(f"the fully convolutional pass cannot evaluate this model: {why}")
    use_exact = exact_ok and method != METHOD_WINDOWS
    return _generate(engines, model, pixels, plan, use_exact, precision)


_FALLBACK_WARNED = False


def _runnable_precision(precision: str) -> str:
    """``precision``, or float32 (warning once per process) for bfloat16 on a CPU without it."""
    global _FALLBACK_WARNED
    from viewer.heatmap.precision import resolve_precision

    notes: list[str] = []
    resolved = resolve_precision(precision, notes)
    if notes and not _FALLBACK_WARNED:
        import warnings

        _FALLBACK_WARNED = True
        warnings.warn(notes[0], RuntimeWarning, stacklevel=3)
    return resolved


def _generate(engines, model, pixels, plan, use_exact, precision) -> Iterator[HeatmapTile]:
    if not plan.tiles:
        return
    if use_exact:
        evaluate = _ExactEvaluator(engines, pixels, plan, precision)
    else:
        evaluate = _WindowEvaluator(engines, model, pixels, plan)
    for rows, cols in plan.tiles:
        probabilities = evaluate(rows, cols)
        _STATS["tiles"] += 1
        yield HeatmapTile(rows, cols, probabilities)


def compute_heatmap(
    image: np.ndarray,
    model: keras.Model,
    stride: int = DEFAULT_STRIDE,
    *,
    tile_cells: int | tuple[int, int] | None = None,
    method: str = "auto",
    precision: str = "float32",
) -> np.ndarray:
    """The whole heatmap: float32 ``(rows, cols)``, cell ``(r, c)`` = P(tumour) of the 32x32
    window with top-left pixel ``(stride*c, stride*r)``. Drains :func:`iter_heatmap_tiles`
    (bulk tiles unless ``tile_cells`` is given; ``precision`` as there)."""
    image = _check_image(image)
    out = np.full(heatmap_shape(image.shape[0], image.shape[1], stride), np.nan, dtype=np.float32)
    tiles = iter_heatmap_tiles(image, model, stride, tile_cells=tile_cells, method=method, precision=precision)
    for rows, cols, probabilities in tiles:
        out[rows, cols] = probabilities
    return out


def naive_heatmap(image: np.ndarray, model: keras.Model, stride: int = DEFAULT_STRIDE, *, batch_size: int = 256) -> np.ndarray:
    """Reference: cut out every window and run it through ``model.predict`` (slow; for tests and
    benchmarks). Works through the windows in chunks so memory stays bounded."""
    image = _check_image(image)
    stride = _check_stride(stride)
    rows, cols = heatmap_shape(image.shape[0], image.shape[1], stride)
    windows = np.lib.stride_tricks.sliding_window_view(image, (PATCH_SIZE, PATCH_SIZE, 3))[::stride, ::stride, 0]
    out = np.empty((rows, cols), dtype=np.float32)
    rows_per_chunk = max(1, 4096 // max(cols, 1))
    for r in range(0, rows, rows_per_chunk):
        chunk = windows[r : r + rows_per_chunk].reshape(-1, PATCH_SIZE, PATCH_SIZE, 3).astype(np.float32) / 255
        pred = model.predict(chunk, batch_size=batch_size, verbose=0)
        out[r : r + rows_per_chunk] = np.asarray(pred, dtype=np.float32).reshape(-1, cols)
    return out


def warm_up(
    model: keras.Model,
    stride: int = DEFAULT_STRIDE,
    image_shape: tuple[int, int] | None = None,
    *,
    tile_cells: int | tuple[int, int] | None = None,
    precision: str = "float32",
) -> None:
    """Prepare the engine so the first real tile comes quickly; call it in a worker right after
    loading the model. It analyses the model, traces the engine for ``stride`` and ``precision``
    and computes the interactive first tile of a small blank image, which starts TensorFlow's
    runtime; afterwards the first tile of any image costs its compute time plus a few ms of
    kernel set-up. With ``image_shape=(H, W)`` the blank image has that size and every tile
    shape of its bulk plan is set up too, so even that set-up is done for such images.
    """
    stride = _check_stride(stride)
    exact_stride = stride % 4 == 0
    if image_shape is None:  # one interactive tile (batched windows: one small batch)
        height = width = PATCH_SIZE + stride * (default_tile_cells(stride) - 1) if exact_stride else 2 * PATCH_SIZE
    else:
        height, width = image_shape
    blank = np.zeros((max(int(height), PATCH_SIZE), max(int(width), PATCH_SIZE), 3), dtype=np.uint8)
    plan = plan_heatmap(blank.shape[0], blank.shape[1], stride, tile_cells=tile_cells)
    tiles: dict[tuple[int, int], tuple[slice, slice]] = {}  # one tile per block shape
    for rows, cols in plan.tiles[: 1 if image_shape is None else None]:
        tiles.setdefault(plan.padded_shape(rows, cols), (rows, cols))
    if image_shape is not None and plan.quantum is not None:  # and an interactive first tile
        small = min(default_tile_cells(stride), plan.shape[0]), min(default_tile_cells(stride), plan.shape[1])
        tiles.setdefault(plan.padded_shape(slice(0, small[0]), slice(0, small[1])), (slice(0, small[0]), slice(0, small[1])))
    one_each = HeatmapPlan(plan.height, plan.width, stride, plan.tile_rows, plan.tile_cols, tuple(tiles.values()),
                           None, plan.quantum)
    for _ in iter_heatmap_tiles(blank, model, stride, plan=one_each, precision=precision):
        pass


# ---------------------------------------------------------------------------------------------
# Heatmap files: array + JSON sidecar
# ---------------------------------------------------------------------------------------------

HEATMAP_FORMATS = {".npy": "npy", ".tif": "tiff", ".tiff": "tiff"}
SIDECAR_FORMAT = "histoviewer-heatmap"
SIDECAR_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar that goes with a heatmap file: ``heat.npy`` -> ``heat.json``."""
    return Path(path).with_suffix(".json")


def heatmap_format(path: str | Path, fmt: str | None = None) -> str:
    """``"npy"`` or ``"tiff"`` for an output path (from ``fmt`` or else the suffix); raises OutputError."""
    path = Path(path)
    by_suffix = HEATMAP_FORMATS.get(path.suffix.lower())
    if fmt is not None:
        fmt = {"tif": "tiff"}.get(fmt.lower(), fmt.lower())
        if fmt not in ("npy", "tiff"):
            raise OutputError(f"unknown heatmap format {fmt!r}; use npy or tiff", path)
        if by_suffix is not None and by_suffix != fmt:
            raise OutputError(f"the file name ends in {path.suffix} but the format is {fmt}", path)
        return fmt
    if by_suffix is None:
        raise OutputError("unknown heatmap file type; use a .npy, .tif or .tiff name (or --format)", path)
    return by_suffix


def check_heatmap_output(path: str | Path, fmt: str | None = None, *, force: bool = False) -> tuple[Path, Path]:
    """Fail early (before computing) if a heatmap or its sidecar cannot be written; returns both paths."""
    from viewer.atomic import check_writable

    path = Path(path)
    heatmap_format(path, fmt)
    side = sidecar_path(path)
    if side == path:
        raise OutputError("the heatmap file cannot be named .json: that name is used by its sidecar", path)
    return check_writable(path, force=force), check_writable(side, force=force)


def heatmap_metadata(
    heatmap: np.ndarray,
    *,
    stride: int,
    image_shape: Sequence[int],
    model_path: str | Path | None,
    image_path: str | Path | None = None,
    method: str | None = None,
    heatmap_file: str | None = None,
    analysis: dict[str, Any] | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """The sidecar contents: geometry, model checksum, precision, program version.

    ``image_shape`` is the analysed image (analysis pixels). ``analysis``: for slides, where that
    image lies on level 0 (``scale``, ``origin``, ...: :meth:`AnalysisGrid.as_attrs`); without it
    the scale is 1 and the origin (0, 0). ``precision``: the arithmetic the network ran in
    (``"float32"`` or ``"bfloat16"``; the array itself is float32 either way)."""
    from viewer.heatmap.precision import check_precision

    from viewer.model import file_sha256

    stride = _check_stride(stride)
    height, width = int(image_shape[0]), int(image_shape[1])
    rows, cols = heatmap.shape
    finite = np.isfinite(heatmap)
    x, y, w, h = heatmap_rect(rows, cols, stride)
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "heatmap_file": heatmap_file,
        "dtype": "float32",
        "shape": [int(rows), int(cols)],
        "complete": bool(finite.all()),
        "nan_means": "not computed",
        "value": "P(tumour) of the 32x32 window, from the model's sigmoid output",
        "geometry": {
            "patch_size": PATCH_SIZE,
            "stride": stride,
            "window_centre_offset": WINDOW_CENTRE_OFFSET,
            "window_top_left": "x = stride*col, y = stride*row",
            "cell_centre": "x = stride*col + 16, y = stride*row + 16",
            "draw_rect": [x, y, w, h],
        },
        "image": {
            "width": width,
            "height": height,
            "file": None if image_path is None else Path(image_path).name,
        },
        "model": {
            "file": None if model_path is None else Path(model_path).name,
            "sha256": None if model_path is None else file_sha256(model_path),
        },
        "analysis": analysis if analysis is not None else {"scale": 1.0, "origin": [0, 0]},
        "method": method,
        "precision": check_precision(precision),
        "program": "histoviewer",
        "program_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "min": float(heatmap[finite].min()) if finite.any() else None,
        "max": float(heatmap[finite].max()) if finite.any() else None,
    }


def save_heatmap(
    heatmap: np.ndarray,
    path: str | Path,
    *,
    stride: int,
    image_shape: Sequence[int],
    model_path: str | Path | None,
    fmt: str | None = None,
    force: bool = False,
    image_path: str | Path | None = None,
    method: str | None = None,
    analysis: dict[str, Any] | None = None,
    precision: str = "float32",
) -> tuple[Path, Path]:
    """Write a heatmap (float32 .npy or single-channel float32 TIFF) and its JSON sidecar.

    Both files are written atomically (temporary file + rename; the array is renamed after the
    sidecar, so a crash never leaves an array without its sidecar). ``fmt`` = ``"npy"``/``"tiff"``
    or ``None`` (from the suffix). ``image_shape`` = (height, width, ...) of the image.
    NaN cells (not computed) are kept as NaN and the sidecar says ``"complete": false``.
    ``precision``: what the network computed in, recorded in the sidecar.
    Returns ``(array_path, sidecar_path)``; raises :class:`OutputError` with a one-line message.
    """
    from viewer.atomic import atomic_output

    path = Path(path)
    fmt = heatmap_format(path, fmt)
    heatmap = np.ascontiguousarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    expected = heatmap_shape(image_shape[0], image_shape[1], stride)
    if heatmap.shape != expected:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match a {image_shape[1]}x{image_shape[0]} image at stride {stride} {expected}")
    array_path, side = check_heatmap_output(path, fmt, force=force)
    meta = heatmap_metadata(
        heatmap, stride=stride, image_shape=image_shape, model_path=model_path,
        image_path=image_path, method=method, heatmap_file=path.name, analysis=analysis, precision=precision,
    )
    text = json.dumps(meta, indent=2) + "\n"
    with atomic_output(array_path, force=force) as tmp_array:
        if fmt == "npy":
            with open(tmp_array, "wb") as fh:
                np.save(fh, heatmap, allow_pickle=False)
        else:
            import tifffile

            tifffile.imwrite(
                tmp_array, heatmap, photometric="minisblack", compression="zlib",
                description=json.dumps({"histoviewer_heatmap": meta["geometry"]}), metadata=None,
            )
        with atomic_output(side, force=force) as tmp_side:
            tmp_side.write_text(text, encoding="utf-8")
    return array_path, side


def load_heatmap(path: str | Path) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Read a heatmap written by :func:`save_heatmap`: ``(float32 array, sidecar dict or None)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("heatmap file not found", path)
    fmt = HEATMAP_FORMATS.get(path.suffix.lower())
    try:
        if fmt == "npy":
            array = np.load(path, allow_pickle=False)
        elif fmt == "tiff":
            import tifffile

            array = tifffile.imread(path)
        else:
            raise InputError("unknown heatmap file type; expected .npy, .tif or .tiff", path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/tifffile raise many types
        raise InputError(f"cannot be read as a heatmap ({type(exc).__name__})", path) from exc
    if array.ndim != 2:
        raise InputError(f"is not a 2-D heatmap (shape {array.shape})", path)
    side = sidecar_path(path)
    meta = None
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"sidecar {side.name} is not valid JSON", path) from exc
    return array.astype(np.float32, copy=False), meta

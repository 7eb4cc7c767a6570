"""A computed heatmap with its geometry, whether it lives in RAM or in a zarr store.

Everything that *draws* a heatmap (the overlay exporter, the GUI layer, the GeoJSON writer) reads
cells through :class:`HeatmapData`: ``read(rows, cols)`` plus the :class:`AnalysisGrid` that places
every cell on level-0 pixels. So a figure of a small image (array) and of a whole slide (store) is
made by the same code, and neither needs the whole heatmap in memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np

from viewer import PATCH_SIZE
from viewer.heatmap.analysis import AnalysisGrid


class HeatmapData(Protocol):
    grid: AnalysisGrid

    @property
    def shape(self) -> tuple[int, int]: ...

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """float32 probabilities of a block of cells (NaN = not computed / background)."""
        ...

    def overview(self, kind: str = "mean") -> tuple[np.ndarray, int] | None:
        """A reduced copy ``(array, factor)`` (``factor`` cells per overview cell) for drawing at
        low zoom, or ``None`` when there is none (then callers read and reduce cells themselves)."""
        ...


class ArrayHeatmap:
    """A heatmap held as one array (images, regions, a run in the GUI)."""

    def __init__(self, array: np.ndarray, grid: AnalysisGrid) -> None:
        if tuple(array.shape) != grid.shape:
            raise ValueError(f"heatmap shape {array.shape} does not match its grid {grid.shape}")
        self.array = array
        self.grid = grid

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return np.asarray(self.array[rows, cols], dtype=np.float32)

    def overview(self, kind: str = "mean") -> None:
        return None


class StoreHeatmap:
    """A heatmap in a zarr store written by :mod:`viewer.heatmap.store`."""

    def __init__(self, store) -> None:
        self.store = store
        self.grid = grid_from_attrs(store.attrs)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self.store.read(rows, cols)

    def overview(self, kind: str = "mean") -> tuple[np.ndarray, int]:
        array = self.store.read_overview(kind)
        factor = -(-self.shape[0] // max(1, array.shape[0])) if array.shape[0] else 1
        return array, max(1, factor)


def grid_from_attrs(attrs: dict) -> AnalysisGrid:
    """The :class:`AnalysisGrid` recorded in a store's or sidecar's attributes."""
    size = attrs.get("analysis_size")
    stride = int(attrs["stride"])
    if size is None:  # derive from the grid shape (exact inverse is not needed for drawing)
        rows, cols = attrs["shape"]
        size = [(cols - 1) * stride + PATCH_SIZE, (rows - 1) * stride + PATCH_SIZE]
    origin = attrs.get("origin") or [0, 0]
    return AnalysisGrid(
        (int(origin[0]), int(origin[1])), float(attrs.get("scale", 1.0)), int(size[0]), int(size[1]), stride,
        attrs.get("analysis_mpp"),
    )


def open_heatmap(path: str | Path) -> HeatmapData:
    """Open a heatmap written by ``histoviewer heatmap``: a ``.zarr`` store or an array with sidecar."""
    from viewer.errors import InputError

    path = Path(path)
    if path.suffix.lower() == ".zarr":
        from viewer.heatmap.store import HeatmapStore

        return StoreHeatmap(HeatmapStore.open(path, mode="r"))
    from viewer.heatmap.engine import load_heatmap

    array, meta = load_heatmap(path)
    if meta is None:
        raise InputError("has no JSON sidecar, so its geometry is unknown", path)
    geometry, image, analysis = meta.get("geometry", {}), meta.get("image", {}), meta.get("analysis", {})
    attrs = {
        "stride": geometry.get("stride"), "shape": list(array.shape),
        "analysis_size": [image.get("width"), image.get("height")],
        "origin": analysis.get("origin", [0, 0]), "scale": analysis.get("scale", 1.0),
        "analysis_mpp": analysis.get("analysis_mpp"),
    }
    return ArrayHeatmap(array, grid_from_attrs(attrs))


def cells_under_pixels(grid: AnalysisGrid, start: float, count: int, step: float, axis: int) -> np.ndarray:
    """For ``count`` output pixels along one axis, the heatmap cell drawn over each one, or -1.

    Output pixel ``k`` covers level-0 ``[start + k*step, start + (k+1)*step)``; it takes the cell
    whose stride-wide square (centred on the window centre) contains the pixel's centre. With
    ``step == 1``, ``scale == 1`` and the origin at 0 this is exactly
    :func:`viewer.heatmap.engine.pixel_cell_index`, the rule of the full-resolution exporter.
    ``axis``: 1 for x (columns), 0 for y (rows).
    """
    origin = grid.origin[0] if axis == 1 else grid.origin[1]
    cells = grid.shape[1] if axis == 1 else grid.shape[0]
    centres = start + (np.arange(int(count), dtype=np.float64) + 0.5) * step
    analysis = (centres - origin) / grid.scale
    index = np.floor((analysis - (PATCH_SIZE / 2 - grid.stride / 2)) / grid.stride).astype(np.int64)
    index[(index < 0) | (index >= cells)] = -1
    return index


def cell_positions(grid: AnalysisGrid, start: float, count: int, step: float, axis: int) -> np.ndarray:
    """Fractional cell coordinate (cell centres at whole numbers) of each output pixel's centre,
    for smooth (bilinear) drawing between cell centres."""
    origin = grid.origin[0] if axis == 1 else grid.origin[1]
    centres = start + (np.arange(int(count), dtype=np.float64) + 0.5) * step
    analysis = (centres - origin) / grid.scale
    return (analysis - PATCH_SIZE / 2) / grid.stride


def cell_span(grid: AnalysisGrid, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
    """The rows and columns of cells whose squares meet the level-0 box [x0, x1) x [y0, y1)."""
    rows, cols = grid.shape
    s = grid.stride
    half = PATCH_SIZE / 2 - s / 2

    def span(a0: float, a1: float, origin: float, n: int) -> slice:
        lo = math.floor(((a0 - origin) / grid.scale - half) / s)
        hi = math.floor(((a1 - origin) / grid.scale - half) / s) + 1
        return slice(min(max(lo, 0), n), min(max(hi, 0), n))

    return span(y0, y1, grid.origin[1], rows), span(x0, x1, grid.origin[0], cols)

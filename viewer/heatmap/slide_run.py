"""Heatmaps of slides: decide what to analyse, then stream store chunks through the one engine.

:func:`plan_slide_heatmap` settles everything before the long work: the analysis scale (the
model's pixel size against the slide's), the region, the tissue mask and the chunk grid.
:func:`iter_slide_heatmap` is a thin filter around :func:`~viewer.heatmap.engine.iter_heatmap_tiles`
(the only engine): it hands the engine the chunks that hold tissue, reading each one plus its
halo from the slide, and blanks background cells to NaN ("not computed"). Chunks without tissue
cost nothing. :func:`run_to_store` drains it into a resumable zarr store; the CLI, the GUI and the
batch all use these three functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from viewer import DEFAULT_STRIDE, __version__
from viewer.heatmap.analysis import AnalysisGrid, AnalysisImage, analysis_scale, region_grid
from viewer.heatmap.engine import HeatmapPlan, HeatmapTile, iter_heatmap_tiles

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.store import HeatmapStore
    from viewer.slide.source import SlideSource
    from viewer.slide.tissue import TissueMask

DEFAULT_CHUNK = 64
"""Store chunk side in cells, which is also the engine's tile: 64 cells = 536 px of input at
stride 8, large enough to amortise the 24 px halo, small enough to paint progressively."""

WHOLE_SLIDE_SIDE = 4096
"""Images at most this big on both sides, without pyramid levels of their own, are microscope
fields (BreCaHAD's 1360x1024): analysed whole, as before, with no tissue detection by default."""

MAX_ARRAY_CELLS = 100_000_000
"""Largest heatmap written as one in-memory array (.npy); beyond it, use a .zarr store."""


@dataclass(frozen=True)
class SlideHeatmapOptions:
    """What the user asked for. ``tissue_mask``: ``None`` = automatic (whole slides only)."""

    stride: int = DEFAULT_STRIDE
    mpp: float | None = None
    region: tuple[int, int, int, int] | None = None
    tissue_mask: bool | None = None
    chunk: int | None = None
    """Chunk (= engine tile) side in cells; None: :data:`DEFAULT_CHUNK` for whole slides, and the
    engine's interactive tile size for a microscope field, so its first tile paints quickly."""
    precision: str = "float32"
    """Arithmetic of the network: ``"float32"`` (exact, the default) or ``"bfloat16"`` (faster on
    CPUs with bfloat16 units; elsewhere the plan notes it and uses float32). The plan records the
    precision actually used (:attr:`SlideHeatmapPlan.precision`)."""


def is_whole_slide(slide: SlideSource) -> bool:
    """A pyramidal file, or an image too big to be a single microscope field."""
    return len(slide.native_levels) > 1 or max(slide.width, slide.height) > WHOLE_SLIDE_SIDE


@dataclass
class SlideHeatmapPlan:
    """Everything decided before computing: grid, tissue, chunks, provenance."""

    slide: SlideSource
    grid: AnalysisGrid
    tissue: TissueMask | None
    chunk: int
    model_sha256: str | None
    notes: list[str] = field(default_factory=list)
    chunk_tissue_cells: np.ndarray | None = None
    """Cells to evaluate per chunk (chunk grid), counted once when the plan is made."""
    precision: str = "float32"
    """The precision the engine runs in (the requested one, or float32 where the CPU lacks
    bfloat16); recorded in the store's attributes and the sidecar."""

    @property
    def stride(self) -> int:
        return self.grid.stride

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def chunk_grid(self) -> tuple[int, int]:
        rows, cols = self.shape
        return -(-rows // self.chunk), -(-cols // self.chunk)

    def chunk_slices(self, i: int, j: int) -> tuple[slice, slice]:
        rows, cols = self.shape
        c = self.chunk
        return slice(i * c, min((i + 1) * c, rows)), slice(j * c, min((j + 1) * c, cols))

    def evaluated_cells(self, rows: slice, cols: slice) -> np.ndarray:
        """Bool mask of the cells whose window is mostly tissue (all True without a mask)."""
        if self.tissue is None:
            return np.ones((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        from viewer.slide.tissue import TISSUE_THRESHOLD

        fractions = self.tissue.cell_fractions(self.grid.origin, self.grid.scale, self.grid.stride, rows, cols)
        return fractions >= TISSUE_THRESHOLD

    @property
    def tissue_cells(self) -> int:
        return int(self.chunk_tissue_cells.sum()) if self.chunk_tissue_cells is not None else 0

    @property
    def cell_area_px(self) -> float:
        """Level-0 pixels per heatmap cell (for Mpx/s figures)."""
        return (self.grid.stride * self.grid.scale) ** 2

    def store_attrs(self) -> dict:
        """The attributes a heatmap store of this plan carries (see README, 'Heatmap stores')."""
        from viewer.slide.tissue import TISSUE_THRESHOLD

        slide = self.slide
        try:
            size = slide.path.stat().st_size
        except OSError:
            size = None
        return {
            **self.grid.as_attrs(),
            "model_sha256": self.model_sha256,
            "version": __version__,
            "precision": self.precision,
            "tissue_mask": self.tissue is not None,
            "tissue_threshold": TISSUE_THRESHOLD if self.tissue is not None else None,
            "tissue_fraction": None if self.tissue is None else float(self.tissue.fraction),
            "slide": {
                "file": slide.name, "width": slide.width, "height": slide.height, "size_bytes": size,
                "fingerprint": slide_fingerprint(slide),
                "mpp": None if slide.mpp is None else list(slide.mpp),
            },
        }


def slide_fingerprint(slide: SlideSource) -> str:
    """Identifies a slide file cheaply: name, size, level-0 size and modification time."""
    import hashlib

    try:
        st = slide.path.stat()
        stamp = f"{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        stamp = "?"
    text = f"{slide.name}|{slide.width}x{slide.height}|{stamp}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def analysis_grid_for(
    slide: SlideSource, model_path: str | Path | None, options: SlideHeatmapOptions = SlideHeatmapOptions(),
) -> tuple[AnalysisGrid, list[str]]:
    """The analysis grid alone (no pixels read): scale from the pixel sizes, then the region."""
    from viewer.model import model_mpp

    notes: list[str] = []
    if options.mpp is not None:
        if not (math.isfinite(options.mpp) and 0 < options.mpp <= 100):
            from viewer.errors import InputError

            raise InputError(f"--mpp must be a pixel size in µm between 0 and 100 (got {options.mpp:g})")
        slide_mpp: tuple[float, float] | None = (float(options.mpp), float(options.mpp))
    else:
        slide_mpp = slide.mpp
    scale, mpp = analysis_scale(slide_mpp, model_mpp(model_path) if model_path else None, notes)
    if not is_whole_slide(slide) and slide.mpp is None and options.mpp is None:
        notes.clear()  # a plain microscope field at scale 1 is the normal case, not news
    return region_grid(slide, options.region, scale, options.stride, mpp), notes


def plan_slide_heatmap(
    slide: SlideSource,
    model_path: str | Path | None,
    options: SlideHeatmapOptions = SlideHeatmapOptions(),
) -> SlideHeatmapPlan:
    """Settle the analysis of ``slide`` (reads the model's record and one low level only)."""
    from viewer.model import file_sha256

    grid, notes = analysis_grid_for(slide, model_path, options)
    use_tissue = is_whole_slide(slide) if options.tissue_mask is None else bool(options.tissue_mask)
    tissue = None
    if use_tissue:
        from viewer.slide.tissue import detect_tissue

        tissue = detect_tissue(slide)
    chunk = options.chunk
    if chunk is None:
        from viewer.heatmap.engine import default_tile_cells

        chunk = DEFAULT_CHUNK if is_whole_slide(slide) else default_tile_cells(grid.stride)
    from viewer.heatmap.precision import resolve_precision

    precision = resolve_precision(options.precision, notes)
    plan = SlideHeatmapPlan(
        slide, grid, tissue, int(chunk),
        None if model_path is None else file_sha256(model_path), notes, precision=precision,
    )
    plan.chunk_tissue_cells = _count_tissue_cells(plan)
    return plan


def _count_tissue_cells(plan: SlideHeatmapPlan) -> np.ndarray:
    """Cells to evaluate per chunk, one band of chunk rows at a time (a band is a few MB even on a
    50k slide; one call per chunk would cost seconds of Python overhead on 10^4 chunks)."""
    n_r, n_c = plan.chunk_grid
    rows_total, cols_total = plan.shape
    c = plan.chunk
    counts = np.zeros((n_r, n_c), dtype=np.int64)
    for i in range(n_r):
        rows = slice(i * c, min((i + 1) * c, rows_total))
        band = plan.evaluated_cells(rows, slice(0, cols_total))
        padded = np.zeros((band.shape[0], n_c * c), dtype=np.int64)
        padded[:, :cols_total] = band
        counts[i] = padded.reshape(band.shape[0], n_c, c).sum(axis=(0, 2))
    return counts


def chunks_in_order(plan: SlideHeatmapPlan, order_from: tuple[float, float] | None = None, *, skip: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Every chunk not in ``skip`` (bool chunk grid), nearest to the level-0 point ``order_from``
    first (the visible area, then outward), else in raster order."""
    n_r, n_c = plan.chunk_grid
    chunks = [(i, j) for i in range(n_r) for j in range(n_c) if skip is None or not skip[i, j]]
    if order_from is None:
        return chunks
    span = plan.chunk * plan.grid.stride * plan.grid.scale  # level-0 px per chunk
    ox, oy = plan.grid.origin
    px, py = order_from

    def distance(ij: tuple[int, int]) -> float:
        cx, cy = ox + (ij[1] + 0.5) * span, oy + (ij[0] + 0.5) * span
        return math.hypot(cx - px, cy - py)

    return sorted(chunks, key=distance)


def iter_slide_heatmap(plan: SlideHeatmapPlan, model, chunks: Iterable[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    """Yield ``((i, j), HeatmapTile)`` for each chunk, background cells NaN.

    Chunks with tissue are computed by :func:`iter_heatmap_tiles` in the given order, each read
    from the slide as tile plus halo; chunks without tissue cost no compute and come last (on a
    slide they are thousands, and recording them must not delay the first tissue results).
    """
    chunks = list(chunks)
    counts = plan.chunk_tissue_cells
    empty = [ij for ij in chunks if counts is not None and counts[ij] == 0]
    busy = [ij for ij in chunks if counts is None or counts[ij] > 0]
    yield from _computed_chunks(plan, model, busy)
    for i, j in empty:
        rows, cols = plan.chunk_slices(i, j)
        yield (i, j), HeatmapTile(rows, cols, np.full((rows.stop - rows.start, cols.stop - cols.start), np.nan, np.float32))


def _computed_chunks(plan: SlideHeatmapPlan, model, busy: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    if not busy:
        return
    grid = plan.grid
    engine_plan = HeatmapPlan(
        grid.height, grid.width, grid.stride, plan.chunk, plan.chunk,
        tuple(plan.chunk_slices(i, j) for i, j in busy),
    )
    tiles = iter_heatmap_tiles(AnalysisImage(plan.slide, grid), model, grid.stride, plan=engine_plan)
    try:
        for (i, j), tile in zip(busy, tiles, strict=True):  # the engine yields one tile per chunk
            keep = plan.evaluated_cells(tile.rows, tile.cols)
            probabilities = tile.probabilities if keep.all() else np.where(keep, tile.probabilities, np.float32(np.nan))
            yield (i, j), HeatmapTile(tile.rows, tile.cols, probabilities.astype(np.float32, copy=False))
    finally:
        tiles.close()


def open_store_for(plan: SlideHeatmapPlan, path: str | Path, *, force: bool = False) -> tuple[HeatmapStore, bool]:
    """Create the store of ``plan`` at ``path``, or resume a compatible one: ``(store, resumed)``."""
    from viewer.heatmap.store import HeatmapStore

    return HeatmapStore.open_or_create(path, shape=plan.shape, attrs=plan.store_attrs(), chunk=plan.chunk, force=force)


def run_to_store(
    plan: SlideHeatmapPlan,
    model,
    store: HeatmapStore,
    *,
    order_from: tuple[float, float] | None = None,
    chunks: Iterable[tuple[int, int]] | None = None,
) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    """Compute every chunk the store lacks (or just ``chunks``), writing each one as it comes.

    Yields what it wrote, so a caller can paint or report progress. Stopping early loses at most
    the chunk being computed; a later run continues from the store's ``done`` mask.
    """
    done = store.done_mask()
    if chunks is None:
        todo = chunks_in_order(plan, order_from, skip=done)
    else:
        todo = [ij for ij in chunks if not done[ij]]
    for (i, j), tile in iter_slide_heatmap(plan, model, todo):
        store.write_tissue_chunk(i, j, plan.evaluated_cells(tile.rows, tile.cols))
        store.write_chunk(i, j, tile.probabilities)
        yield (i, j), tile
    if store.done_mask().all():
        store.mark_complete()


def compute_slide_array(plan: SlideHeatmapPlan, model, *, tiles_out: list | None = None) -> np.ndarray:
    """The whole heatmap of a plan as one float32 array (NaN = background): for images and
    regions that fit in memory (``.npy`` output)."""
    rows, cols = plan.shape
    if rows * cols > MAX_ARRAY_CELLS:
        from viewer.errors import InputError

        raise InputError(
            f"the heatmap would have {rows}x{cols} cells, too many for one in-memory array; "
            "write a .zarr store instead, or choose a smaller --region"
        )
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    for _, tile in iter_slide_heatmap(plan, model, chunks_in_order(plan)):
        out[tile.rows, tile.cols] = tile.probabilities
    return out

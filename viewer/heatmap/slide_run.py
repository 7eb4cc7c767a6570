"""Heatmaps of slides: decide what to analyse, then stream store chunks through the one engine.

:func:`plan_slide_heatmap` settles everything before the long work: the analysis scale (the
model's pixel size against the slide's), the region, the tissue mask and the chunk grid.
:func:`iter_slide_heatmap` is a thin filter around :func:`~viewer.heatmap.engine.iter_heatmap_tiles`
(the only engine): it hands the engine the chunks that hold tissue, reading each one plus its
halo from the slide, and blanks background cells to NaN ("not computed"). Chunks without tissue
cost nothing; neighbouring chunks with tissue are computed together in bulk tiles.
:func:`run_to_store` drains it into a resumable zarr store; the CLI, the GUI and the batch all
use these three functions.
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
from viewer.heatmap.engine import HeatmapPlan, HeatmapTile, bulk_tile_cells, iter_heatmap_tiles, tile_quantum

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.store import HeatmapStore
    from viewer.slide.source import SlideSource
    from viewer.slide.tissue import TissueMask

DEFAULT_CHUNK = 128
"""Store chunk side in cells for whole slides: 128 cells = 1024 px of level 0 at stride 8 and
the model's resolution, still small enough to paint progressively (a 50k slide has ~2,400) and
to lose little on a crash. Each chunk costs five small files (probability, tissue, two overview
blocks, the ``done`` flag), written durably, whatever its size; with 64-cell chunks those
writes slowed a whole-slide run by 17-19 % on two cores, with 128-cell chunks by 4-7 %
(issue 10). The engine computes blocks of chunks at once (:func:`engine_tiles`), in tiles of
its own size, so the chunk size does not bound the engine's tile (nor its memory). A store
made with another chunk size is resumed in its own (:func:`options_for_store`)."""

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

        # A microscope field's chunk is the engine's interactive tile (rounded to the store's
        # multiple of 8 cells): its first chunk paints at once, later ones go in bulk tiles.
        chunk = DEFAULT_CHUNK if is_whole_slide(slide) else -(-default_tile_cells(grid.stride) // 8) * 8
    from viewer.heatmap.precision import resolve_precision

    precision = resolve_precision(options.precision, notes)
    plan = SlideHeatmapPlan(
        slide, grid, tissue, int(chunk),
        None if model_path is None else file_sha256(model_path), notes, precision=precision,
    )
    plan.chunk_tissue_cells = _count_tissue_cells(plan)
    return plan


def _count_tissue_cells(plan: SlideHeatmapPlan) -> np.ndarray:
    """Cells to evaluate per chunk, in blocks of 16 x 16 chunks: one call per chunk costs seconds
    of Python overhead on the 10^4 chunks of a 50k slide, and bounded blocks keep each NumPy call
    (which holds the GIL) short while the viewer draws in another thread."""
    n_r, n_c = plan.chunk_grid
    rows_total, cols_total = plan.shape
    c, step = plan.chunk, 16
    counts = np.zeros((n_r, n_c), dtype=np.int64)
    for i0 in range(0, n_r, step):
        for j0 in range(0, n_c, step):
            i1, j1 = min(n_r, i0 + step), min(n_c, j0 + step)
            rows = slice(i0 * c, min(i1 * c, rows_total))
            cols = slice(j0 * c, min(j1 * c, cols_total))
            block = plan.evaluated_cells(rows, cols)
            padded = np.zeros(((i1 - i0) * c, (j1 - j0) * c), dtype=np.int32)
            padded[: block.shape[0], : block.shape[1]] = block
            counts[i0:i1, j0:j1] = padded.reshape(i1 - i0, c, j1 - j0, c).sum(axis=(1, 3))
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


def iter_slide_heatmap(
    plan: SlideHeatmapPlan, model, chunks: Iterable[tuple[int, int]], *, interactive: bool = True,
) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    """Yield ``((i, j), HeatmapTile)`` for each chunk, background cells NaN.

    Chunks with tissue are computed by :func:`iter_heatmap_tiles` in the given order, in
    ``plan.precision``, each engine tile read from the slide with its halo; chunks without tissue
    cost no compute and come last (on a slide they are thousands, and recording them must not
    delay the first tissue results). Neighbouring chunks are computed together in bulk tiles
    (:func:`engine_tiles`, :func:`tissue_tiles`: 64 x 96 cells at stride 8, 128 x 128 in
    bfloat16; glass at tissue edges skipped) and the results are split and yielded chunk by
    chunk, so stores stay chunk-aligned.
    ``interactive``: the first chunk is computed alone, so a viewer paints it at once.
    """
    chunks = list(chunks)
    counts = plan.chunk_tissue_cells
    empty = [ij for ij in chunks if counts is not None and counts[ij] == 0]
    busy = [ij for ij in chunks if counts is None or counts[ij] > 0]
    yield from _computed_chunks(plan, model, busy, interactive)
    for i, j in empty:
        rows, cols = plan.chunk_slices(i, j)
        yield (i, j), HeatmapTile(rows, cols, np.full((rows.stop - rows.start, cols.stop - cols.start), np.nan, np.float32))


def _computed_chunks(
    plan: SlideHeatmapPlan, model, busy: list[tuple[int, int]], interactive: bool,
) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    if not busy:
        return
    grid = plan.grid
    groups = []  # (chunk rect, chunks, tissue mask over the rect, engine tiles covering its tissue)
    for n, ((rows, cols), members) in enumerate(engine_tiles(plan, busy, interactive=interactive)):
        keep = plan.evaluated_cells(rows, cols)
        split = not (interactive and n == 0)  # the interactive first chunk: one quick call
        groups.append(((rows, cols), members, keep,
                       tissue_tiles(grid.stride, keep, rows.start, cols.start, split=split, precision=plan.precision)))
    flat = [tile for *_, tiles in groups for tile in tiles]
    engine_plan = HeatmapPlan(
        grid.height, grid.width, grid.stride,
        max(t[0].stop - t[0].start for t in flat), max(t[1].stop - t[1].start for t in flat),
        tuple(flat), quantum=(tile_quantum(grid.stride),) * 2,
    )
    pixels = _ReadAhead(AnalysisImage(plan.slide, grid), [[engine_plan.block_box(*t) for t in tiles] for *_, tiles in groups])
    results = iter_heatmap_tiles(pixels, model, grid.stride, plan=engine_plan, precision=plan.precision)
    try:
        for (rows, cols), members, keep, tiles in groups:
            values = np.full(keep.shape, np.nan, np.float32)
            for _ in tiles:
                tile = next(results)
                values[tile.rows.start - rows.start : tile.rows.stop - rows.start,
                       tile.cols.start - cols.start : tile.cols.stop - cols.start] = tile.probabilities
            values[~keep] = np.nan  # background: not evaluated
            for i, j in members:
                c_rows, c_cols = plan.chunk_slices(i, j)
                part = values[c_rows.start - rows.start : c_rows.stop - rows.start,
                              c_cols.start - cols.start : c_cols.stop - cols.start]
                yield (i, j), HeatmapTile(c_rows, c_cols, np.ascontiguousarray(part))
        if next(results, None) is not None:  # run the engine to its end, as its caller would
            raise RuntimeError("the engine yielded more tiles than planned")
    finally:
        results.close()
        pixels.close()


_CALL_COST_PX = 20_000
"""What one more engine call costs, in input pixels of work (~1 ms: TensorFlow's dispatch,
Python, oneDNN's start-up per layer): the price of splitting a tile at a tissue edge."""

_MIN_SPLIT_PX = 128
"""Tiles are not split below about this side in image pixels (their halo would dominate)."""


def tissue_tiles(stride: int, keep: np.ndarray, row0: int = 0, col0: int = 0, *, split: bool = True,
                 precision: str = "float32") -> list[tuple[slice, slice]]:
    """Engine tiles covering every True cell of ``keep`` (a block of cells at ``(row0, col0)``)
    for the least work: the tissue's bounding box, cut into bulk tiles where it is larger than
    one (:func:`~viewer.heatmap.engine.bulk_tile_cells`); where tissue ends on a diagonal or in
    patches, a box is cut in two along its longer side (recursively) when the halves' bounding
    boxes cost less, halo, padding and the extra call included (:func:`_tile_cost`). Inside
    tissue these are whole bulk tiles; at an edge they skip most of the glass.
    ``split=False``: bounding boxes of at most a bulk tile only."""
    used_rows, used_cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if not len(used_rows):
        return []
    r0, r1 = int(used_rows[0]), int(used_rows[-1]) + 1
    c0, c1 = int(used_cols[0]), int(used_cols[-1]) + 1
    height, width = r1 - r0, c1 - c0
    max_rows, max_cols = bulk_tile_cells(stride, streamed=True, precision=precision)
    if height > max_rows or width > max_cols:  # more than one bulk tile: cut at a tile's size
        if height / max_rows >= width / max_cols:
            cut = r0 + max_rows
            return (tissue_tiles(stride, keep[:cut], row0, col0, split=split, precision=precision)
                    + tissue_tiles(stride, keep[cut:], row0 + cut, col0, split=split, precision=precision))
        cut = c0 + max_cols
        return (tissue_tiles(stride, keep[:, :cut], row0, col0, split=split, precision=precision)
                + tissue_tiles(stride, keep[:, cut:], row0, col0 + cut, split=split, precision=precision))
    box = [(slice(row0 + r0, row0 + r1), slice(col0 + c0, col0 + c1))]
    q = tile_quantum(stride)
    if not split or keep[r0:r1, c0:c1].all() or max(height, width) * stride < 2 * _MIN_SPLIT_PX:
        return box
    along_rows = height >= width
    start, length = (r0, height) if along_rows else (c0, width)
    cut = start + max(q, (length // 2) // q * q)  # halves of whole quanta: no extra padding
    if cut >= start + length:  # too short to halve
        return box
    if along_rows:
        halves = (tissue_tiles(stride, keep[:cut], row0, col0, precision=precision),
                  tissue_tiles(stride, keep[cut:], row0 + cut, col0, precision=precision))
    else:
        halves = (tissue_tiles(stride, keep[:, :cut], row0, col0, precision=precision),
                  tissue_tiles(stride, keep[:, cut:], row0, col0 + cut, precision=precision))
    split = halves[0] + halves[1]
    cost = lambda tiles: sum(_tile_cost(stride, tile) for tile in tiles)  # noqa: E731
    return split if cost(split) < cost(box) else box


def _tile_cost(stride: int, tile: tuple[slice, slice]) -> int:
    """Input pixels the engine works on for a tile (padded block plus halo), plus a call's cost."""
    q = tile_quantum(stride)
    pad_rows = -(-(tile[0].stop - tile[0].start) // q) * q
    pad_cols = -(-(tile[1].stop - tile[1].start) // q) * q
    return (stride * (pad_rows - 1) + 32) * (stride * (pad_cols - 1) + 32) + _CALL_COST_PX


class _ReadAhead:
    """An analysis image read one block of chunks ahead, in a background thread.

    Decoding a slide's JPEG tiles takes a sixth to a fifth of the time the network needs for
    the pixels; read while the engine computes the block before, most of it is hidden. Each
    block of chunks is read once, as the box around all of its engine tiles' reads, and the
    tiles are cut from it: tiles overlap by their 24 px halo and share the slide's JPEG tiles,
    which would otherwise be decoded two or three times. The engine asks for the boxes in
    ``groups`` (a list of box lists) in order; any other request is read directly. Only pixels
    are read in the background (never TensorFlow), and :meth:`close` waits for a read in flight.
    """

    def __init__(self, image: AnalysisImage, groups: list[list[tuple[int, int, int, int]]]) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.image = image
        self.height, self.width = image.height, image.width
        self._groups = deque(_union(boxes) for boxes in groups if boxes)
        from viewer.heatmap.priority import thread_initializer

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoviewer-read-ahead",
                                        initializer=thread_initializer())
        self._current: tuple[tuple[int, int, int, int], np.ndarray] | None = None
        self._next = None
        self._schedule()

    def _schedule(self) -> None:
        if self._groups:
            box = self._groups.popleft()
            self._next = (box, self._pool.submit(self.image.block, *box))
        else:
            self._next = None

    def block(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        for _ in range(2):
            if self._current is not None:
                (gx, gy, gw, gh), pixels = self._current
                if gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh:
                    return pixels[y - gy : y - gy + h, x - gx : x - gx + w]
            if self._next is None:
                break
            box, future = self._next  # the engine moved on to the next block of chunks
            self._current = (box, future.result())
            self._schedule()
        return self.image.block(x, y, w, h)

    def close(self) -> None:
        self._groups.clear()
        if self._next is not None:
            self._next[1].cancel()
            self._next = None
        self._current = None
        self._pool.shutdown(wait=True)


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


_BLOCK_MIN_PX = 1024
"""Blocks of chunks are at least this many image pixels per side: a block's pixels are read from
the slide once (:class:`_ReadAhead`), and the slide's JPEG tiles along a block's edges are
decoded again by the next block, so short blocks decode much of the slide twice."""


def group_side(plan: SlideHeatmapPlan) -> tuple[int, int]:
    """Chunks per block ``(rows, cols)``: whole chunks that whole bulk tiles
    (:func:`~viewer.heatmap.engine.bulk_tile_cells`, 64 x 96 cells at stride 8, 128 x 128 in
    bfloat16) also fill, and at least :data:`_BLOCK_MIN_PX` per side: 1 x 3 chunks of 128 cells
    (eight bulk tiles) in float32, one chunk (one tile) in bfloat16."""
    sides = []
    for side in bulk_tile_cells(plan.stride, streamed=True, precision=plan.precision):
        base = math.lcm(side, plan.chunk) // plan.chunk
        repeat = math.ceil(_BLOCK_MIN_PX / (base * plan.chunk * plan.stride))
        sides.append(max(1, min(32, base * repeat)))
    return sides[0], sides[1]


def engine_tiles(
    plan: SlideHeatmapPlan, chunks: list[tuple[int, int]], *, interactive: bool = True,
) -> list[tuple[tuple[slice, slice], list[tuple[int, int]]]]:
    """Group chunks into engine tiles: ``[((rows, cols), [chunks it covers]), ...]``.

    The chunk grid is cut into aligned blocks of :func:`group_side` chunks; the chunks
    of a block that are in ``chunks`` are covered by rectangles of whole chunks (one per block
    when they form a rectangle; otherwise rows of them, equal neighbouring rows merged), so no
    chunk outside ``chunks`` (done, or without tissue) is ever computed. Blocks come in the order
    of their first chunk in ``chunks``. ``interactive``: the first chunk forms a tile alone.
    """
    side_rows, side_cols = group_side(plan)
    groups: list[tuple[tuple[slice, slice], list[tuple[int, int]]]] = []
    rest = list(chunks)
    if interactive and rest:
        first = rest.pop(0)
        groups.append((plan.chunk_slices(*first), [first]))
    blocks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, j in rest:
        blocks.setdefault((i // side_rows, j // side_cols), []).append((i, j))
    for members in blocks.values():
        for i0, i1, j0, j1 in _rectangles(members):
            rows = slice(plan.chunk_slices(i0, j0)[0].start, plan.chunk_slices(i1 - 1, j0)[0].stop)
            cols = slice(plan.chunk_slices(i0, j0)[1].start, plan.chunk_slices(i0, j1 - 1)[1].stop)
            inside = [ij for ij in members if i0 <= ij[0] < i1 and j0 <= ij[1] < j1]
            groups.append(((rows, cols), inside))
    return groups


def _rectangles(chunks: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Cover a set of chunks exactly by rectangles ``(i0, i1, j0, j1)`` (ends exclusive): runs
    of neighbouring chunks in each chunk row, merged with the same run of the row above."""
    present = set(chunks)
    rows: dict[int, list[tuple[int, int]]] = {}
    for i in sorted({i for i, _ in present}):
        cols = sorted(j for r, j in present if r == i)
        runs, start = [], cols[0]
        for a, b in zip(cols, cols[1:] + [None]):
            if b != a + 1:
                runs.append((start, a + 1))
                start = b
        rows[i] = runs
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], list[int]] = {}  # run -> [i0, i1]
    for i, runs in rows.items():
        for run in list(open_):
            if run not in runs or open_[run][1] != i:
                i0, i1 = open_.pop(run)
                done.append((i0, i1, *run))
        for run in runs:
            if run in open_:
                open_[run][1] = i + 1
            else:
                open_[run] = [i, i + 1]
    done.extend((i0, i1, *run) for run, (i0, i1) in open_.items())
    return done


def options_for_store(options: SlideHeatmapOptions, path: str | Path, *, force: bool = False) -> SlideHeatmapOptions:
    """``options`` for a run into the store at ``path``: an existing store is resumed in its own
    chunk size unless the user chose one (or ``force`` replaces the store), so stores made with
    an earlier default stay resumable. Call before :func:`plan_slide_heatmap`."""
    if force or options.chunk is not None:
        return options
    from dataclasses import replace

    from viewer.heatmap.store import OVERVIEW_FACTOR, stored_chunk

    chunk = stored_chunk(path)
    if chunk is None or chunk % OVERVIEW_FACTOR:
        return options  # none there (or not ours): the default; open_store_for judges the rest
    return replace(options, chunk=chunk)


def open_store_for(plan: SlideHeatmapPlan, path: str | Path, *, force: bool = False) -> tuple[HeatmapStore, bool]:
    """Create the store of ``plan`` at ``path``, or resume a compatible one: ``(store, resumed)``.

    A store computed in another precision is refused like one of another model (unless
    ``force``); the store's compatibility check covers it (:data:`store.COMPATIBILITY_KEYS`)."""
    from viewer.heatmap.store import HeatmapStore

    return HeatmapStore.open_or_create(Path(path), shape=plan.shape, attrs=plan.store_attrs(), chunk=plan.chunk, force=force)


def settle_precision(plan: SlideHeatmapPlan, model) -> None:
    """Once the model is loaded: bfloat16 runs in the fully convolutional pass only, so for a
    model or stride that needs batched windows the plan falls back to float32 (with a note)."""
    from viewer.heatmap.engine import effective_precision

    actual = effective_precision(model, plan.stride, plan.precision)
    if actual != plan.precision:
        plan.notes.append(f"bfloat16 needs the fully convolutional pass; this model at stride {plan.stride} "
                          "is computed in float32")
        plan.precision = actual


_WRITES_IN_FLIGHT = 16
"""Chunk writes queued behind the engine at most (a few engine tiles' worth): the computation
waits when the disk falls this far behind, and stopping a run waits for at most these."""

_WRITERS = 4
"""Threads writing chunks. A durable chunk write is mostly waiting for fsync (10 per chunk:
five files and their folders); four writers wait in parallel, cutting the wall time per chunk
from ~25 to ~10 ms on the development machine. Each chunk is still written by one thread, data
before its ``done`` flag, so a crash leaves every chunk whole or not done."""


def run_to_store(
    plan: SlideHeatmapPlan,
    model,
    store: HeatmapStore,
    *,
    order_from: tuple[float, float] | None = None,
    chunks: Iterable[tuple[int, int]] | None = None,
    interactive: bool = True,
) -> Iterator[tuple[tuple[int, int], HeatmapTile]]:
    """Compute every chunk the store lacks (or just ``chunks``), writing each one as it comes.

    Yields each chunk once it is written, so a caller can paint or report progress. Stopping
    early loses at most the chunks computed but not yet written (a few engine tiles' worth; a
    write in progress completes); a later run continues from the store's ``done`` mask.
    ``interactive``: as for :func:`iter_slide_heatmap`.

    Writing a chunk durably costs 10-25 ms (a few ms of zarr's CPU time, then fsyncs), as much
    as computing it, so chunks are written by background threads (:data:`_WRITERS`) while the
    engine computes the next tile; chunks without tissue (nothing to compute, but written all
    the same) are fed to them between computed chunks rather than all at the end, so their
    writes hide behind the computation too.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    done = store.done_mask()
    if chunks is None:
        todo = chunks_in_order(plan, order_from, skip=done)
    else:
        todo = [ij for ij in chunks if not done[ij]]
    counts = plan.chunk_tissue_cells
    empty = deque(ij for ij in todo if counts is not None and counts[ij] == 0)
    busy = [ij for ij in todo if counts is None or counts[ij] > 0]

    def write(ij: tuple[int, int], tile: HeatmapTile) -> None:
        # The evaluated (tissue) cells are exactly those with a value: the engine computed them,
        # and iter_slide_heatmap set the others to NaN (recomputing the mask cost a tenth of a run).
        store.write_chunk(*ij, tile.probabilities, tissue=~np.isnan(tile.probabilities))

    def empty_tile(ij: tuple[int, int]) -> HeatmapTile:
        rows, cols = plan.chunk_slices(*ij)
        return HeatmapTile(rows, cols, np.full((rows.stop - rows.start, cols.stop - cols.start), np.nan, np.float32))

    pending: deque = deque()  # (ij, tile, future) in submission order
    from viewer.heatmap.priority import thread_initializer

    writer = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="histoviewer-store-writer",
                                initializer=thread_initializer())
    try:
        for ij, tile in iter_slide_heatmap(plan, model, busy, interactive=interactive):
            pending.append((ij, tile, writer.submit(write, ij, tile)))
            if empty and len(pending) < _WRITES_IN_FLIGHT // 2:
                e = empty.popleft()
                blank = empty_tile(e)
                pending.append((e, blank, writer.submit(write, e, blank)))
            while pending and (pending[0][2].done() or len(pending) > _WRITES_IN_FLIGHT):
                ij_done, tile_done, future = pending.popleft()
                future.result()  # a failed write stops the run here, with its error
                yield ij_done, tile_done
        while empty or pending:
            while empty and len(pending) < _WRITES_IN_FLIGHT:
                e = empty.popleft()
                tile = empty_tile(e)
                pending.append((e, tile, writer.submit(write, e, tile)))
            ij_done, tile_done, future = pending.popleft()
            future.result()
            yield ij_done, tile_done
    finally:
        for _, _, future in pending:
            future.cancel()  # not started yet: computed or not, a later run redoes it
        writer.shutdown(wait=True)  # a write in progress completes (a chunk is all or nothing)
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
    for _, tile in iter_slide_heatmap(plan, model, chunks_in_order(plan), interactive=False):
        out[tile.rows, tile.cols] = tile.probabilities
    return out

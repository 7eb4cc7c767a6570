"""What runs on the Dask workers: plan a slide, compute groups of its store chunks, finalise it.

Each task receives paths, settings and chunk lists, never pixels or the model: a worker opens
the slide and the store itself (they live on a file system every worker sees) and takes the model
from its own cache (:func:`viewer.batch.cluster.worker_model`). The chunks are computed by
:func:`viewer.heatmap.slide_run.run_to_store`, the very function behind ``histoviewer heatmap``,
given the task's chunk list; so the batch writes exactly the arrays that command writes.

Tasks of one slide write disjoint chunks, and every chunk is its own files in the store (``done``
is chunked 1 x 1), so no two tasks ever write the same file. Marking the store complete rewrites
its ``zarr.json`` and is left to the client, after the slide's last task (:class:`_TaskStore`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from viewer.heatmap.analysis import AnalysisGrid
from viewer.heatmap.slide_run import SlideHeatmapOptions

STORE_NAME = "heatmap.zarr"
OVERLAY_NAME = "overlay.png"
GEOJSON_NAME = "tumour.geojson"

_STATS_BAND_CELLS = 1 << 22
"""Cells read at once when computing a slide's figures (16 MB of float32)."""

_PLAN_CACHE_SIZE = 4
"""Slides whose plan (and open file) a worker keeps: those its threads work on and the next."""


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs to know about one slide of the batch (small, picklable)."""

    index: int
    slide: str
    """Absolute path, the same on every worker (shared file system)."""
    folder: str
    """Absolute output folder."""
    model: str
    model_sha256: str
    options: SlideHeatmapOptions
    threshold: float
    overlay_size: int | None
    """Longest side of the overlay PNG; None: no overlay."""
    geojson: bool
    force: bool = False
    """Replace the slide's store rather than resume it."""

    @property
    def store_path(self) -> Path:
        return Path(self.folder) / STORE_NAME

    @property
    def overlay_path(self) -> Path:
        return Path(self.folder) / OVERLAY_NAME

    @property
    def geojson_path(self) -> Path:
        return Path(self.folder) / GEOJSON_NAME


@dataclass(frozen=True)
class PackedTissue:
    """A :class:`~viewer.slide.tissue.TissueMask` with its mask packed 8 pixels per byte, so a
    2048 x 2048 mask travels between workers as 512 KB."""

    bits: np.ndarray
    shape: tuple[int, int]
    downsample: tuple[float, float]
    fraction: float
    threshold: float | None
    level: int | None

    @classmethod
    def pack(cls, tissue) -> PackedTissue:
        mask = np.asarray(tissue.mask, dtype=bool)
        return cls(np.packbits(mask, axis=None), mask.shape, tuple(tissue.downsample), float(tissue.fraction),
                   tissue.threshold, tissue.level)

    def unpack(self):
        from viewer.slide.tissue import TissueMask

        count = self.shape[0] * self.shape[1]
        mask = np.unpackbits(self.bits, count=count).astype(bool).reshape(self.shape)
        return TissueMask(mask=mask, downsample=self.downsample, fraction=self.fraction, threshold=self.threshold,
                          level=self.level)


@dataclass
class PreparedSlide:
    """The plan of one slide, made once on a worker (:func:`prepare_slide`): the client creates
    the store from it, and every chunk task rebuilds the same plan from it without re-detecting
    the tissue."""

    job: SlideJob
    width: int
    height: int
    fingerprint: str
    grid: AnalysisGrid
    chunk: int
    precision: str
    counts: np.ndarray
    """Cells to evaluate per chunk (the chunk grid)."""
    block: tuple[int, int]
    """Chunks per side ``(rows, cols)`` of the aligned blocks the engine tiles as a whole
    (:func:`~viewer.heatmap.slide_run.group_side`): tasks take whole blocks."""
    tissue: PackedTissue | None
    store_attrs: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape


@dataclass(frozen=True)
class ChunkResult:
    cells: int
    """Tissue cells evaluated (for progress)."""
    seconds: float


@dataclass(frozen=True)
class SlideFigures:
    """The summary figures of a finished slide."""

    width: int
    height: int
    tissue_fraction: float | None
    tumour_fraction: float | None
    mean_probability: float | None
    evaluated_cells: int
    seconds: float
    """Time of the finalising task itself."""


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def prepare_slide(job: SlideJob) -> PreparedSlide:
    """Open the slide and plan its heatmap (analysis scale, tissue mask, chunk grid), then settle
    the precision against the model, as ``histoviewer heatmap`` does before creating its store."""
    from viewer.batch.cluster import worker_model
    from viewer.errors import ModelError
    from viewer.heatmap.slide_run import (
        group_side, options_for_store, plan_slide_heatmap, settle_precision, slide_fingerprint,
    )
    from viewer.slide import open_slide

    start = time.perf_counter()
    with open_slide(job.slide) as slide:
        # A store left by an earlier version keeps its chunk size; the job's options (which the
        # slide's record compares) stay the user's.
        plan = plan_slide_heatmap(slide, job.model, options_for_store(job.options, job.store_path, force=job.force))
        if plan.model_sha256 != job.model_sha256:
            raise ModelError("changed on disk while the batch was running; start the batch again", Path(job.model))
        settle_precision(plan, worker_model(job.model, job.model_sha256))
        return PreparedSlide(
            job=job, width=slide.width, height=slide.height, fingerprint=slide_fingerprint(slide), grid=plan.grid,
            chunk=plan.chunk, precision=plan.precision, counts=plan.chunk_tissue_cells, block=_pair(group_side(plan)),
            tissue=None if plan.tissue is None else PackedTissue.pack(plan.tissue), store_attrs=plan.store_attrs(),
            notes=list(plan.notes), seconds=time.perf_counter() - start,
        )


def compute_chunks(prepared: PreparedSlide, chunks: list[tuple[int, int]]) -> ChunkResult:
    """Compute ``chunks`` of the slide into its store (those already done are skipped)."""
    from viewer.batch.cluster import worker_model
    from viewer.heatmap.slide_run import run_to_store
    from viewer.heatmap.store import HeatmapStore

    start = time.perf_counter()
    job = prepared.job
    plan = _worker_plan(prepared)
    model = worker_model(job.model, job.model_sha256)
    store = HeatmapStore.open(job.store_path, mode="r+")
    if store.shape != plan.shape or store.chunk != plan.chunk:
        raise RuntimeError(f"{job.store_path}: the store does not match the slide's plan")
    cells = 0
    chunks = [tuple(ij) for ij in chunks]
    for (i, j), _tile in run_to_store(plan, model, _TaskStore(store), chunks=chunks, interactive=False):
        cells += int(prepared.counts[i, j])
    return ChunkResult(cells, time.perf_counter() - start)


def finalise_slide(job: SlideJob, *chunk_results: ChunkResult) -> SlideFigures:
    """After the slide's last chunk: its figures, and the overlay PNG and GeoJSON if asked for.

    ``chunk_results`` are only there to make this task wait for the chunk tasks."""
    from viewer.heatmap.data import StoreHeatmap
    from viewer.heatmap.store import HeatmapStore

    start = time.perf_counter()
    store = HeatmapStore.open(job.store_path, mode="r")
    done, total = store.progress()
    if done != total:
        raise RuntimeError(f"{job.store_path}: {total - done} of {total} chunks are missing after all tasks ran")
    heatmap = StoreHeatmap(store)
    tumour, mean, evaluated = heatmap_figures(heatmap, job.threshold)
    attrs = store.attrs
    width, height = int(attrs["slide"]["width"]), int(attrs["slide"]["height"])
    if job.overlay_size is not None:
        _write_overlay(job, heatmap)
    if job.geojson:
        from viewer.export.geojson import tumour_features, write_feature_collection

        write_feature_collection(job.geojson_path, tumour_features(heatmap, job.threshold, (width, height)), force=True)
    fraction = attrs.get("tissue_fraction")
    return SlideFigures(width, height, None if fraction is None else float(fraction), tumour, mean, evaluated,
                        time.perf_counter() - start)


def _pair(side) -> tuple[int, int]:
    return (int(side), int(side)) if np.isscalar(side) else (int(side[0]), int(side[1]))


def heatmap_figures(heatmap, threshold: float) -> tuple[float | None, float | None, int]:
    """``(tumour fraction, mean probability, evaluated cells)`` of a heatmap, read in bands.
    The tumour fraction is the share of evaluated cells with ``p >= threshold``; NaN cells
    (background, not evaluated) count in neither."""
    rows, cols = heatmap.shape
    band = max(1, _STATS_BAND_CELLS // max(cols, 1))
    evaluated = above = 0
    total = 0.0
    for r0 in range(0, rows, band):
        cells = heatmap.read(slice(r0, min(r0 + band, rows)), slice(0, cols))
        known = cells[np.isfinite(cells)]
        evaluated += int(known.size)
        above += int(np.count_nonzero(known >= threshold))
        total += float(known.sum(dtype=np.float64))
    if evaluated == 0:
        return None, None, 0
    return above / evaluated, total / evaluated, evaluated


def _write_overlay(job: SlideJob, heatmap) -> None:
    from viewer.export.figure import ExportSettings, export_overlay
    from viewer.overlay import OverlayStyle
    from viewer.slide import open_slide

    with open_slide(job.slide) as slide:
        export_overlay(slide, heatmap, None, OverlayStyle(show_annotations=False), job.overlay_path,
                       ExportSettings(max_size=job.overlay_size), force=True)


# ---------------------------------------------------------------------------------------------
# Worker-side helpers
# ---------------------------------------------------------------------------------------------


class _TaskStore:
    """The store as a chunk task sees it: reads and chunk writes as usual, but marking it complete
    is the client's job (it rewrites the group's ``zarr.json``; one writer only)."""

    def __init__(self, store) -> None:
        self._store = store

    def done_mask(self) -> np.ndarray:
        return self._store.done_mask()

    def write_chunk(self, i: int, j: int, probabilities: np.ndarray, *, tissue: np.ndarray | None = None) -> None:
        self._store.write_chunk(i, j, probabilities, tissue=tissue)

    def mark_complete(self) -> None:
        pass


_PLANS: OrderedDict[str, object] = OrderedDict()
_PLAN_LOCK = threading.Lock()


def _worker_plan(prepared: PreparedSlide):
    """The slide's plan on this worker, rebuilt from ``prepared`` once and kept for its other
    chunk tasks (the slide stays open, its tile cache warm)."""
    from viewer.errors import InputError
    from viewer.heatmap.slide_run import SlideHeatmapPlan, slide_fingerprint
    from viewer.slide import open_slide

    with _PLAN_LOCK:
        plan = _PLANS.get(prepared.token)
        if plan is not None:
            _PLANS.move_to_end(prepared.token)
            return plan
        job = prepared.job
        slide = open_slide(job.slide)
        if slide_fingerprint(slide) != prepared.fingerprint:
            slide.close()
            raise InputError("changed on disk while the batch was running; run the batch again", job.slide)
        plan = SlideHeatmapPlan(
            slide, prepared.grid, None if prepared.tissue is None else prepared.tissue.unpack(), prepared.chunk,
            job.model_sha256, list(prepared.notes), prepared.counts, precision=prepared.precision,
        )
        _PLANS[prepared.token] = plan
        # Dropped, not closed: another thread of this worker may still be reading from it.
        while len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
        return plan

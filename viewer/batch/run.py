"""The batch's client loop: decide what each slide needs, submit its tasks, record what comes back.

For each slide, in input order:

1. **Skip** it when its folder's ``slide.json`` says it was finished from the same file, model,
   analysis options and threshold, with the outputs asked for now, and its store is complete
   (checked without opening the slide). **Finalise** only (figures, overlay, GeoJSON) when just
   the threshold or the outputs differ.
2. Otherwise a *prepare* task plans the slide on a worker (tissue detection included). The client
   then creates (or resumes) the slide's store from that plan -- the one process that creates
   stores -- and submits *chunk* tasks for the chunks the store lacks, in groups sized so that a
   big slide spreads over every worker, then a *finalise* task that waits for them.
3. When the finalise task returns, the client marks the store complete, writes the slide's record
   and its summary row.

Slides are taken up a few at a time (:func:`_window`), so planning overlaps computing and a long
cohort never has thousands of plans in memory. Any error of a slide's task -- the slide cannot be
opened or decoded, a worker died too often -- makes that slide a ``failed`` row and cancels its
other tasks; the others go on. A worker that dies is replaced by its nanny and Dask re-runs its
tasks; chunks already written are not computed again (``run_to_store`` reads the store's ``done``
flags), so the store ends up the same.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from viewer.atomic import interrupt_deferred
from viewer.batch import summary as records
from viewer.batch.inputs import SlideInput
from viewer.batch.progress import BatchProgress
from viewer.batch.summary import DONE, FAILED, PENDING, SKIPPED, SlideRow
from viewer.batch.tasks import (
    ChunkResult,
    PreparedSlide,
    SlideFigures,
    SlideJob,
    compute_chunks,
    finalise_slide,
    prepare_slide,
)
from viewer.errors import InputError
from viewer.heatmap.slide_run import SlideHeatmapOptions

MIN_GROUP_CELLS = 2 * 64 * 64
MAX_GROUP_CELLS = 16 * 64 * 64
GROUPS_PER_THREAD = 4
"""A chunk task computes about 1/(4 x worker threads) of a slide's work, and between 8k and 64k
tissue cells (4096 cells at stride 8 is 0.26 Mpx, ~0.05-0.1 s per core), in whole blocks of chunks:
large enough that Dask's per-task cost (~1 ms) and the task's store opening vanish, small enough
that one slide spreads evenly over every worker, and a lost worker loses little."""

EMPTY_CHUNK_WEIGHT = 0.1
"""A chunk without tissue costs no compute, only its writes: a tenth of a full chunk."""

SUMMARY_INTERVAL = 1.0
"""Seconds between rewrites of summary.csv while slides finish (and always at the end)."""


@dataclass(frozen=True)
class BatchSettings:
    inputs: list[SlideInput]
    outdir: Path
    model: Path
    options: SlideHeatmapOptions = SlideHeatmapOptions()
    threshold: float = 0.5
    overlay_size: int | None = None
    geojson: bool = False
    force: bool = False

    def describe(self, model_sha256: str) -> dict:
        return {
            "model": str(self.model), "model_sha256": model_sha256, "options": options_record(self.options),
            "threshold": self.threshold, "overlay_size": self.overlay_size, "geojson": self.geojson,
        }


@dataclass
class BatchResult:
    rows: list[SlideRow]

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)

    def line(self) -> str:
        parts = [f"{self.count(DONE)} done", f"{self.count(SKIPPED)} skipped", f"{self.count(FAILED)} failed"]
        if self.count(PENDING):
            parts.append(f"{self.count(PENDING)} not finished")
        n = len(self.rows)
        return f"{n} slide{'s' if n != 1 else ''}: {', '.join(parts)}"


def options_record(options: SlideHeatmapOptions) -> dict:
    """The analysis options as plain JSON values (how records compare them)."""
    return json.loads(json.dumps(asdict(options)))


@dataclass
class _Slide:
    """The client's state of one slide."""

    job: SlideJob
    row: SlideRow
    futures: dict = field(default_factory=dict)
    """Task key -> future, for every task of the slide still of interest."""
    prepared: object = None
    """The prepare task's future: chunk tasks take it as an argument, so Dask ships the plan to
    the workers that need it (and re-plans if the worker holding it dies)."""
    identity: dict | None = None
    """Size and time of the slide file when its work began (recorded when it is finished)."""
    cell_px: float = 0.0
    seconds: float = 0.0
    over: bool = False


def run_batch(settings: BatchSettings, client, *, threads: int, progress: BatchProgress | None = None) -> BatchResult:
    """Process every input of ``settings`` on the cluster of ``client`` (``threads``: its task
    slots, for sizing the chunk groups); returns the rows also written to the summary."""
    from distributed import as_completed

    from viewer.model import file_sha256

    outdir = settings.outdir
    sha = file_sha256(settings.model)
    progress = progress or BatchProgress(len(settings.inputs), quiet=True)
    run = uuid.uuid4().hex[:8]
    n = len(settings.inputs)
    slides = [
        _Slide(
            SlideJob(k, item.path, str(outdir / item.folder), str(settings.model), sha, settings.options,
                     settings.threshold, settings.overlay_size, settings.geojson, settings.force),
            SlideRow(item.path, item.folder, model_sha256=sha),
        )
        for k, item in enumerate(settings.inputs)
    ]
    writer = _SummaryWriter(outdir, [s.row for s in slides], settings.describe(sha))
    tasks = as_completed(loop=client.loop)
    owner: dict[str, _Slide] = {}
    active: set[int] = set()

    def submit(slide: _Slide, kind: str, func, *args) -> object:
        key = f"{kind}-{run}-{slide.job.index}-{len(slide.futures)}"
        future = client.submit(func, *args, key=key, priority=n - slide.job.index)
        slide.futures[key] = future
        owner[key] = slide
        tasks.add(future)
        return future

    def over(slide: _Slide) -> None:
        slide.over = True
        slide.futures.clear()
        slide.prepared = None
        active.discard(slide.job.index)

    def fail(slide: _Slide, message: str) -> None:
        if slide.over:
            return
        others = [f for f in slide.futures.values() if not f.done()]
        if others:
            client.cancel(others)
        over(slide)
        slide.row.status, slide.row.error = FAILED, message
        slide.row.seconds = _round(slide.seconds)
        progress.slide_finished(f"failed: {slide.job.slide}: {message}", failed=True)
        writer.changed()

    def start(slide: _Slide) -> None:
        """Skip, finalise or plan the slide (the first step above)."""
        job = slide.job
        active.add(job.index)
        slide.identity = records.file_identity(job.slide)
        folder = Path(job.folder)
        record = records.read_record(folder)
        if not settings.force and record is not None and record.get("input") == job.slide:
            state = _finished_state(record, job, settings)
            if state == "skip":
                _fill_row(slide.row, record.get("figures") or {})
                slide.row.status = SKIPPED
                over(slide)
                progress.slide_finished(f"skipped (finished earlier): {job.slide}", planned=False)
                writer.changed()
                return
            if state == "finalise":
                progress.planned_slide(0.0)
                submit(slide, "finalise", finalise_slide, job)
                return
        try:
            _claim(folder, job.slide, record)
        except InputError as exc:
            fail(slide, _error_text(exc, slide.job.slide))
            return
        slide.prepared = submit(slide, "prepare", prepare_slide, job)

    def planned(slide: _Slide, prepared: PreparedSlide) -> None:
        """The prepare task returned: create or resume the store, submit the chunk tasks."""
        from viewer.heatmap.store import HeatmapStore

        job = slide.job
        slide.seconds += prepared.seconds
        slide.row.width, slide.row.height = prepared.width, prepared.height
        store, _resumed = HeatmapStore.open_or_create(
            job.store_path, shape=prepared.shape, attrs=prepared.store_attrs, chunk=prepared.chunk, force=settings.force,
        )
        todo = ~store.done_mask()
        slide.cell_px = (prepared.grid.stride * prepared.grid.scale) ** 2
        progress.planned_slide(float(prepared.counts[todo].sum()) * slide.cell_px)
        chunk_futures = [
            submit(slide, "chunks", compute_chunks, slide.prepared, group)
            for group in chunk_groups(prepared.counts, todo, prepared.chunk, threads, prepared.block)
        ]
        submit(slide, "finalise", finalise_slide, job, *chunk_futures)

    def finished(slide: _Slide, figures: SlideFigures) -> None:
        from viewer.heatmap.store import HeatmapStore

        job = slide.job
        store = HeatmapStore.open(job.store_path, mode="r+")
        if not store.attrs.get("complete"):
            # A worker killed mid-write leaves a hidden temporary file that is never read as a
            # chunk; the slide's tasks are all over, so it can go now rather than at a resume.
            store.remove_temp_files()
            store.mark_complete()
        slide.seconds += figures.seconds
        row = slide.row
        row.width, row.height = figures.width, figures.height
        row.tissue_fraction, row.tumour_fraction = figures.tissue_fraction, figures.tumour_fraction
        row.mean_probability, row.seconds = figures.mean_probability, _round(slide.seconds)
        records.write_record(Path(job.folder), {
            "input": job.slide, "folder": row.output, "finished": _now(), "file": slide.identity,
            "model_sha256": job.model_sha256, "options": options_record(job.options), "threshold": job.threshold,
            "overlay_size": job.overlay_size, "geojson": job.geojson, "figures": records.stats_fields(row),
        })
        row.status = DONE
        over(slide)
        progress.slide_finished(f"done: {job.slide} ({row.seconds:g} s of work)")
        writer.changed()

    waiting = deque(slides)
    window = _window(threads)

    def top_up() -> None:
        while waiting and len(active) < window:
            start(waiting.popleft())

    try:
        writer.write()
        top_up()
        for future in tasks:
            slide = owner.pop(future.key, None)
            if slide is None or slide.over:
                continue
            try:
                if future.status == "cancelled":
                    fail(slide, "its task was cancelled (the scheduler lost it)")
                elif future.status == "error":
                    fail(slide, _error_text(future.exception(), slide.job.slide))
                else:
                    kind = future.key.split("-", 1)[0]
                    result = future.result()
                    if kind == "prepare":
                        planned(slide, result)
                    elif kind == "chunks":
                        _counted(slide, result, progress)
                    else:
                        finished(slide, result)
            except InputError as exc:  # the client's part for this slide: store refused, ...
                fail(slide, _error_text(exc, slide.job.slide))
            top_up()
            writer.write_if_due()
    finally:
        writer.write()
    return BatchResult([s.row for s in slides])


def _counted(slide: _Slide, result: ChunkResult, progress: BatchProgress) -> None:
    slide.seconds += result.seconds
    progress.computed(result.cells * slide.cell_px)


def _window(threads: int) -> int:
    """Slides in progress at once: enough that every worker thread has work while the next
    slides are planned."""
    return 2 * max(1, threads) + 2


def chunk_groups(
    counts: np.ndarray, todo: np.ndarray, chunk: int, threads: int, block: tuple[int, int] = (1, 1),
) -> list[list[tuple[int, int]]]:
    """The chunks to compute (``todo``, on the chunk grid) in groups of about equal work:
    :data:`GROUPS_PER_THREAD` groups per worker thread, of :data:`MIN_GROUP_CELLS` to
    :data:`MAX_GROUP_CELLS` cells of work (a group takes whole blocks, so it may hold more).

    ``block``: chunks per side ``(rows, cols)`` of the aligned blocks the engine tiles as a whole
    (:func:`~viewer.heatmap.slide_run.group_side`). Groups are made of whole blocks, taken in
    raster order, so each task hands the engine exactly the tiles ``histoviewer heatmap`` does.
    """
    full = float(chunk * chunk)
    weights = np.where(counts > 0, counts.astype(np.float64), EMPTY_CHUNK_WEIGHT * full)
    total = float(weights[todo].sum())
    target = min(max(total / (GROUPS_PER_THREAD * max(1, threads)), MIN_GROUP_CELLS), MAX_GROUP_CELLS)
    rows, cols = todo.shape
    block_rows, block_cols = block
    groups: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    load = 0.0
    for bi in range(0, rows, block_rows):
        for bj in range(0, cols, block_cols):
            members = [(int(bi + i), int(bj + j))
                       for i, j in zip(*np.nonzero(todo[bi : bi + block_rows, bj : bj + block_cols]))]
            if not members:
                continue
            current.extend(members)
            load += sum(weights[ij] for ij in members)
            if load >= target:
                groups.append(current)
                current, load = [], 0.0
    if current:
        groups.append(current)
    return groups


def _finished_state(record: dict, job: SlideJob, settings: BatchSettings) -> str | None:
    """``"skip"``, ``"finalise"`` (store done, figures or outputs not as asked) or None (compute)."""
    from viewer.heatmap.store import HeatmapStore

    same_heatmap = (
        record.get("file") == records.file_identity(job.slide) and record.get("file") is not None
        and record.get("model_sha256") == job.model_sha256 and record.get("options") == options_record(job.options)
    )
    if not same_heatmap:
        return None
    try:
        complete = bool(HeatmapStore.open(job.store_path, mode="r").attrs.get("complete"))
    except InputError:
        complete = False
    if not complete:
        return None
    outputs_ok = record.get("threshold") == job.threshold and (
        job.overlay_size is None or (record.get("overlay_size") == job.overlay_size and job.overlay_path.is_file())
    ) and (not job.geojson or (record.get("geojson") and job.geojson_path.is_file()))
    return "skip" if outputs_ok and record.get("figures") else "finalise"


def _claim(folder: Path, slide: str, record: dict | None) -> None:
    """Create the slide's folder and record which input it belongs to (before anything else
    goes in it), so a later run never gives it to another slide."""
    from viewer.errors import OutputError

    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot be created ({exc.strerror or exc})", folder) from None
    if record is None or record.get("input") != slide:
        records.write_record(folder, {"input": slide, "folder": folder.name, "finished": None})


def _fill_row(row: SlideRow, figures: dict) -> None:
    for name in ("width", "height", "tissue_fraction", "tumour_fraction", "mean_probability", "seconds"):
        setattr(row, name, figures.get(name))


def _error_text(exc: BaseException | None, slide: str) -> str:
    """One line for the summary; the slide's path, which the row already shows, left out."""
    if exc is None:
        return "failed for an unknown reason"
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("the worker computing it died several times (out of memory, or killed); "
                "try fewer --workers or more memory per worker")
    text = " ".join(str(exc).split())
    if text.startswith(f"{slide}: "):
        text = text[len(slide) + 2 :]
    if isinstance(exc, InputError):
        return text
    return f"{name}: {text}" if text else name


def _round(seconds: float) -> float:
    return round(float(seconds), 2)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _SummaryWriter:
    """Rewrites summary.csv/json when rows changed, at most every :data:`SUMMARY_INTERVAL` s
    (a cohort of thousands of small slides would otherwise rewrite it thousands of times)."""

    def __init__(self, outdir: Path, rows: list[SlideRow], settings: dict) -> None:
        self.outdir, self.rows, self.settings = outdir, rows, settings
        self.dirty = True
        self.last = 0.0

    def changed(self) -> None:
        self.dirty = True

    def write_if_due(self) -> None:
        if self.dirty and time.perf_counter() - self.last >= SUMMARY_INTERVAL:
            self.write()

    def write(self) -> None:
        # Ctrl+C waits for the pair of files: both stay readable, no temporary file is left.
        with interrupt_deferred():
            records.write_summary(self.outdir, self.rows, self.settings)
        self.dirty = False
        self.last = time.perf_counter()

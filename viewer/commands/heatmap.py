"""``histoviewer heatmap``: write an image's tumour-probability heatmap plus a JSON sidecar."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from viewer import DEFAULT_STRIDE
from viewer.errors import InputError

DESCRIPTION = """\
Compute the ConvNet's tumour-probability heatmap of an image or a whole-slide image.

OUT.zarr: a chunked zarr store (arrays probability, done, tissue, overview_mean, overview_max;
attributes patch, stride, scale, origin, model_sha256, version). Written chunk by chunk and
crash-safe: run the same command again after an interruption and it continues where it stopped.
OUT.npy / OUT.tif: one float32 array plus OUT.json, for images and regions that fit in memory.

Cell (r, c) is P(tumour) of the 32x32 window whose top-left pixel is (stride*c, stride*r) in
analysis pixels; it belongs to the window centre (stride*c + 16, stride*r + 16). Analysis pixels
map to level-0 pixels by  level0 = origin + scale * analysis;  scale is 1 unless the slide's
pixel size (mpp) differs from the model's (the bundled model: 0.25 um/px, 40x). Cells outside
the tissue are NaN (not computed). Tissue detection is on for whole-slide images and off for
single microscope fields such as BreCaHAD images; --tissue-mask / --no-tissue-mask choose.

--precision bfloat16 runs the network in bfloat16 (first convolution in float32) on CPUs with
bfloat16 units: about 2.4-2.5 times as fast, probabilities within ~0.02 of float32; the output records
its precision. --threads N caps TensorFlow's thread pools (intra-op N, inter-op min(N, 2)).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "heatmap",
        help="write the tumour-probability heatmap of an image or slide (.zarr store, or .npy/.tif + JSON)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="SLIDE", help="image or whole-slide file (TIFF, SVS, NDPI, MRXS, JPEG, PNG, ...)")
    parser.add_argument("--out", required=True, metavar="OUT.zarr", help="output: a .zarr store, or a .npy/.tif array")
    add_analysis_options(parser)
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to use (default: the bundled model)")
    parser.add_argument("--format", choices=("npy", "tiff"), default=None, dest="fmt",
                        help="array output format (default: from the --out suffix)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--force", action="store_true",
                        help="overwrite OUT (an existing .zarr store is otherwise resumed)")
    parser.set_defaults(func=run)


def add_analysis_options(parser) -> None:
    """Options shared by every command that computes a heatmap (same defaults as the GUI)."""
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE, help=f"step between windows in analysis pixels (default {DEFAULT_STRIDE})")
    parser.add_argument("--region", default=None, metavar="X,Y,W,H", help="analyse only this rectangle, in level-0 pixels")
    parser.add_argument("--mpp", type=float, default=None, metavar="M",
                        help="the slide's pixel size in um, overriding (or supplying) what the file records")
    tissue = parser.add_mutually_exclusive_group()
    tissue.add_argument("--no-tissue-mask", dest="tissue_mask", action="store_false", default=None,
                        help="evaluate every window, glass included")
    tissue.add_argument("--tissue-mask", dest="tissue_mask", action="store_true",
                        help="evaluate only windows that are mostly tissue, even on a small image")
    add_compute_options(parser)


def add_compute_options(parser) -> None:
    """``--precision`` and ``--threads``: how the network runs (the evaluate command has them too)."""
    from viewer.heatmap.precision import DEFAULT_PRECISION, PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="arithmetic of the network: float32 (default, exact) or bfloat16 (about 2.4-2.5x as fast "
                             "on CPUs with AVX512_BF16/AMX or ARM BF16, probabilities within ~0.02; "
                             "elsewhere float32 is used, with a note)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="use at most N CPU threads for the network (default: every core); "
                             "e.g. when another heavy program runs beside this one")


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    """``"X,Y,W,H"`` -> ints (exit 2 with one line if malformed)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or values[0] < 0 or values[1] < 0:
        raise InputError(f"--region must be X,Y,W,H in level-0 pixels with W, H > 0 (got {text!r})")
    return values  # type: ignore[return-value]


def analysis_options(args):
    from viewer.heatmap.slide_run import SlideHeatmapOptions

    check_threads(getattr(args, "threads", None))
    return SlideHeatmapOptions(
        stride=check_stride(args.stride), mpp=args.mpp, region=parse_region(args.region), tissue_mask=args.tissue_mask,
        precision=getattr(args, "precision", "float32"),
    )


def check_threads(threads: int | None) -> int | None:
    """Refuse a thread count below 1 (exit 2, one line)."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")
    return threads


def apply_threads(args, notes: list[str]) -> None:
    """Cap TensorFlow's threads at ``--threads`` before the model is loaded (TensorFlow fixes its
    thread pools when it first runs); a note if it was already running."""
    threads = check_threads(getattr(args, "threads", None))
    if threads is not None:
        from viewer.heatmap.precision import configure_threads

        configure_threads(threads, notes)


def check_stride(stride: int) -> int:
    """Refuse a stride the user cannot mean (exit 2, one line)."""
    if stride < 1:
        raise InputError(f"--stride must be at least 1 pixel (got {stride})")
    if stride > 1024:
        raise InputError(f"--stride must be at most 1024 pixels (got {stride})")
    return stride


def model_file(model: str | None) -> Path:
    """The model file the command will use: ``--model`` or the bundled model."""
    from viewer.model import bundled_model_path

    return Path(model) if model is not None else bundled_model_path()


def progress(tiles: Iterable, total: int, *, label: str, quiet: bool) -> Iterator:
    """Pass ``tiles`` through, reporting progress on stderr unless ``quiet``.

    On a terminal: one line updated in place. Otherwise (pipes, logs): a start line and a final
    line with the time taken, so logs stay short. Nothing is printed for single-tile jobs.
    """
    stream = sys.stderr
    show = not quiet and total > 1
    tty = show and stream.isatty()
    start = time.perf_counter()
    done = 0
    if show and not tty:
        print(f"{label}: {total} tiles...", file=stream, flush=True)
    for item in tiles:
        done += 1
        if tty:
            print(f"\r{label}: {done}/{total} tiles ({100 * done // total}%)", end="", file=stream, flush=True)
        yield item
    if show:
        prefix = "\r" if tty else ""
        print(f"{prefix}{label}: {done}/{total} tiles in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


def compute_with_progress(pixels, model, stride: int, *, quiet: bool, label: str = "heatmap", precision: str = "float32"):
    """Compute a whole heatmap through the engine, with progress on stderr; returns (array, method)."""
    import numpy as np

    from viewer.heatmap import heatmap_method, iter_heatmap_tiles, plan_heatmap

    plan = plan_heatmap(pixels.shape[0], pixels.shape[1], stride)
    out = np.full(plan.shape, np.nan, dtype=np.float32)
    tiles = iter_heatmap_tiles(pixels, model, stride, plan=plan, precision=precision)
    for rows, cols, probabilities in progress(tiles, len(plan), label=label, quiet=quiet):
        out[rows, cols] = probabilities
    return out, heatmap_method(model, stride)


def plan_for(slide, args, path: Path, store: Path | None = None):
    """The slide's analysis plan for a command's options, the loaded model, and the notes to print
    after success (analysis scale, tissue share). Shared by every command that computes heatmaps.
    ``store``: the .zarr store the run goes into (an existing one keeps its chunk size)."""
    from viewer.heatmap.slide_run import options_for_store, plan_slide_heatmap, settle_precision
    from viewer.model import load_model

    options = analysis_options(args)
    if store is not None:
        options = options_for_store(options, store, force=args.force)
    try:
        plan = plan_slide_heatmap(slide, path, options)
    except InputError as exc:
        if exc.path is not None:
            raise
        raise InputError(str(exc), args.image) from exc
    thread_notes: list[str] = []
    apply_threads(args, thread_notes)
    model = load_model(path)
    settle_precision(plan, model)
    notes = list(plan.notes) + thread_notes
    if plan.tissue is not None:
        notes.append(f"tissue: {100 * plan.tissue.fraction:.1f}% of the slide; {plan.tissue_cells} of "
                     f"{plan.shape[0] * plan.shape[1]} cells to evaluate")
    return plan, model, notes


def is_store_path(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


def run_plan_with_progress(plan, model, *, store=None, quiet: bool, label: str = "heatmap"):
    """Drain the slide engine with a progress line; into ``store`` if given, else into an array."""
    from viewer.heatmap.slide_run import MAX_ARRAY_CELLS, chunks_in_order, iter_slide_heatmap, run_to_store
    from viewer.progress import Progress

    counts = plan.chunk_tissue_cells
    if store is not None:
        done = store.done_mask()
        todo = int(counts[~done].sum())
        progress = Progress(label, todo, unit_px=plan.cell_area_px, quiet=quiet or todo == 0)
        for (i, j), _tile in run_to_store(plan, model, store, interactive=False):
            progress.advance(int(counts[i, j]))
        progress.finish(f"{plan.tissue_cells} cells evaluated" if todo else "")
        return None
    rows, cols = plan.shape
    if rows * cols > MAX_ARRAY_CELLS:
        raise InputError(
            f"the heatmap would have {rows}x{cols} cells, too many for one array; write a .zarr store, or use --region"
        )
    import numpy as np

    out = np.full((rows, cols), np.nan, dtype=np.float32)
    progress = Progress(label, plan.tissue_cells, unit_px=plan.cell_area_px, quiet=quiet or len(counts.flat) <= 1)
    for (i, j), tile in iter_slide_heatmap(plan, model, chunks_in_order(plan), interactive=False):
        out[tile.rows, tile.cols] = tile.probabilities
        progress.advance(int(counts[i, j]))
    progress.finish()
    return out


def run(args) -> int:
    from viewer.heatmap import check_heatmap_output, heatmap_method, save_heatmap
    from viewer.heatmap.slide_run import open_store_for
    from viewer.slide import open_slide

    analysis_options(args)  # refuse bad options before opening anything
    out = Path(args.out)
    store_output = is_store_path(out)
    if store_output:
        if args.fmt is not None:
            raise InputError("--format applies to .npy/.tif outputs, not to a .zarr store", out)
    else:
        check_heatmap_output(out, args.fmt, force=args.force)  # before any long work
    path = model_file(args.model)
    slide = open_slide(args.image)
    plan, model, notes = plan_for(slide, args, path, store=out if store_output else None)
    rows, cols = plan.shape
    if store_output:
        store, resumed = open_store_for(plan, out, force=args.force)
        if resumed and not args.quiet:
            done, total = store.progress()
            print(f"resuming {out}: {done} of {total} chunks already done", file=sys.stderr)
        run_plan_with_progress(plan, model, store=store, quiet=args.quiet)
        print(f"wrote {out} ({rows}x{cols} cells, stride {plan.stride}, scale {plan.grid.scale:g}, {plan.precision})")
    else:
        heatmap = run_plan_with_progress(plan, model, quiet=args.quiet)
        array_path, side = save_heatmap(
            heatmap, out, stride=plan.stride, image_shape=(plan.grid.height, plan.grid.width), model_path=path,
            fmt=args.fmt, force=args.force, image_path=slide.path, method=heatmap_method(model, plan.stride),
            analysis=plan.grid.as_attrs(), precision=plan.precision,
        )
        print(f"wrote {array_path} ({rows}x{cols} float32, stride {plan.stride}, computed in {plan.precision}) and {side}")
    if not args.quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0

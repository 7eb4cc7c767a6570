"""``histoviewer batch``: heatmaps, overlays and a summary for a whole cohort, on Dask distributed."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from viewer.errors import InputError, OutputError

DESCRIPTION = """\
Compute the tumour heatmap of every slide in INPUT (slide files, folders searched for slides and
images, or text files listing one path per line) with the same engine and options as
'histoviewer heatmap', spread over Dask worker processes.

OUTDIR/<slide name>/heatmap.zarr   the heatmap store (open it with 'histoviewer export --heatmap',
                                   zarr, or the viewer); slides with equal names in different
                                   folders get distinct folders (e.g. slide-case1, slide-case2)
OUTDIR/<slide name>/overlay.png    with --overlay: the slide with its heatmap, longest side --max-size
OUTDIR/<slide name>/tumour.geojson with --geojson: tumour regions for QuPath (as 'export-geojson')
OUTDIR/<slide name>/slide.json     which input the folder belongs to, and what it was computed from
OUTDIR/summary.csv, summary.json   one row per input: slide, output, status (done, failed,
                                   skipped; pending until finished), error, width, height,
                                   tissue_fraction, tumour_fraction (share of tissue cells with
                                   P >= --threshold), mean_probability, seconds, model_sha256, version

Running the same command again skips finished slides and continues unfinished stores chunk by
chunk; --force recomputes everything. A slide that cannot be read becomes a 'failed' row and the
others go on. Exit code 0 when every slide is done (or skipped), 3 when some failed.

By default a local Dask cluster runs one worker process per core with one thread each
(--workers, --threads-per-worker). --scheduler tcp://HOST:8786 uses a running cluster instead
(started with 'dask scheduler' and 'dask worker tcp://HOST:8786', or dask-jobqueue on SLURM/PBS,
dask-kubernetes); every worker must see the slides, the model and OUTDIR under the same paths.
"""

EXIT_SOME_FAILED = 3
DEFAULT_OVERLAY_SIZE = 2000


def register(subparsers) -> None:
    from viewer.commands.heatmap import add_analysis_options

    parser = subparsers.add_parser(
        "batch",
        help="heatmaps (+ overlays, GeoJSON) and a summary for a folder of slides, on Dask (local or cluster)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="slide, folder of slides, or text file listing slides")
    parser.add_argument("--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address of a running Dask scheduler (e.g. tcp://head:8786) instead of a local cluster")
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes of the local cluster (default: one per core)")
    parser.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                        help="tasks each local worker runs at once (default 1); also TensorFlow's threads per worker "
                        "unless --threads is given")
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to use (default: the bundled model)")
    add_analysis_options(parser)
    # The shared --threads caps TensorFlow in one process; here that process is each worker.
    parser._option_string_actions["--threads"].help = (
        "TensorFlow threads per worker (default: --threads-per-worker, or with --scheduler each worker's thread count)"
    )
    parser.add_argument("--overlay", action="store_true", help="also write each slide's overlay PNG")
    parser.add_argument("--max-size", type=int, default=DEFAULT_OVERLAY_SIZE, metavar="PX",
                        help=f"longest side of the overlay PNG in pixels (default {DEFAULT_OVERLAY_SIZE})")
    parser.add_argument("--geojson", action="store_true", help="also write each slide's tumour regions as QuPath GeoJSON")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="P(tumour) from which a cell counts as tumour (tumour_fraction, GeoJSON) (default 0.5)")
    parser.add_argument("--quiet", action="store_true", help="no progress or notes on stderr")
    parser.add_argument("--force", action="store_true", help="recompute every slide, replacing earlier results")
    parser.set_defaults(func=run)


def _check_args(args) -> None:
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise InputError(f"--workers must be between 1 and 1024 (got {args.workers})")
    if args.threads_per_worker is not None and not 1 <= args.threads_per_worker <= 256:
        raise InputError(f"--threads-per-worker must be between 1 and 256 (got {args.threads_per_worker})")
    if not (math.isfinite(args.threshold) and 0.0 <= args.threshold <= 1.0):
        raise InputError(f"--threshold must be between 0 and 1 (got {args.threshold:g})")
    if not 16 <= args.max_size <= 20_000:
        raise InputError(f"--max-size must be between 16 and 20000 pixels (got {args.max_size})")
    if args.scheduler is not None and "://" not in args.scheduler and ":" not in args.scheduler:
        raise InputError(f"--scheduler must be an address such as tcp://host:8786 (got {args.scheduler!r})")


def _output_folder(text: str) -> Path:
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputError("is a file; give a folder for the batch's outputs", out)
    if not out.exists():
        if not out.absolute().parent.is_dir():
            raise OutputError(f"folder {out.absolute().parent} does not exist", out)
        try:
            out.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot be created ({exc.strerror or exc})", out) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError("is not writable", out)
    return out.absolute()


def run(args) -> int:
    from viewer.batch.cluster import batch_client
    from viewer.batch.inputs import assign_folders, expand_inputs
    from viewer.batch.progress import BatchProgress
    from viewer.batch.run import BatchSettings, run_batch
    from viewer.batch.summary import FAILED, SUMMARY_CSV, claimed_folders
    from viewer.commands.heatmap import analysis_options, model_file
    from viewer.model import file_sha256, model_mpp

    _check_args(args)
    options = analysis_options(args)
    model = model_file(args.model).absolute()
    model_mpp(model)  # refuses a missing or non-model file in one line, before any cluster starts
    outdir = _output_folder(args.out)
    paths = expand_inputs(args.inputs, exclude=outdir)
    if not paths:
        raise InputError(f"no slides found in {', '.join(args.inputs)} (looked for {', '.join(_suffixes())})")
    settings = BatchSettings(
        inputs=assign_folders(paths, claimed_folders(outdir)), outdir=outdir, model=model, options=options,
        threshold=args.threshold, overlay_size=args.max_size if args.overlay else None, geojson=args.geojson,
        force=args.force,
    )
    quiet = args.quiet
    with batch_client(args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
                      tf_threads=args.threads, model=model, model_sha256=file_sha256(model)) as (client, info):
        if not quiet:
            where = "local cluster" if info.local else f"cluster at {info.address}"
            print(f"batch: {_count(len(paths), 'slide')} on a {where} of {_count(info.workers, 'worker')} "
                  f"({_count(info.threads, 'thread')})", file=sys.stderr)
            if info.dashboard:
                print(f"dashboard: {info.dashboard}", file=sys.stderr)
        progress = BatchProgress(len(paths), quiet=quiet)
        result = run_batch(settings, client, threads=info.threads, progress=progress)
        progress.finish()
    failed = result.count(FAILED)
    print(f"batch: {result.line()}; summary in {outdir / SUMMARY_CSV}")
    return EXIT_SOME_FAILED if failed else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _suffixes() -> list[str]:
    from viewer.batch.inputs import slide_suffixes

    return list(slide_suffixes())

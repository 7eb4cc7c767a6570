"""``histoviewer batch`` on Dask: slides per minute with 1 and 2 workers against a plain loop, and
peak memory per worker on a slide far too large to hold whole.

    python benchmarks/batch.py [--slides 8] [--size 6144x4096] [--big 50000] [--repeat 1]

Every configuration runs in a fresh process, timed from its start to its exit (Python, TensorFlow
and model start-up included, as a user sees them), on the same slides, one after the other:

* **loop, 1 thread**: one process, the model loaded once, then for each slide what ``histoviewer
  heatmap SLIDE --out S.zarr`` does (open, plan, store, ``run_to_store``) plus the summary figures;
  TensorFlow capped at one thread. The baseline of a single worker.
* **loop, all cores**: the same with TensorFlow's default threads (every core).
* **batch, 1 worker** and **batch, 2 workers**: ``viewer.batch`` on a LocalCluster (one thread
  per worker), as ``histoviewer batch SLIDES --out DIR --workers N``.

Ratios are taken within one run (the machine is shared; absolute times move). The slides are
JPEG-tiled pyramids written by ``tests/slide_factory.write_jpeg_tile_slide`` (60 % tissue).

**Decode vs compute**: in the loop process, the first slide's tissue chunks are read (tile + halo,
exactly the pixels the engine asks for) without computing, against the full run on that slide.

**Peak RSS per worker**: a ``--big`` px square slide (10 % tissue; 7.5 GB of pixels decoded at
50,000 px) through 2 workers; each worker's peak resident set (``VmHWM``) read at the end with
``client.run``, and the client's. The slide is cached in ``benchmarks/results/`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PEAK_GOAL_MB = 1536
SCALING_GOAL = 1.7
OVERHEAD_GOAL = 0.10


def _peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# Children (each configuration runs in its own process)
# ---------------------------------------------------------------------------------------------


def child_loop(slides: list[str], out: Path, threads: int | None, decode: bool) -> dict:
    sys.path.insert(0, str(REPO))
    from viewer.batch.tasks import heatmap_figures
    from viewer.heatmap.data import StoreHeatmap
    from viewer.heatmap.precision import configure_threads
    from viewer.heatmap.slide_run import SlideHeatmapOptions, open_store_for, plan_slide_heatmap, run_to_store
    from viewer.model import bundled_model_path, load_model
    from viewer.slide import open_slide

    configure_threads(threads)
    model_path = bundled_model_path()
    model = load_model(model_path)
    report: dict = {}
    if decode:
        report.update(_decode_vs_compute(slides[0], model_path, model, out / "probe.zarr"))
    tissue_px = 0.0
    finished = []
    for k, path in enumerate(slides):
        with open_slide(path) as slide:
            plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions())
            store, _ = open_store_for(plan, out / f"{k}.zarr", force=True)
            for _ in run_to_store(plan, model, store):
                pass
            heatmap_figures(StoreHeatmap(store), 0.5)
            tissue_px += plan.tissue_cells * plan.cell_area_px
        finished.append(time.time())
    report.update(tissue_px=tissue_px, peak_mb=_peak_mb(), finished=finished)
    return report


def _decode_vs_compute(path: str, model_path, model, store_path: Path) -> dict:
    """Seconds to read the tissue chunks' input pixels (decode) and to compute the slide."""
    from viewer.heatmap.analysis import AnalysisImage
    from viewer.heatmap.slide_run import SlideHeatmapOptions, open_store_for, plan_slide_heatmap, run_to_store
    from viewer.slide import open_slide

    with open_slide(path) as slide:  # a fresh slide object: its tile cache starts empty
        plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions())
        image = AnalysisImage(slide, plan.grid)
        s, side = plan.stride, (plan.chunk - 1) * plan.stride + 32
        start = time.perf_counter()
        for i, j in zip(*plan.chunk_tissue_cells.nonzero()):
            rows, cols = plan.chunk_slices(int(i), int(j))
            image.block(cols.start * s, rows.start * s, side, side)
        decode = time.perf_counter() - start
    with open_slide(path) as slide:
        plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions())
        store, _ = open_store_for(plan, store_path, force=True)
        start = time.perf_counter()
        for _ in run_to_store(plan, model, store):
            pass
        total = time.perf_counter() - start
    return {"decode_s": decode, "slide_s": total, "slide_tissue_px": plan.tissue_cells * plan.cell_area_px}


def child_batch(slides: list[str], out: Path, workers: int) -> dict:
    sys.path.insert(0, str(REPO))
    from viewer.batch.cluster import batch_client
    from viewer.batch.inputs import assign_folders
    from viewer.batch.run import BatchSettings, run_batch
    from viewer.model import bundled_model_path, file_sha256

    from viewer.batch.progress import BatchProgress

    class Clock(BatchProgress):
        """Records when each slide finishes (for the steady-state rate)."""

        times: list[float] = []

        def slide_finished(self, line: str, **kwargs) -> None:
            self.times.append(time.time())
            super().slide_finished(line, **kwargs)

    model = bundled_model_path()
    settings = BatchSettings(assign_folders(slides), out, model)
    clock = Clock(len(slides), quiet=True)
    with batch_client(None, workers=workers, threads_per_worker=1, model=model, model_sha256=file_sha256(model)) as (client, info):
        result = run_batch(settings, client, threads=info.threads, progress=clock)
        worker_peaks = sorted(client.run(_peak_mb).values())
    failed = [row.error for row in result.rows if row.status != "done"]
    if failed:
        raise SystemExit(f"batch failed: {failed}")
    return {"worker_peak_mb": worker_peaks, "peak_mb": _peak_mb(), "finished": clock.times}


def child_matmul() -> dict:
    """A fixed float32 matrix-product workload on one thread: what the machine's cores give to
    two processes at once (shared cores, hyperthreads and other users' load all show here)."""
    import numpy as np

    a = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(30):
        a @ a
    return {"seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def _start_child(kind: str, slides: list[str], out: str, **options) -> subprocess.Popen:
    spec = json.dumps({"kind": kind, "slides": slides, "out": out, **options})
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment if kind == "matmul" else {**os.environ, "PYTHONPATH": str(REPO)})


def _report(kind: str, process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_child(kind: str, slides: list[str], **options) -> dict:
    """Run one configuration in a fresh process (``"pair"``: two loop processes side by side, on
    alternate slides); returns its report plus wall seconds and, from the slides' finishing times,
    the steady-state seconds per slide (start-up and first slide left out)."""
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as out:
        start = time.perf_counter()
        begun = time.time()
        if kind == "pair":
            for k in range(2):
                os.makedirs(f"{out}/{k}")
            halves = [_start_child("loop", slides[k::2], f"{out}/{k}", **options) for k in range(2)]
            parts = [_report("loop", p) for p in halves]
            report = {"finished": parts[0]["finished"] + parts[1]["finished"], "tissue_px": sum(p["tissue_px"] for p in parts)}
        else:
            report = _report(kind, _start_child(kind, slides, out, **options))
        report["wall_s"] = time.perf_counter() - start
    finished = sorted(report.get("finished", []))
    if len(finished) >= 3:
        report["steady_s_per_slide"] = (finished[-1] - finished[0]) / (len(finished) - 1)
    report["first_slide_s"] = finished[0] - begun if finished else None
    return report


def machine_scaling() -> float:
    """Throughput of 2 concurrent single-threaded float32 workloads over 1, on this machine now."""
    one = _report("matmul", _start_child("matmul", [], ""))["seconds"]
    pair = [_start_child("matmul", [], "") for _ in range(2)]
    two = max(_report("matmul", p)["seconds"] for p in pair)
    return 2 * one / two


def make_slides(folder: Path, count: int, width: int, height: int) -> list[str]:
    sys.path.insert(0, str(REPO / "tests"))
    from slide_factory import write_jpeg_tile_slide

    return [str(write_jpeg_tile_slide(folder / f"slide{k}.tif", width, height, block=1024, tissue_fraction=0.6, seed=k))
            for k in range(count)]


def big_slide(size: int) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from slide_factory import write_jpeg_tile_slide

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"batch_{size}.tif"
    record = RESULTS / f"batch_{size}.json"
    wanted = {"size": size, "tissue_fraction": 0.1, "block": 4096}
    if path.exists() and record.exists():
        try:
            known = json.loads(record.read_text())
            if known.get("params") == wanted and known.get("bytes") == path.stat().st_size:
                return str(path)
        except (OSError, ValueError):
            pass
    write_jpeg_tile_slide(path, size, size, tissue_fraction=0.1, block=4096, seed=7)
    record.write_text(json.dumps({"params": wanted, "bytes": path.stat().st_size}))
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=8, help="slides in the throughput runs (0: skip them; default 8)")
    parser.add_argument("--size", default="6144x4096", help="their size, WxH px (default 6144x4096)")
    parser.add_argument("--big", type=int, default=50000, help="side of the memory run's slide, px (0: skip; default 50000)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the throughput runs, report medians (default 1)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        spec = json.loads(args.child)
        out = Path(spec["out"])
        if spec["kind"] == "matmul":
            report = child_matmul()
        elif spec["kind"] == "loop":
            report = child_loop(spec["slides"], out, spec.get("threads"), spec.get("decode", False))
        else:
            report = child_batch(spec["slides"], out, spec["workers"])
        print(json.dumps(report))
        return 0

    if args.slides > 0:
        throughput(args)
    if args.big:
        memory(args.big)
    return 0


def throughput(args) -> None:
    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(tempfile.mkdtemp(prefix="batch-bench-slides-"))
    try:
        slides = make_slides(folder, args.slides, width, height)
        configs = [("loop, 1 thread", "loop", {"threads": 1, "decode": True}), ("batch, 1 worker", "batch", {"workers": 1}),
                   ("batch, 2 workers", "batch", {"workers": 2}), ("2 loops side by side", "pair", {"threads": 1}),
                   ("loop, all cores", "loop", {"threads": None})]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        ceilings = []
        for _ in range(max(1, args.repeat)):
            ceilings.append(machine_scaling())
            print(f"  machine: 2 processes give {ceilings[-1]:.2f}x one (float32 matrix products)", flush=True)
            for name, kind, options in configs:
                runs[name].append(run_child(kind, slides, **options))
                report = runs[name][-1]
                steady = report.get("steady_s_per_slide")
                print(f"  {name:<20} {report['wall_s']:6.1f} s" + (f", steady {steady:.2f} s/slide" if steady else ""), flush=True)
        wall = {name: statistics.median(r["wall_s"] for r in reports) for name, reports in runs.items()}
        steady = {name: statistics.median(r["steady_s_per_slide"] for r in reports) for name, reports in runs.items()
                  if all(r.get("steady_s_per_slide") for r in reports)}
        first = {name: statistics.median(r["first_slide_s"] for r in reports) for name, reports in runs.items()}
        loop1 = runs["loop, 1 thread"][0]
        tissue_px = loop1["tissue_px"]
        print(f"\n{args.slides} slides of {width}x{height} px, {tissue_px / 1e6 / args.slides:.0f} Mpx of tissue each "
              f"(60 %), stride 8, bundled model; wall time from process start to exit, median of {max(1, args.repeat)}")
        print(f"  {'configuration':<20} {'wall':>7} {'1st slide':>9} {'slides/min':>10} {'tissue Mpx/s':>12} "
              f"{'per core':>8} {'steady s/slide':>14}  vs loop")
        cores = {"loop, 1 thread": 1, "batch, 1 worker": 1, "batch, 2 workers": 2, "2 loops side by side": 2,
                 "loop, all cores": os.cpu_count() or 1}
        for name in runs:
            rate = tissue_px / wall[name] / 1e6
            per_slide = f"{steady[name]:14.2f}" if name in steady else f"{'':>14}"
            print(f"  {name:<20} {wall[name]:6.1f}s {first[name]:8.1f}s {60 * args.slides / wall[name]:10.2f} {rate:12.2f} "
                  f"{rate / cores[name]:8.2f} {per_slide}  {wall['loop, 1 thread'] / wall[name]:.2f}x")
        scaling = wall["batch, 1 worker"] / wall["batch, 2 workers"]
        overhead = wall["batch, 1 worker"] / wall["loop, 1 thread"] - 1
        ceiling = statistics.median(ceilings)
        pair = wall["loop, 1 thread"] / wall["2 loops side by side"]
        print(f"\n  2 workers / 1 worker (wall)        {scaling:.2f}x   goal >= {SCALING_GOAL}x   "
              f"{'OK' if scaling >= SCALING_GOAL else 'MISSED'}   (2 plain loops side by side: {pair:.2f}x; "
              f"float32 matrix products: {ceiling:.2f}x)")
        if all(k in steady for k in ("batch, 2 workers", "batch, 1 worker", "2 loops side by side", "loop, 1 thread")):
            print(f"  2 workers / 1 worker (steady)      {steady['batch, 1 worker'] / steady['batch, 2 workers']:.2f}x"
                  f"   (2 loops side by side: {steady['loop, 1 thread'] / steady['2 loops side by side']:.2f}x)")
        print(f"  1 worker overhead vs loop (wall)   {100 * overhead:+.1f} %   goal <= {100 * OVERHEAD_GOAL:.0f} %    "
              f"{'OK' if overhead <= OVERHEAD_GOAL else 'MISSED'}")
        if "batch, 1 worker" in steady and "loop, 1 thread" in steady:
            print(f"  1 worker overhead (steady)         {100 * (steady['batch, 1 worker'] / steady['loop, 1 thread'] - 1):+.1f} %"
                  f"   start-up: first slide after {first['batch, 1 worker']:.1f} s against {first['loop, 1 thread']:.1f} s")
        print(f"  2 workers / loop, all cores        {wall['loop, all cores'] / wall['batch, 2 workers']:.2f}x")
        decode = loop1["decode_s"] / loop1["slide_s"]
        print(f"  decode share (slide 1, loop)  {100 * decode:.0f} % of {loop1['slide_s']:.1f} s "
              f"(reading {loop1['slide_tissue_px'] / 1e6:.0f} Mpx of tissue chunks + halo: {loop1['decode_s']:.2f} s)")
        peaks = [p for r in runs["batch, 2 workers"] for p in r["worker_peak_mb"]]
        print(f"  worker peak RSS, these slides {max(peaks):.0f} MB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def memory(size: int) -> None:
    path = big_slide(size)
    report = run_child("batch", [path], workers=2)
    worst = max(report["worker_peak_mb"])
    print(f"\n{size}x{size} px slide (10 % tissue, {3 * size**2 / 1e9:.1f} GB decoded), 2 workers: {report['wall_s']:.0f} s")
    print(f"  peak RSS per worker  {', '.join(f'{p:.0f} MB' for p in report['worker_peak_mb'])}   "
          f"goal <= {PEAK_GOAL_MB} MB   {'OK' if worst <= PEAK_GOAL_MB else 'MISSED'}")
    print(f"  peak RSS of the client  {report['peak_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())

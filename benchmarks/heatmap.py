"""Heatmap engine vs. the naive sliding window, on the same image and model, in one run.

    python benchmarks/heatmap.py [--image PATH] [--model PATH] [--stride 8] [--repeats 1]

Defaults: the first image of ../shared/data/brecahad-subset (relative to the repository root) and
the bundled model if present, else a random-weight Table-1 model saved to a temporary folder.

Every measurement runs in a fresh subprocess, so "cold" really means a new process (TensorFlow
imported, model loaded, nothing traced yet) and memory figures do not mix:

* naive   - cut out every window and run it through ``model.predict`` (batches of 256, chunks of
            ~4096 windows so the 256 MB all-windows array is never built); run twice, the second
            run is "warm". First result = first chunk of windows predicted.
* engine  - ``viewer.heatmap.iter_heatmap_tiles`` ordered outward from the image centre: a cold
            run (includes tracing), then a warm run in the same process.
* warm_up - ``viewer.heatmap.warm_up(model, stride)`` first (what the GUI does after loading the
            model, without knowing the image size), then one run: the first-tile latency a user
            sees on the first image.
* ratio   - the speed-up: warm engine and warm naive runs alternated in one process
            (engine, naive, engine, ..., engine); each naive run is divided by the mean of the
            engine runs around it. This is the figure to quote: other processes' load hits both
            sides about equally, unlike the columns of the table, which come from different
            subprocesses at different moments.

Peak RSS added = the process's peak resident set (VmHWM) during the run minus its resident set
just before it, with the peak reset right before the run (``/proc/self/clear_refs`` = 5, Linux).
It counts everything: TensorFlow's buffers, traced graphs, oneDNN kernels, the output array.

Timings on a shared machine are noisy; compare the ratios printed in one run. ``--repeats N``
repeats the table's subprocesses N times and reports medians; ``--pairs N`` sets the number of
alternating pairs of the speed-up measurement (default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "brecahad-subset" / "images"
REPEATS = 3
"""Alternating engine/naive pairs in the speed-up measurement (``--pairs``)."""


# ---------------------------------------------------------------------------------------------
# Memory helpers (Linux /proc; reported as n/a elsewhere)
# ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """``with PeakRSS() as m: ...`` -> ``m.added_mb``: peak resident memory added by the block."""

    def __enter__(self):
        import gc

        gc.collect()
        self.ok = _reset_peak()
        self.before = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status_kb("VmHWM")
        self.added_mb = (peak - self.before) / 1024 if self.ok and peak is not None and self.before is not None else None
        return False


# ---------------------------------------------------------------------------------------------
# Workers (run in subprocesses)
# ---------------------------------------------------------------------------------------------


def _load(image_path: str, model_path: str):
    sys.path.insert(0, str(REPO))
    from viewer.model import load_model
    from viewer.slide import open_slide

    pixels = open_slide(image_path).read_all()
    model = load_model(model_path)
    return pixels, model


def _naive_run(pixels, model, stride):
    import numpy as np

    from viewer.heatmap import heatmap_shape

    rows, cols = heatmap_shape(pixels.shape[0], pixels.shape[1], stride)
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (32, 32, 3))[::stride, ::stride, 0]
    out = np.empty((rows, cols), np.float32)
    per_chunk = max(1, 4096 // cols)
    start = time.perf_counter()
    first = None
    for r in range(0, rows, per_chunk):
        chunk = windows[r : r + per_chunk].reshape(-1, 32, 32, 3).astype(np.float32) / 255
        out[r : r + per_chunk] = model.predict(chunk, batch_size=256, verbose=0).reshape(-1, cols)
        if first is None:
            first = time.perf_counter() - start
    return out, time.perf_counter() - start, first


def _engine_run(pixels, model, stride):
    import numpy as np

    from viewer.heatmap import iter_heatmap_tiles, plan_heatmap

    start = time.perf_counter()
    plan = plan_heatmap(pixels.shape[0], pixels.shape[1], stride, order_from=(pixels.shape[1] / 2, pixels.shape[0] / 2))
    out = np.full(plan.shape, np.nan, np.float32)
    first = None
    for rows, cols, probs in iter_heatmap_tiles(pixels, model, stride, plan=plan):
        out[rows, cols] = probs
        if first is None:
            first = time.perf_counter() - start
    return out, time.perf_counter() - start, first


def worker(kind: str, image_path: str, model_path: str, stride: int, result_npy: str, pairs: int = REPEATS) -> dict:
    import numpy as np

    pixels, model = _load(image_path, model_path)
    report: dict = {"kind": kind}
    if kind == "naive":
        with PeakRSS() as mem:
            out, total, first = _naive_run(pixels, model, stride)
        report.update(cold_s=total, cold_first_s=first, cold_rss_mb=mem.added_mb)
        with PeakRSS() as mem:
            out, total, first = _naive_run(pixels, model, stride)
        report.update(warm_s=total, warm_first_s=first, warm_rss_mb=mem.added_mb)
    elif kind == "engine":
        from viewer.heatmap import heatmap_method, plan_heatmap

        with PeakRSS() as mem:
            out, total, first = _engine_run(pixels, model, stride)
        report.update(cold_s=total, cold_first_s=first, cold_rss_mb=mem.added_mb)
        with PeakRSS() as mem:
            out, total, first = _engine_run(pixels, model, stride)
        report.update(warm_s=total, warm_first_s=first, warm_rss_mb=mem.added_mb)
        plan = plan_heatmap(pixels.shape[0], pixels.shape[1], stride)
        report.update(method=heatmap_method(model, stride), tiles=len(plan), tile=[plan.tile_rows, plan.tile_cols])
    elif kind == "ratio":
        # Speed-up measured by alternation in one process: engine, naive, engine, naive, ...
        # so that load from other processes hits both about equally. Both are warmed first.
        _engine_run(pixels, model, stride)
        _naive_run(pixels, model, stride)
        engine_s, naive_s = [], []
        for _ in range(pairs):
            engine_s.append(_engine_run(pixels, model, stride)[1])
            out, total, _ = _naive_run(pixels, model, stride)
            naive_s.append(total)
        engine_s.append(_engine_run(pixels, model, stride)[1])
        # each naive run against the mean of the engine runs just before and after it
        ratios = [n / ((engine_s[i] + engine_s[i + 1]) / 2) for i, n in enumerate(naive_s)]
        report.update(engine_runs=engine_s, naive_runs=naive_s, ratios=ratios)
    elif kind == "warm_up":
        from viewer.heatmap import warm_up

        t = time.perf_counter()
        warm_up(model, stride)
        report.update(warm_up_s=time.perf_counter() - t)
        with PeakRSS() as mem:
            out, total, first = _engine_run(pixels, model, stride)
        report.update(cold_s=total, cold_first_s=first, cold_rss_mb=mem.added_mb)
    else:
        raise SystemExit(f"unknown worker {kind}")
    np.save(result_npy, out)
    return report


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def _default_image() -> Path | None:
    images = sorted(DEFAULT_DATA.glob("*.tif")) if DEFAULT_DATA.is_dir() else []
    return images[0] if images else None


def _run_worker(kind, image, model, stride, tmp: Path, pairs: int = REPEATS) -> tuple[dict, Path]:
    result = tmp / f"{kind}.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--image", str(image), "--model", str(model),
         "--stride", str(stride), "--result", str(result), "--pairs", str(pairs)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {kind} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1]), result


def _fmt(value, unit: str, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f} {unit}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="image file (default: first image of ../shared/data/brecahad-subset)")
    parser.add_argument("--model", help="Keras model (default: the bundled model, else random Table-1 weights)")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="repeat the cold/memory subprocesses N times; report medians")
    parser.add_argument("--pairs", type=int, default=REPEATS, help=f"alternating warm engine/naive pairs for the speed-up (default {REPEATS})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args, _unknown = parser.parse_known_args(argv)  # run_all.py passes its own arguments to everyone

    if args.worker:
        print(json.dumps(worker(args.worker, args.image, args.model, args.stride, args.result, max(1, args.pairs))))
        return 0

    sys.path.insert(0, str(REPO))
    import numpy as np

    image = Path(args.image) if args.image else _default_image()
    if image is None or not image.is_file():
        print(f"no image: give --image (looked in {DEFAULT_DATA})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hv-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            model, model_label = Path(args.model), args.model
        else:
            from viewer.model import bundled_model_path

            model = bundled_model_path()
            model_label = f"bundled {model.name}"
            if not model.is_file():
                from viewer.model import build_convnet

                model = tmp / "random_table1.keras"
                build_convnet(seed=0).save(model)
                model_label = "random Table-1 weights (bundled model absent)"
        from viewer.heatmap import heatmap_shape
        from viewer.model import file_sha256
        from viewer.slide import open_slide

        pixels = open_slide(image).read_all()
        rows, cols = heatmap_shape(pixels.shape[0], pixels.shape[1], args.stride)
        print(f"image  {image.name}: {pixels.shape[1]}x{pixels.shape[0]} px, stride {args.stride} -> "
              f"heatmap {rows}x{cols} ({rows * cols} windows)")
        print(f"model  {model_label} (sha256 {file_sha256(model)[:12]})")
        print(f"cpu    {os.cpu_count()} logical cores; each column below is a fresh subprocess", flush=True)

        runs: dict[str, list[dict]] = {"naive": [], "engine": [], "warm_up": []}
        results: dict[str, Path] = {}
        for _ in range(max(1, args.repeats)):
            for kind in runs:
                report, results[kind] = _run_worker(kind, image, model, args.stride, tmp)
                runs[kind].append(report)
        ratio, _ = _run_worker("ratio", image, model, args.stride, tmp, pairs=args.pairs)

        def med(kind, key):
            values = [r[key] for r in runs[kind] if r.get(key) is not None]
            return statistics.median(values) if values else None

        naive = np.load(results["naive"])
        engine = np.load(results["engine"])
        warmed = np.load(results["warm_up"])
        diff = float(np.abs(engine - naive).max())
        diff_w = float(np.abs(warmed - naive).max())
        eng = runs["engine"][0]

        cols_ = [
            ("naive, 1st run", "naive", "cold"),
            ("naive, 2nd run", "naive", "warm"),
            ("engine, cold", "engine", "cold"),
            ("engine, warm", "engine", "warm"),
            ("warm_up()+run", "warm_up", "cold"),
        ]
        width = 16
        print()
        print(f"engine method: {eng['method']}, {eng['tiles']} tiles of {eng['tile'][0]}x{eng['tile'][1]} cells, "
              f"outward from the image centre; warm_up() itself took {_fmt(med('warm_up', 'warm_up_s'), 's')}")
        print(f"{'':24}" + "".join(f"{label:>{width}}" for label, _, _ in cols_))
        print(f"{'total time':24}" + "".join(f"{_fmt(med(k, p + '_s'), 's'):>{width}}" for _, k, p in cols_))
        print(f"{'time to first tile':24}" + "".join(f"{_fmt(med(k, p + '_first_s'), 'ms', 1000, 0):>{width}}" for _, k, p in cols_))
        print(f"{'peak RSS added':24}" + "".join(f"{_fmt(med(k, p + '_rss_mb'), 'MB', 1, 0):>{width}}" for _, k, p in cols_))
        base = med("naive", "warm_s")
        speed = [f"{base / med(k, p + '_s'):.1f}x" if base else "n/a" for _, k, p in cols_]
        print(f"{'naive 2nd / this':24}" + "".join(f"{s:>{width}}" for s in speed))
        print(f"{'max |diff| vs naive':24}" + "".join(f"{v:>{width}}" for v in ["0", "0", f"{diff:.1e}", f"{diff:.1e}", f"{diff_w:.1e}"]))
        print("\n(first tile for naive = first chunk of ~4096 windows; the naive result of the 2nd run is compared)")
        print(f"\nspeed-up, warm, {len(ratio['ratios'])} alternating pairs in one process (robust to load from others):")
        print(f"  engine runs  {' '.join(f'{t:.3f}' for t in ratio['engine_runs'])} s")
        print(f"  naive runs   {' '.join(f'{t:.2f}' for t in ratio['naive_runs'])} s")
        print(f"  ratios       {' '.join(f'{r:.1f}x' for r in ratio['ratios'])}  -> median {statistics.median(ratio['ratios']):.1f}x")
        ok = diff <= 1e-4 and diff_w <= 1e-4
        if not ok:
            print("EXACTNESS FAILED: max |diff| > 1e-4", file=sys.stderr)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

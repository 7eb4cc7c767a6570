"""Heatmap engine: against the naive sliding window, and the issue-10 goals, in one run.

    python benchmarks/heatmap.py [--image PATH] [--model PATH] [--stride 8] [--repeats 1] [--rounds 5] [--goals-only]

Defaults: the first image of ../shared/data/brecahad-subset (relative to the repository root) and
the bundled model if present, else a random-weight Table-1 model saved to a temporary folder.

Part 1 (skipped with --goals-only). Every measurement runs in a fresh subprocess, so "cold"
really means a new process (TensorFlow imported, model loaded, nothing traced yet) and memory
figures do not mix:

* naive   - cut out every window and run it through ``model.predict`` (batches of 256, chunks of
            ~4096 windows so the 256 MB all-windows array is never built); run twice, the second
            run is "warm". First result = first chunk of windows predicted.
* engine  - ``viewer.heatmap.iter_heatmap_tiles`` ordered outward from the image centre (an
            interactive plan: a small first tile, then bulk tiles): a cold run (includes
            tracing), then a warm run in the same process.
* warm_up - ``viewer.heatmap.warm_up(model, stride)`` first (what the GUI does after loading the
            model, without knowing the image size), then one run: the first-tile latency a user
            sees on the first image.
* ratio   - the speed-up: warm engine and warm naive runs alternated in one process
            (engine, naive, engine, ..., engine); each naive run is divided by the mean of the
            engine runs around it. This is the figure to quote: other processes' load hits both
            sides about equally, unlike the columns of the table, which come from different
            subprocesses at different moments.

Part 2, the issue-10 goals (``throughput`` and ``accuracy`` workers): today's engine (FP32,
~320 px tiles), the bulk engine and one single pass in FP32 and bfloat16, the interactive first
tile, a whole slide of real BreCaHAD fields with and without the store, and TensorFlow's FP32
matmul rate as the ceiling, each once per round, rounds alternated; ratios within a round,
medians printed next to the goals. Then bfloat16 against FP32 on held-out images (max and 99th
percentile |diff|, cells flipping across 0.5, heatmap AUC). See benchmarks/README.md.

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
ROUNDS = 5
"""Alternated rounds of the issue-10 measurements (``--rounds``)."""


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
        # The plan _engine_run drains: a small first tile at the centre, then bulk tiles.
        plan = plan_heatmap(pixels.shape[0], pixels.shape[1], stride, order_from=(pixels.shape[1] / 2, pixels.shape[0] / 2))
        first_rows, first_cols = plan.tiles[0]
        report.update(method=heatmap_method(model, stride), tiles=len(plan), tile=[plan.tile_rows, plan.tile_cols],
                      first_tile=[first_rows.stop - first_rows.start, first_cols.stop - first_cols.start])
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
    elif kind == "throughput":
        report.update(_throughput(pixels, model, stride, Path(result_npy).parent, pairs, image_path, model_path))
        out = np.zeros((1, 1), np.float32)
    elif kind == "accuracy":
        report.update(_accuracy(pixels, model, model_path, stride))
        out = np.zeros((1, 1), np.float32)
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
# Issue 10: tiles, single pass, bfloat16, matmul ceiling, whole slide (one process, alternated)
# ---------------------------------------------------------------------------------------------

GOALS = {
    "bulk_vs_single": 1.10,  # FP32 whole image in bulk tiles, at most this x one single pass
    "slide_vs_single": 1.20,  # whole-slide time per tissue cell, at most this x the single pass's per cell
    "bf16_vs_today": 2.5,  # bfloat16 engine at least this x faster than today's FP32 engine
    "bf16_max_diff": 0.03,
    "bf16_flips": 0.001,  # fraction of cells changing side of 0.5
    "bf16_auc": 0.002,
    "efficiency": 0.75,  # FP32 engine GFLOP/s over the FP32 matmul ceiling
    "first_tile_s": 0.050,  # first painted tile, warm
}
LEGACY_TILE_CELLS = 40
"""Today's (before issue 10) engine: tiles of about 320 px, balanced over the image (32 x 34
cells on a 1360 x 1024 image at stride 8), float32."""
MATMUL_N = 2048
MATMUL_REPEATS = 3
"""The ceiling runs this many 2048 x 2048 FP32 matrix products per measurement (~50-100 ms, as
long as the engine's run, so both see the same load)."""


def network_macs_per_cell(model, stride: int) -> int:
    """Multiply-adds the fully convolutional network spends per heatmap cell (= per window):
    each layer's multiply-adds per output position times its positions per cell; the windows
    share everything else. (Cutting out every window would cost ~8x more per window.)"""
    from viewer.heatmap.engine import _analyse

    spec, reason = _analyse(model)
    if spec is None:
        raise SystemExit(f"the model has no fully convolutional form ({reason})")
    macs, step = 0.0, 1  # step: input pixels between neighbouring positions of the current layer
    for stage in spec.features:
        if stage[0] == "pool":
            step *= stage[1]
            continue
        kh, kw, cin, cout = stage[1].shape
        macs += kh * kw * cin * cout * (stride / step) ** 2
    for kernel, _bias, _act in spec.dense:  # one position per cell from the first Dense layer on
        kh, kw, cin, cout = kernel.shape
        macs += kh * kw * cin * cout
    return int(round(macs))


def _bench_slide(folder: Path, image_path: str) -> Path:
    """A JPEG-tiled pyramidal TIFF at the model's 0.25 um/px: an elliptical section of real
    BreCaHAD fields (6 x 6 of them) on glass, ~60 % tissue. Kept in the run's temporary folder."""
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np

    from slide_factory import write_pyramidal_tiff
    from viewer.slide import open_slide

    images = sorted(Path(image_path).parent.glob("*.tif"))[:12]
    fields = [open_slide(p).read_all() for p in images]
    fh, fw = fields[0].shape[:2]
    n = 6
    mosaic = np.empty((n * fh, n * fw, 3), np.uint8)
    for k in range(n * n):
        r, c = divmod(k, n)
        mosaic[r * fh : (r + 1) * fh, c * fw : (c + 1) * fw] = fields[k % len(fields)][:fh, :fw]
    h, w = mosaic.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    outside = ((xx - w / 2) / (0.46 * w)) ** 2 + ((yy - h / 2) / (0.44 * h)) ** 2 > 1
    glass = np.clip(np.random.default_rng(0).normal(240, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    mosaic[outside] = glass[outside]
    return write_pyramidal_tiff(folder / "section.tif", w, h, source=mosaic, mpp=0.25, levels=5, quality=90)


COMPARISONS = (
    ("bulk_float32", "single_float32"),
    ("today", "bulk_float32"),
    ("today", "bulk_bfloat16"),
    ("single_float32", "single_bfloat16"),
    ("bulk_float32", "matmul"),
    ("slide_float32", "singles_float32"),
    ("store_float32", "singles_float32"),
    ("store_bfloat16", "singles_bfloat16"),
)
"""Each ratio is measured by alternating its two sides (B A B A ... B): every A against the mean
of the B runs just before and after it, the median over the alternations reported."""
INNER = 3
"""Runs per measurement of the image-sized configurations (~0.2-0.4 s together), so a burst of
load from other processes averages out instead of hitting one side of a comparison."""


def _throughput(pixels, model, stride: int, tmp: Path, rounds: int, image_path: str, model_path: str) -> dict:
    """The issue-10 comparisons, each measured by alternation (:data:`COMPARISONS`) so load from
    other processes hits both of its sides alike."""
    import numpy as np
    import tensorflow as tf

    from viewer.heatmap import compute_heatmap, iter_heatmap_tiles, plan_heatmap, warm_up
    from viewer.heatmap.engine import _balanced, _engines_for, _exact_function
    from viewer.heatmap.precision import bfloat16_support
    from viewer.heatmap.slide_run import (
        SlideHeatmapOptions, compute_slide_array, open_store_for, plan_slide_heatmap, run_to_store,
    )
    from viewer.slide import open_slide

    bf16, why = bfloat16_support()
    precisions = ("float32", "bfloat16") if bf16 else ("float32",)
    height, width = pixels.shape[:2]
    rows, cols = plan_heatmap(height, width, stride).shape
    legacy = (_balanced(rows, LEGACY_TILE_CELLS), _balanced(cols, LEGACY_TILE_CELLS))
    centre = (width / 2, height / 2)
    slide = open_slide(_bench_slide(tmp, image_path))
    plans = {p: plan_slide_heatmap(slide, model_path, SlideHeatmapOptions(stride=stride, precision=p)) for p in precisions}
    repeats = max(1, round(plans["float32"].tissue_cells / (rows * cols)))
    left = tf.random.normal((MATMUL_N, MATMUL_N))
    right = tf.random.normal((MATMUL_N, MATMUL_N))
    matmul = tf.function(lambda x, y: tf.matmul(x, y))

    def first_tile(precision):
        def run():
            tiles = iter_heatmap_tiles(pixels, model, stride, order_from=centre, precision=precision)
            next(tiles)
            tiles.close()
        return run

    stores: dict[str, object] = {}

    def new_store(precision):
        """Untimed: replace the last run's store by an empty one, and flush the disk, so neither
        deleting ~1000 files nor their write-back is counted in (or leaks into) a measurement."""
        def setup():
            stores[precision] = open_store_for(plans[precision], tmp / f"store-{precision}.zarr", force=True)[0]
            os.sync()
        return setup

    def store_run(precision):
        def run():
            for _ in run_to_store(plans[precision], model, stores[precision], interactive=False):
                pass
        return run

    configs = {
        "today": lambda: [compute_heatmap(pixels, model, stride, tile_cells=legacy) for _ in range(INNER)],
        "matmul": lambda: [matmul(left, right).numpy() for _ in range(MATMUL_REPEATS)],
    }
    for p in precisions:
        single = _exact_function(_engines_for(model), stride, p)
        configs[f"bulk_{p}"] = lambda p=p: [compute_heatmap(pixels, model, stride, precision=p) for _ in range(INNER)]
        configs[f"single_{p}"] = lambda single=single: [single(pixels[None]).numpy() for _ in range(INNER)]
        # The same pass repeated for as many cells as the slide has tissue cells: the slide's run
        # is compared with a run as long as itself, so both see the same share of the load.
        configs[f"singles_{p}"] = lambda single=single: [single(pixels[None]).numpy() for _ in range(repeats)]
        configs[f"first_{p}"] = first_tile(p)
        configs[f"slide_{p}"] = lambda p=p: compute_slide_array(plans[p], model)
        configs[f"store_{p}"] = store_run(p)
        warm_up(model, stride, precision=p)
    setups = {f"store_{p}": new_store(p) for p in precisions}
    for key, run in configs.items():  # warm: traced, kernels made, slide tiles decoded once
        setups.get(key, lambda: None)()
        run()
    times: dict[str, list[float]] = {k: [] for k in configs}

    def measure(key: str) -> float:
        setups.get(key, lambda: None)()
        start = time.perf_counter()
        configs[key]()
        times[key].append(time.perf_counter() - start)
        return times[key][-1]

    ratios: dict[str, list[float]] = {}
    for num, den in COMPARISONS:
        if num not in configs or den not in configs:
            continue
        before = measure(den)
        found = ratios[f"{num}/{den}"] = []
        for _ in range(max(2, rounds)):
            took = measure(num)
            after = measure(den)
            found.append(took / ((before + after) / 2))
            before = after
    for _ in range(max(2, rounds)):
        for p in precisions:
            measure(f"first_{p}")
    plan = plan_heatmap(height, width, stride)
    fp = plans["float32"]
    return {
        "times": times, "ratios": ratios, "cells": rows * cols, "legacy_tile": list(legacy), "bulk_tiles": len(plan),
        "bulk_tile": [plan.tile_rows, plan.tile_cols], "padded_cells": plan.padded_cells(),
        "macs_per_cell": network_macs_per_cell(model, stride), "matmul_flop": MATMUL_REPEATS * 2 * MATMUL_N**3,
        "inner": INNER,
        "bf16": bf16, "bf16_why": why, "single_repeats": repeats,
        "slide": {"size": [slide.width, slide.height], "tissue_cells": fp.tissue_cells,
                  "cells": fp.shape[0] * fp.shape[1], "tissue_fraction": float(fp.tissue.fraction),
                  "busy_chunks": int((fp.chunk_tissue_cells > 0).sum()), "chunks": int(fp.chunk_tissue_cells.size),
                  "computed_cells": _computed_cells(fp),
                  "chunk": fp.chunk},
    }


def _computed_cells(plan) -> int:
    """Cells the engine actually computes on the slide (its tiles, padding included): tissue
    cells plus the glass and fat inside the tiles' rectangles at tissue edges and holes."""
    from viewer.heatmap.engine import tile_quantum
    from viewer.heatmap.slide_run import chunks_in_order, engine_tiles, tissue_tiles

    q = tile_quantum(plan.stride)
    busy = [ij for ij in chunks_in_order(plan) if plan.chunk_tissue_cells[ij] > 0]
    total = 0
    for (rows, cols), _ in engine_tiles(plan, busy, interactive=False):
        for r, c in tissue_tiles(plan.stride, plan.evaluated_cells(rows, cols), rows.start, cols.start):
            total += -(-(r.stop - r.start) // q) * q * -(-(c.stop - c.start) // q) * q
    return total


def _accuracy(pixels, model, model_path: str, stride: int) -> dict:
    """bfloat16 against float32: this image and the held-out test images recorded beside the
    model (their annotations give the heatmap AUC)."""
    import numpy as np

    from viewer.heatmap import compute_heatmap
    from viewer.heatmap.precision import bfloat16_support

    if not bfloat16_support()[0]:
        return {"skipped": bfloat16_support()[1]}
    from viewer.dataset import load_labelled
    from viewer.evaluate import choose_images, evaluate_images

    images = []
    data = DEFAULT_DATA.parent
    if (data / "groundTruth").is_dir():
        from viewer.errors import InputError

        try:
            entries, _source = choose_images(data, Path(model_path), "test")
        except InputError:  # a model that records no split has no held-out images to use
            entries = []
        images = [load_labelled(e) for e in entries]
    diffs, flips, cells = [], 0, 0
    for px in [pixels] + [img.pixels for img in images]:
        exact = compute_heatmap(px, model, stride)
        fast = compute_heatmap(px, model, stride, precision="bfloat16")
        diffs.append(np.abs(fast - exact).ravel())
        flips += int(((fast >= 0.5) != (exact >= 0.5)).sum())
        cells += exact.size
    diff = np.concatenate(diffs)
    report = {"images": 1 + len(images), "cells": cells, "max_diff": float(diff.max()),
              "p99_diff": float(np.percentile(diff, 99)), "flips": flips}
    if images:
        report["auc_float32"] = evaluate_images(model, images, stride=stride, heatmap=True)["heatmap_auc"]
        report["auc_bfloat16"] = evaluate_images(model, images, stride=stride, heatmap=True, precision="bfloat16")["heatmap_auc"]
    return report


def _ratio(tp: dict, num: str, den: str, scale: float = 1.0) -> float:
    """Median of the alternated ``num / den`` time ratios, times ``scale``."""
    return statistics.median(tp["ratios"][f"{num}/{den}"]) * scale


def print_goals(tp: dict, acc: dict) -> bool:
    """The issue-10 table: each figure next to its goal. Returns True if every goal is met."""
    t = tp["times"]
    inner = tp["inner"]  # image-sized configurations run this many times per measurement
    med = {k: statistics.median(v) / (inner if k in ("today",) or k.startswith(("bulk_", "single_")) else 1)
           for k, v in t.items() if v and not k.startswith("singles_")}
    cells, tissue = tp["cells"], tp["slide"]["tissue_cells"]
    per_tissue = tp["single_repeats"] * cells / tissue  # slide time per tissue cell over singles' per cell
    flop_cell = 2 * tp["macs_per_cell"]
    rows: list[tuple[str, str, str, bool | None]] = []

    def add(label, value, goal, ok):
        rows.append((label, value, goal, ok))

    r = _ratio(tp, "bulk_float32", "single_float32")
    add(f"FP32 image in bulk tiles / single pass ({tp['bulk_tiles']} tile{'s' if tp['bulk_tiles'] != 1 else ''} of <= {tp['bulk_tile'][0]}x{tp['bulk_tile'][1]})",
        f"{r:.3f}x", f"<= {GOALS['bulk_vs_single']:.2f}x", r <= GOALS["bulk_vs_single"])
    for key, label in (("store", "into a .zarr store"), ("slide", "engine only, no store")):
        r = _ratio(tp, f"{key}_float32", "singles_float32", per_tissue)
        add(f"FP32 whole slide per tissue cell / single pass ({label})", f"{r:.2f}x",
            f"<= {GOALS['slide_vs_single']:.2f}x", r <= GOALS["slide_vs_single"])
    computed = tp["slide"]["computed_cells"]
    r = _ratio(tp, "slide_float32", "singles_float32", tp["single_repeats"] * cells / computed)
    add(f"  the same per computed cell ({computed / tissue:.3f} computed per tissue cell: glass, fat, padding)",
        f"{r:.2f}x", "", None)
    r = _ratio(tp, "today", "bulk_float32")
    add("FP32 engine speed-up vs today's engine (same image)", f"{r:.2f}x", "", None)
    rate = flop_cell * cells / med["bulk_float32"] / 1e9
    ceiling = tp["matmul_flop"] / med["matmul"] / 1e9
    eff = flop_cell * cells * inner / tp["matmul_flop"] / _ratio(tp, "bulk_float32", "matmul")
    add(f"FP32 engine {rate:.0f} GFLOP/s / FP32 matmul ceiling {ceiling:.0f} GFLOP/s", f"{100 * eff:.0f} %",
        f">= {100 * GOALS['efficiency']:.0f} %", eff >= GOALS["efficiency"])
    add("first painted tile, warm, FP32 (interactive 32-cell tile)", f"{1000 * med['first_float32']:.0f} ms",
        f"<= {1000 * GOALS['first_tile_s']:.0f} ms", med["first_float32"] <= GOALS["first_tile_s"])
    if tp["bf16"]:
        r = _ratio(tp, "today", "bulk_bfloat16")
        add("bfloat16 engine speed-up vs today's FP32 engine", f"{r:.2f}x", f">= {GOALS['bf16_vs_today']:.1f}x",
            r >= GOALS["bf16_vs_today"])
        r = _ratio(tp, "single_float32", "single_bfloat16")
        add("bfloat16 single pass speed-up vs FP32 single pass", f"{r:.2f}x", "", None)
        r = _ratio(tp, "store_bfloat16", "singles_bfloat16", per_tissue)
        add("bfloat16 whole slide per tissue cell / bfloat16 single pass (store)", f"{r:.2f}x", "", None)
        add("first painted tile, warm, bfloat16", f"{1000 * med['first_bfloat16']:.0f} ms",
            f"<= {1000 * GOALS['first_tile_s']:.0f} ms", med["first_bfloat16"] <= GOALS["first_tile_s"])
        if "max_diff" in acc:
            add(f"bfloat16 vs FP32 max |diff| (99th percentile {acc['p99_diff']:.4f}), {acc['images']} images",
                f"{acc['max_diff']:.4f}", f"<= {GOALS['bf16_max_diff']}", acc["max_diff"] <= GOALS["bf16_max_diff"])
            share = acc["flips"] / acc["cells"]
            add(f"cells flipping across 0.5 ({acc['flips']} of {acc['cells']})", f"{100 * share:.3f} %",
                f"<= {100 * GOALS['bf16_flips']:.1f} %", share <= GOALS["bf16_flips"])
        if acc.get("auc_float32") is not None:
            d = abs(acc["auc_bfloat16"] - acc["auc_float32"])
            add(f"heatmap AUC, held-out images: FP32 {acc['auc_float32']:.4f}, bfloat16 {acc['auc_bfloat16']:.4f}",
                f"{d:.4f}", f"<= {GOALS['bf16_auc']}", d <= GOALS["bf16_auc"])
    else:
        add(f"bfloat16: not measured ({tp['bf16_why']})", "n/a", "", None)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'issue 10 goal':{width}}  {'measured':>10}  {'goal':>10}")
    for label, value, goal, ok in rows:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"{label:{width}}  {value:>10}  {goal:>10}{mark}")
    s = tp["slide"]
    print(f"\nwhole slide: {s['size'][0]}x{s['size'][1]} px of real BreCaHAD fields, {100 * s['tissue_fraction']:.0f} % tissue, "
          f"{tissue} of {s['cells']} cells evaluated, {s['busy_chunks']} of {s['chunks']} chunks of {s['chunk']} cells with tissue")
    print(f"today's engine: {tp['legacy_tile'][0]}x{tp['legacy_tile'][1]}-cell tiles; bulk plan pads {tp['padded_cells']} cells "
          f"for {cells} ({100 * (tp['padded_cells'] / cells - 1):.1f} % padding); network {tp['macs_per_cell']} "
          f"multiply-adds per window; ratios: medians of alternated runs; times: medians per run:")
    print("  " + "  ".join(f"{k} {1000 * v:.0f} ms" for k, v in med.items()))
    print("alternated ratios (min-max): " + "  ".join(
        f"{name} {min(v):.2f}-{max(v):.2f}" for name, v in tp["ratios"].items()))
    return all(ok is not False for *_, ok in rows)


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
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternated rounds of the issue-10 measurements (default {ROUNDS})")
    parser.add_argument("--goals-only", action="store_true", help="only the issue-10 measurements (no naive baseline)")
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

        ok = True
        if not args.goals_only:
            ok = _baseline_table(args, image, model, tmp)
        print("\nissue 10 measurements: one process, the two sides of each comparison alternated...", flush=True)
        tp, _ = _run_worker("throughput", image, model, args.stride, tmp, pairs=args.rounds)
        acc, _ = _run_worker("accuracy", image, model, args.stride, tmp)
        print_goals(tp, acc)
        accurate = "max_diff" not in acc or (
            acc["max_diff"] <= GOALS["bf16_max_diff"] and acc["flips"] <= GOALS["bf16_flips"] * acc["cells"]
            and (acc.get("auc_float32") is None or abs(acc["auc_bfloat16"] - acc["auc_float32"]) <= GOALS["bf16_auc"]))
        if not accurate:
            print("BFLOAT16 ACCURACY FAILED: outside the issue's bounds", file=sys.stderr)
        return 0 if ok and accurate else 1


def _baseline_table(args, image: Path, model: Path, tmp: Path) -> bool:
    """The engine against the naive sliding window (cold, warm, after warm_up); True if exact."""
    import numpy as np

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
    print(f"engine method: {eng['method']}, {eng['tiles']} tiles outward from the image centre (the first "
          f"{eng['first_tile'][0]}x{eng['first_tile'][1]} cells, the largest {eng['tile'][0]}x{eng['tile'][1]}); "
          f"warm_up() itself took {_fmt(med('warm_up', 'warm_up_s'), 's')}")
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
    return ok


if __name__ == "__main__":
    sys.exit(main())

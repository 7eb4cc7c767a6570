"""Where a whole-slide heatmap's time goes, beyond the network itself (issue 10's slide goal).

    python benchmarks/slide_breakdown.py [--image PATH] [--model PATH] [--rounds 3]

The slide is the one ``benchmarks/heatmap.py`` uses (36 real BreCaHAD fields in an elliptical
section on glass, JPEG-tiled, 0.25 um/px; needs the BreCaHAD subset). Printed, each time per
tissue cell over the single pass's time per cell, all measured in one process with the
configurations alternated round by round (medians of ``--rounds``):

* geometry: cells the engine computes per tissue cell, and what covering the tissue exactly
  with 8- or 16-cell squares would compute (a bound no tiling with halos reaches);
* ``single``: the traced network once over one 1360 x 1024 field in RAM (the baseline);
* ``engine``: the same network over the slide run's own padded tiles, pre-read into RAM;
* ``engine + reading``: the same while another thread decodes the run's blocks from the slide;
* ``reading``: decoding those blocks alone (wall time, as a share of the same baseline);
* ``compute_slide_array``: the real run (reading a block ahead, tissue masking, Python).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="a BreCaHAD field (default: the first of the subset)")
    parser.add_argument("--model", help="Keras model (default: the bundled one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import numpy as np

    from heatmap import _bench_slide, _default_image
    from viewer.heatmap import warm_up
    from viewer.heatmap.analysis import AnalysisImage
    from viewer.heatmap.engine import HeatmapPlan, _engines_for, _exact_function, tile_quantum
    from viewer.heatmap.slide_run import (
        SlideHeatmapOptions, _union, chunks_in_order, compute_slide_array, engine_tiles, plan_slide_heatmap,
        tissue_tiles,
    )
    from viewer.model import bundled_model_path, load_model
    from viewer.slide import open_slide

    image = Path(args.image) if args.image else _default_image()
    if image is None:
        print("slide_breakdown: skipped, it needs the BreCaHAD subset (../shared/data/brecahad-subset) or --image")
        return 0
    model_path = args.model or str(bundled_model_path())
    model = load_model(model_path)
    tmp = Path(tempfile.mkdtemp(prefix="histoviewer-breakdown-"))
    slide = open_slide(_bench_slide(tmp, str(image)))
    plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions())
    stride, q = plan.stride, tile_quantum(plan.stride)

    # The run's own tiles and read blocks, as iter_slide_heatmap makes them.
    busy = [ij for ij in chunks_in_order(plan) if plan.chunk_tissue_cells[ij] > 0]
    tiles, blocks_to_read = [], []
    for (rows, cols), _ in engine_tiles(plan, busy, interactive=False):
        group = tissue_tiles(stride, plan.evaluated_cells(rows, cols), rows.start, cols.start)
        tiles += group
        if group:
            boxes = HeatmapPlan(plan.grid.height, plan.grid.width, stride, 1, 1, tuple(group), quantum=(q, q))
            blocks_to_read.append(_union([boxes.block_box(*t) for t in group]))
    engine_plan = HeatmapPlan(plan.grid.height, plan.grid.width, stride, 1, 1, tuple(tiles), quantum=(q, q))
    reader = AnalysisImage(slide, plan.grid)
    padded = []
    for tile in tiles:
        x, y, w, h = engine_plan.block_box(*tile)
        padded.append(np.ascontiguousarray(reader.block(x, y, w, h)[None]))

    rows, cols = plan.shape
    keep = plan.evaluated_cells(slice(0, rows), slice(0, cols))
    tissue = int(keep.sum())
    computed = sum(int(np.prod(engine_plan.padded_shape(*t))) for t in tiles)
    bounds = {}
    for side in (8, 16):
        grid = np.zeros((-(-rows // side) * side, -(-cols // side) * side), bool)
        grid[:rows, :cols] = keep
        squares = grid.reshape(grid.shape[0] // side, side, grid.shape[1] // side, side).any(axis=(1, 3))
        bounds[side] = int(squares.sum()) * side * side

    field = open_slide(image).read_all()
    single = _exact_function(_engines_for(model), stride, "float32")
    field_cells = ((field.shape[0] - 32) // stride + 1) * ((field.shape[1] - 32) // stride + 1)
    warm_up(model, stride)

    def run_single():
        for _ in range(max(1, round(tissue / field_cells))):
            single(field[None]).numpy()

    def run_engine():
        for block in padded:
            single(block).numpy()

    def run_reading():
        for box in blocks_to_read:
            reader.block(*box)

    def run_engine_reading():
        thread = threading.Thread(target=run_reading)
        thread.start()
        run_engine()
        thread.join()

    configs = {
        "single": run_single, "engine": run_engine, "engine + reading": run_engine_reading,
        "reading": run_reading, "compute_slide_array": lambda: compute_slide_array(plan, model),
    }
    for run in configs.values():  # warm: traced, kernels made, file in the page cache
        run()
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(max(1, args.rounds)):
        for key, run in configs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_cell = med["single"] / (max(1, round(tissue / field_cells)) * field_cells)

    print(f"slide {slide.width}x{slide.height} px, {tissue} tissue cells, {len(tiles)} engine tiles, "
          f"{len(blocks_to_read)} read blocks ({sum(b[2] * b[3] for b in blocks_to_read) / 1e6:.1f} Mpx)")
    print(f"cells computed per tissue cell: {computed / tissue:.3f}  (exact cover by 8-cell squares "
          f"{bounds[8] / tissue:.3f}, by 16-cell squares {bounds[16] / tissue:.3f})")
    print(f"single pass: {1e6 * per_cell:.2f} us per cell (medians of {args.rounds} alternated rounds)")
    for key in ("engine", "engine + reading", "reading", "compute_slide_array"):
        ratio = med[key] / tissue / per_cell
        print(f"  {key:<22} {med[key]:6.3f} s   {ratio:5.2f}x the single pass per tissue cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())

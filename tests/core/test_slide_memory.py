"""Memory stays bounded on a slide far larger than what it may cost.

A 30,000 x 30,000 px JPEG-tiled pyramid is 2.7 GB decoded. A fresh Python process opens it,
reads a thumbnail, reads random 512 x 512 regions on every level, detects tissue, computes the
heatmap of a 2000 x 2000 px region into a .zarr store and renders a downsampled overlay export;
its peak resident set (VmHWM, or ru_maxrss where /proc is missing) may grow by a fraction of the
decoded size only. A code path that decodes the whole slide, or a whole level 0 row of tiles
into one array, would blow through the bound. This is a memory bound, not a timing threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from slide_factory import tissue_blocks, write_jpeg_tile_slide

SIDE = 30_000
DECODED_MB = SIDE * SIDE * 3 / 2**20
"""Level 0 decoded as RGB: 2575 MiB (2.7 GB)."""

BOUND_MB = 800
"""Peak RSS growth allowed for the whole sequence, TensorFlow and the model included."""

SLIDE_READING_BOUND_MB = 300
"""Peak RSS growth allowed before TensorFlow is imported (opening, thumbnail, regions, tissue)."""

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, resource, sys
import numpy as np

def peak_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

path, region, out = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3]
base = peak_mb()
steps, facts = {}, {}

from viewer.slide import open_slide
slide = open_slide(path)
facts["backend"], facts["levels"] = slide.backend, len(slide.levels)
steps["open"] = peak_mb()

thumb = slide.thumbnail(1024)
facts["thumbnail"] = list(thumb.shape)
steps["thumbnail"] = peak_mb()

rng = np.random.default_rng(0)
means = []
for level, info in enumerate(slide.levels):
    for _ in range(6):
        x = int(rng.integers(0, max(1, info.width - 512)))
        y = int(rng.integers(0, max(1, info.height - 512)))
        pixels = slide.read_region(level, x, y, 512, 512)
        assert pixels.shape == (512, 512, 3) and pixels.dtype == np.uint8
        means.append(float(pixels.mean()))
facts["region_means"] = [min(means), max(means)]
steps["regions"] = peak_mb()

from viewer.slide.tissue import detect_tissue
facts["tissue_fraction"] = float(detect_tissue(slide).fraction)
steps["tissue"] = peak_mb()
facts["tensorflow_before_heatmap"] = "tensorflow" in sys.modules

from viewer.heatmap.slide_run import SlideHeatmapOptions, open_store_for, plan_slide_heatmap, run_to_store
from viewer.model import bundled_model_path, load_model
model_path = bundled_model_path()
plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions(region=region))
model = load_model(model_path)
store, _resumed = open_store_for(plan, os.path.join(out, "heatmap.zarr"))
for _ in run_to_store(plan, model, store):
    pass
done = store.done_mask()
probabilities = store.read(slice(0, plan.shape[0]), slice(0, plan.shape[1]))
facts["heatmap"] = {"shape": list(plan.shape), "chunks_done": int(done.sum()), "chunks": int(done.size),
                    "tissue_cells": plan.tissue_cells, "finite_cells": int(np.isfinite(probabilities).sum())}
steps["heatmap"] = peak_mb()

try:
    from viewer.export.figure import ExportSettings, export_overlay
    from viewer.heatmap.data import StoreHeatmap
    from viewer.overlay import OverlayStyle
except ImportError:
    facts["export"] = None  # no whole-slide export in this version: step skipped
else:
    target = os.path.join(out, "overview.tif")
    result = export_overlay(slide, StoreHeatmap(store), None, OverlayStyle(), target, ExportSettings(downsample=8))
    facts["export"] = {"size": list(result.size), "levels": result.levels, "bytes": os.path.getsize(target)}
    steps["export"] = peak_mb()

print("RESULT " + json.dumps({"base_mb": base, "steps": steps, "facts": facts}), flush=True)
"""


def _mixed_region(block: int = 4096) -> tuple[int, int, int, int]:
    """A 2000 x 2000 px region across a tissue edge of the synthetic slide (tissue and glass)."""
    blocks = tissue_blocks(SIDE, SIDE, block=block)
    rows, cols = blocks.shape
    for r in range(1, rows):
        for c in range(1, cols):
            if r * block + 1000 <= SIDE and c * block + 1000 <= SIDE and 1 <= blocks[r - 1 : r + 1, c - 1 : c + 1].sum() <= 3:
                return c * block - 1000, r * block - 1000, 2000, 2000
    raise AssertionError("the synthetic slide has no tissue edge")


@pytest.mark.slow
def test_peak_memory_stays_far_below_the_decoded_slide(tmp_path: Path) -> None:
    slide = write_jpeg_tile_slide(tmp_path / "huge.tif", SIDE, SIDE, mpp=0.25)
    region = _mixed_region()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HISTOVIEWER_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(slide), json.dumps(region), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[0][len("RESULT "):])
    base, steps, facts = result["base_mb"], result["steps"], result["facts"]
    added = {name: peak - base for name, peak in steps.items()}
    print(f"\npeak RSS added per step (cumulative, MB): {json.dumps({k: round(v) for k, v in added.items()})}; "
          f"base {base:.0f} MB; slide decoded {DECODED_MB:.0f} MB; facts {json.dumps(facts)}")

    # The work really happened on the big slide, through the tiled reader.
    assert facts["backend"] == "tiff" and facts["levels"] == 6
    assert facts["thumbnail"] == [1024, 1024, 3]
    assert facts["region_means"][0] < 230 < facts["region_means"][1]  # tissue and glass were read
    assert 0.25 < facts["tissue_fraction"] < 0.55
    assert not facts["tensorflow_before_heatmap"]
    heatmap = facts["heatmap"]
    assert heatmap["shape"] == [247, 247]  # (2000 - 32) // 8 + 1
    assert heatmap["chunks_done"] == heatmap["chunks"] > 0
    assert 0 < heatmap["tissue_cells"] < 247 * 247  # across the tissue edge: some cells skipped
    assert heatmap["finite_cells"] == heatmap["tissue_cells"]
    if facts["export"] is not None:
        assert facts["export"]["size"] == [SIDE // 8, SIDE // 8] and facts["export"]["bytes"] > 0

    # The bounds: reading stays small; everything, TensorFlow included, stays far below 2.7 GB.
    reading = max(added[name] for name in ("open", "thumbnail", "regions", "tissue"))
    assert reading < SLIDE_READING_BOUND_MB, f"reading the slide added {reading:.0f} MB of peak RSS"
    assert max(added.values()) < BOUND_MB, f"peak RSS grew by {max(added.values()):.0f} MB ({added})"
    assert max(added.values()) < DECODED_MB / 3

"""Transient memory of one engine call per tile shape: what decides the engine's tile sizes.

    python benchmarks/tile_memory.py

For each precision and block shape (the bulk and slide tiles of ``viewer.heatmap.engine``, and
the whole 1360 x 1024 field), a fresh process traces the network on a small block, then runs the
block three times; printed is its peak resident set (VmHWM, reset through
``/proc/self/clear_refs``) above what it held before. Linux only. Baseline in the same run: the
float32 slide tile, the one the slide memory test (tests/core/test_slide_memory.py) is sized for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHAPES = (
    ("float32", 536, 792, "float32 slide tile (512 x 768 px + halo)"),
    ("float32", 1048, 1432, "float32 bulk tile (1024 x 1408 px + halo)"),
    ("float32", 1048, 1368, "float32, one 1360 x 1024 field, padded"),
    ("bfloat16", 1048, 1048, "bfloat16 slide tile (1024 x 1024 px + halo)"),
    ("bfloat16", 1496, 1496, "bfloat16 bulk tile (1472 x 1472 px + halo)"),
)

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from viewer.heatmap.engine import _engines_for, _exact_function
from viewer.model import load_model

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024

precision, h, w = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fn = _exact_function(_engines_for(load_model()), 8, precision)
fn(np.zeros((1, 88, 88, 3), np.uint8)).numpy()
block = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
for _ in range(3):
    fn(block).numpy()
print(f"{status('VmHWM') - base:.0f}")
"""


def main() -> int:
    if not Path("/proc/self/clear_refs").exists():
        print("tile_memory: skipped, it needs Linux's /proc/self/clear_refs")
        return 0
    from viewer.heatmap.precision import bfloat16_support

    bf16, why = bfloat16_support()
    results = []
    for precision, h, w, label in SHAPES:
        if precision == "bfloat16" and not bf16:
            results.append((label, None))
            continue
        out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), precision, str(h), str(w)],
                             capture_output=True, text=True, check=True)
        results.append((label, float(out.stdout.strip().splitlines()[-1])))
    base = results[0][1]
    print(f"{'block':<48} {'peak RSS added':>15} {'vs float32 slide tile':>22}")
    for label, mb in results:
        if mb is None:
            print(f"{label:<48} {'n/a (' + why + ')':>15}")
        else:
            print(f"{label:<48} {mb:>12.0f} MB {mb / base:>21.2f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

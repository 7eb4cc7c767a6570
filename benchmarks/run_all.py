"""Run every benchmark in this folder, one after the other: ``python benchmarks/run_all.py``.

Each benchmark measures its own baseline in the same run and prints ratios, because timings on
a shared 2-core machine are noisy. Every ``*.py`` here except this file runs (in name order):
gui_memory, gui_responsiveness, gui_startup, heatmap and wsi (whole-slide goals; its first run
writes a 380 MB synthetic slide to benchmarks/results/, later runs reuse it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"run_all.py", "__init__.py"} and not p.name.startswith("_"))
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

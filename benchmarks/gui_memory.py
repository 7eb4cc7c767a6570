"""Memory of the viewer over 50 image opens and closes: does anything leak per image?

Opens 50 images one after the other in one MainWindow (the 25 BreCaHAD images twice if the
subset is present, else 50 distinct synthetic 1360 x 1024 TIFFs), runs the heatmap on each
(unless --no-heatmap), exports nothing, and closes each image (File › Close Image) before
opening the next. Reports the process RSS after the first image and the growth after the
50th. Bound: growth < 60 MB (one 1360 x 1024 image with its display copies is ~12 MB, so
this allows no more than a few images' worth of allocator slack, and no per-image leak).

Usage: python benchmarks/gui_memory.py [--count 50] [--no-heatmap]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_IMAGES = REPO.parent / "shared" / "data" / "brecahad-subset" / "images"
BOUND_MB = 60.0


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc; falls back to the peak on other systems)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def images(count: int) -> tuple[list[Path], str]:
    real = sorted(SHARED_IMAGES.glob("*.tif")) if SHARED_IMAGES.is_dir() else []
    if real:
        return [real[i % len(real)] for i in range(count)], f"{len(real)} BreCaHAD images, cycled"
    import tifffile

    folder = Path(tempfile.mkdtemp(prefix="histoviewer-bench-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = np.clip(rng.normal((232, 178, 204), 20, (1024, 1360, 3)), 0, 255).astype(np.uint8)
        path = folder / f"synthetic_{i:02d}.tif"
        tifffile.imwrite(path, image, photometric="rgb")
        paths.append(path)
    return paths, "synthetic 1360x1024 images (BreCaHAD subset not found)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--no-heatmap", action="store_true")
    args, _unknown = parser.parse_known_args()  # run_all.py passes its arguments to every benchmark

    from PySide6.QtCore import QSettings

    from viewer.gui.app import create_application
    from viewer.gui.wait import wait_for

    app = create_application()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      tempfile.mkdtemp(prefix="histoviewer-bench-settings-"))
    from viewer.gui.main_window import MainWindow
    from viewer.gui.settings import Settings
    from viewer.model import build_convnet, bundled_model_path

    heatmap = not args.no_heatmap
    Settings().set_auto_run_heatmap(heatmap)
    model = None
    if heatmap and not bundled_model_path().is_file():
        model = str(Path(tempfile.mkdtemp(prefix="histoviewer-bench-")) / "random.keras")
        build_convnet(seed=0).save(model)
    paths, kind = images(args.count)
    window = MainWindow(model_path=model)
    window.show()
    if heatmap:
        window.start()
        wait_for(window.model_ready)

    samples = []
    started = time.perf_counter()
    for number, path in enumerate(paths, start=1):
        window.open_image(path)
        wait_for(window.heatmap_finished if heatmap else window.image_opened)
        app.processEvents()
        window.close_image()
        app.processEvents()
        samples.append(rss_mb())
        if number == 1 or number % 10 == 0:
            print(f"after image {number:3d}: RSS {samples[-1]:7.1f} MB", flush=True)
    elapsed = time.perf_counter() - started
    growth = samples[-1] - samples[0]
    # A leak grows steadily; allocator noise does not: fit a line to the second half.
    half = np.array(samples[len(samples) // 2:])
    slope = np.polyfit(np.arange(len(half)), half, 1)[0] if len(half) > 2 else 0.0
    print(f"{len(paths)} images ({kind}), heatmap {'on' if heatmap else 'off'}, {elapsed:.0f} s")
    print(f"RSS after first image {samples[0]:.1f} MB, after last {samples[-1]:.1f} MB, "
          f"peak {max(samples):.1f} MB")
    print(f"growth {growth:+.1f} MB (bound {BOUND_MB:.0f} MB: {'OK' if growth < BOUND_MB else 'EXCEEDED'}); "
          f"trend over the second half {slope:+.2f} MB/image")
    window.close()
    return 0 if growth < BOUND_MB else 1


if __name__ == "__main__":
    sys.exit(main())

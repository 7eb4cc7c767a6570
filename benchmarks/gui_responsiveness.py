"""Worst event-loop stall of the viewer while the heatmap runs, against the idle loop.

A 5 ms QTimer records the gap between its ticks; any gap well above 5 ms is time the main
thread could not react to the user. Meanwhile a 30 Hz driver pans and zooms the view (what a
user does while the heatmap paints), so painting costs are included. Phases, in one process:

  idle      image open, no heatmap running                    (baseline)
  heatmap   N full heatmap runs on the same image             (what we measure)

Usage: python benchmarks/gui_responsiveness.py [--runs 3] [--image IMAGE.tif]
Uses the first BreCaHAD image in ../shared/data/brecahad-subset if present, else a synthetic
1360 x 1024 image, and the bundled model if present, else a random one (same cost).
Target: worst stall during the heatmap < 50 ms.
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
TARGET_MS = 50.0


def isolate_settings() -> None:
    """Throw-away settings, so the benchmark never touches the user's."""
    from PySide6.QtCore import QSettings

    folder = tempfile.mkdtemp(prefix="histoviewer-bench-settings-")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, folder)


def pick_image(given: str | None) -> tuple[Path, str]:
    if given:
        return Path(given), "given image"
    real = sorted(SHARED_IMAGES.glob("*.tif")) if SHARED_IMAGES.is_dir() else []
    if real:
        return real[0], "BreCaHAD image"
    import tifffile

    rng = np.random.default_rng(0)
    image = np.full((1024, 1360, 3), (232, 178, 204), np.uint8)
    yy, xx = np.mgrid[0:1024, 0:1360]
    for x, y in rng.uniform(0, 1, (300, 2)) * (1360, 1024):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 50] = (95, 45, 125)
    path = Path(tempfile.mkdtemp(prefix="histoviewer-bench-")) / "synthetic.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    return path, "synthetic image (BreCaHAD subset not found)"


def pick_model() -> tuple[str | None, str]:
    from viewer.model import build_convnet, bundled_model_path

    if bundled_model_path().is_file():
        return None, "bundled model"
    path = Path(tempfile.mkdtemp(prefix="histoviewer-bench-")) / "random.keras"
    build_convnet(seed=0).save(path)
    return str(path), "random model (bundled model not found)"


class GapRecorder:
    """Max and percentiles of the gaps between ticks of a 5 ms timer."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer(interval=5, timerType=Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.array(self.gaps) * 1000

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now


def user_driver(window):
    """30 Hz pans and zooms, like a user exploring while the heatmap paints."""
    from PySide6.QtCore import QTimer

    steps = [1.1, 1.1, 1 / 1.1, 1 / 1.1]
    state = {"i": 0}

    def step():
        state["i"] += 1
        window.canvas.zoom_by(steps[state["i"] % 4])
        window.canvas.view.translateBy(x=5 if state["i"] % 8 < 4 else -5)
        window._show_cursor(600.5, 500.5)  # the status-bar readout path

    timer = QTimer(interval=33)
    timer.timeout.connect(step)
    return timer


def summary(name: str, gaps: np.ndarray) -> str:
    return (f"{name:8s} ticks {len(gaps):6d}  max {gaps.max():6.1f} ms  p99 {np.percentile(gaps, 99):5.1f} ms  "
            f"median {np.median(gaps):4.1f} ms  gaps>50ms {int((gaps > 50).sum())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image")
    args, _unknown = parser.parse_known_args()  # run_all.py passes its arguments to every benchmark

    from viewer.gui.app import create_application
    from viewer.gui.wait import wait_for

    app = create_application()
    isolate_settings()
    from viewer.gui.main_window import MainWindow
    from viewer.gui.settings import Settings

    Settings().set_auto_run_heatmap(False)
    image, image_kind = pick_image(args.image)
    model, model_kind = pick_model()
    window = MainWindow(model_path=model)
    window.resize(1280, 860)
    window.show()
    window.start()
    wait_for(window.model_ready)
    window.open_image(image)
    wait_for(window.image_opened)
    print(f"image: {image.name} ({image_kind}); model: {model_kind}; Qt platform: {app.platformName()}")

    recorder, driver = GapRecorder(), user_driver(window)
    driver.start()
    recorder.start()
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(3000, loop.quit)
    loop.exec()
    idle = recorder.stop()

    run_gaps, durations = [], []
    for _ in range(args.runs):
        recorder.start()
        started = time.perf_counter()
        window.run_heatmap()
        completed = wait_for(window.heatmap_finished)[0]
        durations.append(time.perf_counter() - started)
        run_gaps.append(recorder.stop())
        if not completed:
            sys.exit("heatmap did not complete")
    driver.stop()
    busy = np.concatenate(run_gaps)
    for number, gaps in enumerate(run_gaps, start=1):
        print(summary(f"run {number}", gaps))
    print(summary("idle", idle))
    print(summary("heatmap", busy))
    print(f"heatmap runs: {', '.join(f'{d:.2f}' for d in durations)} s "
          f"({len(window.heatmap.ravel()):,} cells each)")
    print(f"worst stall during heatmap: {busy.max():.1f} ms (idle baseline {idle.max():.1f} ms, "
          f"ratio {busy.max() / max(idle.max(), 1e-9):.1f}x); target < {TARGET_MS:.0f} ms: "
          f"{'OK' if busy.max() < TARGET_MS else 'MISSED'}")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

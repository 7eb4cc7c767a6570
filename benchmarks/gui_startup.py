"""Time from launching `histoviewer IMAGE` to its window, to the model being ready, and to
the first complete heatmap, against two baselines measured in the same run:

  bare Qt window   python + PySide6 + an empty QMainWindow shown   (floor for any Qt app)
  import TF        python -c "import tensorflow"                    (floor for model-ready)

Each is a fresh process, timed from spawn to a line it prints; median of --repeat runs.
The viewer's child also reports whether TensorFlow was already imported when the window
appeared (it must not be). Usage: python benchmarks/gui_startup.py [--repeat 3] [--image IMG]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_IMAGES = REPO.parent / "shared" / "data" / "brecahad-subset" / "images"

BARE_QT = r"""
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
w = QMainWindow(); w.resize(1280, 860); w.show()
QTimer.singleShot(0, lambda: (print("window", flush=True), app.quit()))
app.exec()
"""

IMPORT_TF = "import tensorflow; print('imported', flush=True)"

VIEWER = r"""
import sys
from PySide6.QtCore import QTimer
from viewer.gui import app as gui_app
from viewer.gui.main_window import MainWindow

original_show = MainWindow.show
def show(self):
    original_show(self)
    tf = "tensorflow" in sys.modules
    # singleShot(0) fires once the event loop runs, i.e. after the window was first shown.
    QTimer.singleShot(0, lambda: print("window tf_imported=%s" % tf, flush=True))
    self.model_ready.connect(lambda: print("model", flush=True))
    self.heatmap_finished.connect(lambda ok: (print("heatmap", ok, flush=True), self.close()))
    self.open_failed.connect(lambda m: (print("failed", m, flush=True), self.close()))
MainWindow.show = show
sys.exit(gui_app.run_gui(sys.argv[1]))
"""


def timed_lines(code: str, *args: str, env: dict[str, str]) -> dict[str, float]:
    """Run ``python -c code``; seconds from spawn to each output line's first word."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    seen: dict[str, float] = {}
    for line in proc.stdout:
        seen.setdefault(line.split()[0], time.perf_counter() - start)
        seen.setdefault("_" + line.split()[0], line.strip())  # keep the text too
    proc.wait(timeout=600)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image")
    args, _unknown = parser.parse_known_args()  # run_all.py passes its arguments to every benchmark

    image = args.image
    if image is None:
        real = sorted(SHARED_IMAGES.glob("*.tif")) if SHARED_IMAGES.is_dir() else []
        if not real:
            sys.exit("no image: pass --image (the BreCaHAD subset was not found)")
        image = str(real[0])
    env = dict(os.environ)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    # Fresh, empty settings (auto-run on by default) so nothing from a previous session counts.
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="histoviewer-bench-config-")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"

    bare, tf, window, model, heatmap = [], [], [], [], []
    tf_at_window = []
    for _ in range(args.repeat):
        bare.append(timed_lines(BARE_QT, env=env)["window"])
        tf.append(timed_lines(IMPORT_TF, env=env)["imported"])
        seen = timed_lines(VIEWER, image, env=env)
        if "heatmap" not in seen:
            sys.exit(f"the viewer did not finish a heatmap: {seen}")
        window.append(seen["window"])
        model.append(seen["model"])
        heatmap.append(seen["heatmap"])
        tf_at_window.append("tf_imported=True" in seen["_window"])

    med = statistics.median
    print(f"platform: {env.get('QT_QPA_PLATFORM', 'default')}; image: {Path(image).name}; runs: {args.repeat} (median)")
    print(f"bare Qt window          {med(bare):6.2f} s")
    print(f"import tensorflow       {med(tf):6.2f} s")
    print(f"histoviewer window      {med(window):6.2f} s   {med(window) / med(bare):4.1f}x bare Qt window")
    print(f"histoviewer model ready {med(model):6.2f} s   {med(model) / med(tf):4.1f}x import tensorflow")
    print(f"histoviewer heatmap done{med(heatmap):6.2f} s")
    print(f"TensorFlow imported before the window appeared: {'YES (bad)' if any(tf_at_window) else 'no'}")
    return 1 if any(tf_at_window) else 0


if __name__ == "__main__":
    sys.exit(main())

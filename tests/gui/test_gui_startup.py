"""`histoviewer` shows its window before TensorFlow is imported (a fresh process is needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys
from PySide6.QtCore import QTimer
from viewer.gui import app as gui_app
from viewer.gui.main_window import MainWindow

shown = []
original_show = MainWindow.show
def show(self):
    original_show(self)
    shown.append("tensorflow" in sys.modules or "keras" in sys.modules)
    # Report, then quit before the model loader finishes its (slow) import.
    QTimer.singleShot(0, lambda: (print("TF_AT_SHOW", shown[0], flush=True), self.close()))
MainWindow.show = show
sys.exit(gui_app.run_gui(sys.argv[1] if len(sys.argv) > 1 else None))
"""


def test_window_appears_before_tensorflow_is_imported(tmp_path: Path, small_image: Path) -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"),
               HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", CHILD, str(small_image)], capture_output=True, text=True,
                            timeout=120, env=env, cwd=Path(__file__).resolve().parents[2])
    assert "TF_AT_SHOW False" in result.stdout, result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


EMITS = r"""
import sys
import viewer.gui.main_window  # applies the work-arounds for the Qt bindings
from PySide6.QtCore import QObject, Signal

class Sender(QObject):
    changed = Signal(object)

sender = Sender()
sender.changed.connect(lambda value: None)
for i in range(50_000):  # PySide6 6.12.0 alone aborts ("bool_dealloc") long before this
    sender.changed.emit(i)
print("survived", flush=True)
"""


def test_many_signal_emits_do_not_crash_the_interpreter(tmp_path: Path) -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", EMITS], capture_output=True, text=True, timeout=120, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]


def test_started_with_a_file_the_model_loads_after_the_image_and_the_heatmap_waits_for_it(
        qtbot, make_window, small_image) -> None:
    """The model load starts a little after the image (so the first view comes first); the
    heatmap that runs on open waits for it instead of reporting that there is no model."""
    window = make_window(auto_run=True)
    window.model = None  # make_window pre-loads one to save time; start as a user does
    with qtbot.waitSignal(window.heatmap_finished, timeout=120_000) as done:
        window.start(str(small_image))
        assert window.model_controller.loading  # counts as loading before the work starts
    assert done.args == [True]
    assert window.model is not None and window.heatmap is not None

"""``histoviewer [IMAGE]``: create the application, show the window, then start the work.

Only Qt, numpy and pyqtgraph are imported before the window appears (superqt on first use);
TensorFlow is imported by the model-loading worker afterwards, so the window shows in well
under a second.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from viewer import __version__
from viewer.gui import startup_probe
from viewer.gui.icon import app_icon
from viewer.gui.main_window import APP_NAME, MainWindow
from viewer.gui.settings import APPLICATION, ORGANISATION
from viewer.gui.worker import wait_for_workers

FIRST_VIEW_ENV = "HISTOVIEWER_PRINT_FIRST_VIEW"
"""When set (to anything but empty), print ``first-view`` on stdout once the slide's coarsest
tiles have been painted: benchmarks/wsi.py times ``histoviewer SLIDE`` from launch to that line."""


def create_application(argv: list[str] | None = None) -> QApplication:
    """The QApplication with names (for QSettings), version and icon set."""
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName(APP_NAME)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("histoviewer")  # matches resources/histoviewer.desktop
    app.setWindowIcon(app_icon())
    return app


def _report_internal_error(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    # An exception in a slot must not vanish (or kill the session): print it and say so.
    traceback.print_exception(kind, value, tb)
    if kind is KeyboardInterrupt:
        QApplication.quit()
        return
    first = str(value).splitlines()[0] if str(value) else ""
    QMessageBox.critical(
        None, "Internal error",
        f"{kind.__name__}: {first}\n\nThis is a bug in HistoViewer; the details are printed in the terminal. "
        "Please report it. Save your work, then restart if the window misbehaves.",
    )


class _FirstViewReporter(QObject):
    """Watches the canvas' paints; after the first one that draws the whole coarsest level,
    prints ``first-view`` once (see :data:`FIRST_VIEW_ENV`)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._canvas = window.canvas
        self._canvas.viewport().installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint:
            layer = self._canvas.tile_layer
            coarsest = set(layer.coarsest_tiles)
            if coarsest and coarsest <= layer.shown_tiles():
                self._canvas.viewport().removeEventFilter(self)
                # Queued, so it prints once this paint has finished.
                QTimer.singleShot(0, lambda: print("first-view", flush=True))
        return False


def run_gui(image: str | None = None, *, annotations: str | None = None, model: str | None = None) -> int:
    """Show the main window, open ``image`` if given, and run until it closes; returns the exit code."""
    app = create_application()
    window = MainWindow(model_path=model)
    window.show()
    if os.environ.get(FIRST_VIEW_ENV):
        _FirstViewReporter(window)
    startup_probe.install(window, image)
    sys.excepthook = _report_internal_error
    # Start the model load and the file read once the event loop runs, so the window paints first.
    QTimer.singleShot(0, lambda: window.start(image, annotations))
    code = int(app.exec())
    # No worker thread may outlive the objects it signals (that crashes at interpreter exit).
    wait_for_workers()
    return code

"""Start-up milestones on stdout, for the bundle's smoke test (packaging/smoke_test.py).

A frozen bundle has no Python to patch from outside, so the window reports itself when
``HISTOVIEWER_STARTUP_PROBE`` is set: ``window`` once it is shown, ``components N`` (the
third-party components Help › About lists), ``model`` when the model is
loaded, ``heatmap True|False`` when the first heatmap of the opened image ends (or ``failed ...``
when the image cannot be opened); then it saves a screenshot of itself if the variable names a
``.png`` file (or, if it names a folder, window.png, about.png and shortcuts.png there: the
Help dialogs as the bundle draws them), and closes. Without an image it closes once the model
is ready. Unset: nothing.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMainWindow

from viewer import notices

PROBE_ENV = "HISTOVIEWER_STARTUP_PROBE"


def install(window: QMainWindow, image: str | None) -> None:
    """Report ``window``'s milestones if :data:`PROBE_ENV` is set."""
    value = os.environ.get(PROBE_ENV, "")
    if not value:
        return

    def say(*words: object) -> None:
        print(*words, flush=True)

    def finish() -> None:
        if value.lower().endswith(".png"):
            window.grab().save(value)
        elif os.path.isdir(value):
            _save_screenshots(window, value)
        window.close()

    # singleShot(0) fires once the event loop runs, i.e. after the window was first shown.
    QTimer.singleShot(0, lambda: say("window"))
    # What Help › About lists: in a bundle, only as complete as the metadata it carries.
    QTimer.singleShot(0, lambda: say("components", len(notices.components())))
    window.model_ready.connect(lambda: say("model"))
    if image:
        window.heatmap_finished.connect(lambda ok: (say("heatmap", ok), QTimer.singleShot(200, finish)))
        window.open_failed.connect(lambda message: (say("failed", message), finish()))
    else:
        window.model_ready.connect(lambda: QTimer.singleShot(200, finish))


def _save_screenshots(window: QMainWindow, folder: str) -> None:
    from viewer.gui.about import AboutDialog
    from viewer.gui.shortcuts_dialog import ShortcutsDialog

    window.grab().save(os.path.join(folder, "window.png"))
    for name, dialog in (("about", AboutDialog(None, window)), ("shortcuts", ShortcutsDialog(window))):
        dialog.show()
        dialog.grab().save(os.path.join(folder, f"{name}.png"))
        if name == "about":  # the licences tab too
            dialog.tabs.setCurrentIndex(dialog.tabs.count() - 1)
            dialog.grab().save(os.path.join(folder, "about_licences.png"))
        dialog.close()

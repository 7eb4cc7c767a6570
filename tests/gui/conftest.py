"""GUI test fixtures: offscreen Qt, isolated settings, recorded message boxes, tiny inputs.

Every test gets its own settings folder, so nothing reads or writes the user's settings, and
message boxes never block: they are recorded in ``dialogs_seen`` and unexpected ones fail the test.
"""

from __future__ import annotations

import json
import os

# Before any QApplication exists: tests never need (or open) a real display.
if not os.environ.get("QT_QPA_PLATFORM"):
    os.environ["QT_QPA_PLATFORM"] = "offscreen"

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QFileDialog, QMessageBox

from viewer.annotations import CLASSES


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path) -> Path:
    folder = tmp_path / "settings"
    folder.mkdir()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    return folder


@pytest.fixture(autouse=True)
def isolated_heatmap_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Whole-slide heatmap stores go to the test's folder, never the user's cache."""
    monkeypatch.setenv("HISTOVIEWER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "heatmaps"


class Dialogs:
    """Records message boxes and answers file dialogs with prepared paths."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str]] = []  # (kind, title, text)
        self.open_paths: list[str] = []
        self.save_paths: list[str] = []
        self.answer = QMessageBox.StandardButton.Yes

    def expect(self, kind: str) -> tuple[str, str]:
        """Pop the oldest message of ``kind``; fails if there is none."""
        for i, (seen, title, text) in enumerate(self.messages):
            if seen == kind:
                del self.messages[i]
                return title, text
        raise AssertionError(f"no {kind} message box was shown (saw {self.messages})")


@pytest.fixture(autouse=True)
def dialogs_seen(monkeypatch: pytest.MonkeyPatch):
    seen = Dialogs()

    def box(kind):
        def show(_parent, title, text, *args, **kwargs):
            seen.messages.append((kind, title, text))
            return seen.answer if kind == "question" else QMessageBox.StandardButton.Ok
        return staticmethod(show)

    for kind in ("warning", "critical", "question", "information"):
        monkeypatch.setattr(QMessageBox, kind, box(kind))
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (seen.open_paths.pop(0), "") if seen.open_paths else ("", "")))
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (seen.save_paths.pop(0), "") if seen.save_paths else ("", "")))
    yield seen
    assert not seen.messages, f"unexpected message boxes: {seen.messages}"


def write_image(path: Path, width: int, height: int, seed: int = 0, points: int = 5) -> Path:
    """A pink 'tissue' TIFF with dark 'nuclei', plus BreCaHAD ground truth beside images/."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (232, 178, 204)
    image += rng.integers(0, 12, image.shape, dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    coords = rng.uniform(0.1, 0.9, (points, 2))
    for x, y in coords * (width, height):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 36] = (90, 40, 120)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, photometric="rgb")
    truth = path.parent.parent / "groundTruth" / f"{path.stem}.json"
    truth.parent.mkdir(parents=True, exist_ok=True)
    data = {name: [] for name in CLASSES}
    data["tumor"] = [{"x": float(x), "y": float(y)} for x, y in coords[:-1]]
    data["non_tumor"] = [{"x": float(coords[-1, 0]), "y": float(coords[-1, 1])}]
    truth.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    """200 x 160: one heatmap tile."""
    return write_image(tmp_path / "data" / "images" / "small.tif", 200, 160, seed=1)


@pytest.fixture
def tiled_image(tmp_path: Path) -> Path:
    """900 x 700: several heatmap tiles, still quick with a tiny model."""
    return write_image(tmp_path / "data" / "images" / "tiled.tif", 900, 700, seed=2)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from viewer.model import build_convnet

    path = tmp_path_factory.mktemp("model") / "m.keras"
    build_convnet(seed=0).save(path)
    return path


@pytest.fixture(scope="session")
def loaded_model(model_file: Path):
    from viewer.model import load_model

    return load_model(model_file)


@pytest.fixture
def make_window(qtbot, model_file: Path, loaded_model):
    """Factory for a shown MainWindow whose model is ``model_file`` (already loaded, to save time).

    ``auto_run`` sets the "Run Heatmap on Open" setting before the window reads it;
    ``load_model=True`` loads it through the real background loader instead.
    """
    from viewer.gui.main_window import MainWindow
    from viewer.gui.settings import Settings

    def make(auto_run: bool | None = False, load_model: bool = False) -> MainWindow:
        if auto_run is not None:  # None: keep what an earlier window saved
            Settings().set_auto_run_heatmap(auto_run)
        window = MainWindow(model_path=str(model_file))
        qtbot.addWidget(window)  # closed at teardown; closeEvent joins the worker threads
        window.show()
        qtbot.waitExposed(window)
        if load_model:
            with qtbot.waitSignal(window.model_ready, timeout=60_000):
                window.start()
        else:
            window.model, window.model_path = loaded_model, str(model_file)
        return window

    return make


@pytest.fixture
def open_and_wait(qtbot):
    def run(window, path: Path, annotations: Path | None = None) -> None:
        with qtbot.waitSignal(window.image_opened, timeout=20_000):
            window.open_image(path, annotations)

    return run


@pytest.fixture
def run_heatmap(qtbot):
    """Run the heatmap through Analysis › Run Heatmap and wait until it completes."""

    def run(window) -> None:
        with qtbot.waitSignal(window.heatmap_finished, timeout=60_000) as blocker:
            window.actions.run_heatmap.trigger()
        assert blocker.args == [True]

    return run


@pytest.fixture
def export_to(qtbot, dialogs_seen):
    """Trigger an export action, answer its save dialog with ``target`` and wait until written."""

    def export(window, action, target: Path, timeout: int = 30_000) -> None:
        dialogs_seen.save_paths.append(str(target))
        with qtbot.waitSignal(window.exported, timeout=timeout):
            action.trigger()

    return export


def _pause_after_first(monkeypatch: pytest.MonkeyPatch, module, name: str):
    """Replace generator function ``module.name`` by one that pauses after its first item
    until the returned Event is set (at most 60 s). Yields the Event, set again at teardown so
    no worker thread is left waiting."""
    import threading

    gate = threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        items = real(*args, **kwargs)
        try:
            for number, item in enumerate(items):
                yield item
                if number == 0:
                    gate.wait(60)
        finally:
            items.close()

    monkeypatch.setattr(module, name, paused)
    yield gate
    gate.set()


@pytest.fixture
def gated_engine(monkeypatch: pytest.MonkeyPatch):
    """Make every heatmap run pause after its first tile until the test sets the returned Event.

    Cancel and stale-result tests then know a run is still going when they act, however fast
    the machine is (no sleeps, no races). Tests must set the Event before their window closes:
    closing joins the worker threads, and pytest-qt closes windows before this fixture ends."""
    import viewer.heatmap.slide_run as engine_user  # the viewer drains the engine through it

    yield from _pause_after_first(monkeypatch, engine_user, "iter_heatmap_tiles")


@pytest.fixture
def paused_after_first_chunk(monkeypatch: pytest.MonkeyPatch):
    """Make a whole-slide run into a store wait after it reports its first stored chunk until
    the test sets the returned Event, so a stop arrives before the engine goes further however
    fast the machine is (chunks computed by then and queued for writing are still stored)."""
    import viewer.heatmap.slide_run as slide_run  # the viewer's worker imports run_to_store from it

    yield from _pause_after_first(monkeypatch, slide_run, "run_to_store")

"""Help › Keyboard Shortcuts (made from the actions), Help › About (licences), and where the
export dialogs start."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QWidget

from viewer.gui.shortcuts_dialog import ShortcutsDialog, keys_text, shortcut_rows


def _table(dialog: ShortcutsDialog) -> list[tuple[str, str, str]]:
    t = dialog.table
    return [tuple(t.item(r, c).text() for c in range(3)) for r in range(t.rowCount())]


def test_shortcuts_lists_every_action_that_has_a_key(qtbot, make_window) -> None:
    window = make_window()
    dialog = ShortcutsDialog(window)
    qtbot.addWidget(dialog)
    rows = _table(dialog)
    assert rows == shortcut_rows(window)
    commands = {command: keys for _, command, keys in rows}
    with_keys = {a for a in window.findChildren(QAction) if keys_text(a)}
    assert len(rows) == len(with_keys)  # each action with a key once, none without
    assert commands["Open…"] == QKeySequence(QKeySequence.StandardKey.Open).toString(
        QKeySequence.SequenceFormat.NativeText)
    assert commands["Run Heatmap"] == "Ctrl+R" and commands["Heatmap"] == "H" and commands["Cancel"] == "Esc"
    assert commands["Fit to Window"] == "F, Ctrl+0" and commands["Overview"] == "O"
    menus = {menu for menu, _, _ in rows}
    assert {"File", "View", "Analysis", "Help"} <= menus


def test_a_new_action_appears_by_itself(qtbot, make_window) -> None:
    window = make_window()
    extra = QAction("&Measure Distance", window, shortcut="M")
    window.menuBar().actions()[1].menu().addAction(extra)  # the View menu
    QWidget.addAction(window, QAction("Hidden Helper", window, shortcut="Ctrl+Shift+H"))
    rows = shortcut_rows(window)
    assert ("View", "Measure Distance", "M") in rows
    assert ("Window", "Hidden Helper", "Ctrl+Shift+H") in rows


def test_help_menu_opens_the_shortcuts(qtbot, make_window, monkeypatch) -> None:
    window = make_window()
    shown = []
    monkeypatch.setattr(ShortcutsDialog, "exec", lambda self: shown.append(self.table.rowCount()) or 0)
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.menu().title() == "&Help")
    assert window.actions.shortcuts in help_menu.actions()
    window.actions.shortcuts.trigger()
    assert shown and shown[0] > 10


def test_about_lists_third_party_licences(qtbot, make_window) -> None:
    from viewer.gui.about import AboutDialog

    dialog = AboutDialog(None, make_window())
    qtbot.addWidget(dialog)
    about = dialog.browser.toPlainText()
    assert "Research use only" in about and "CC BY 4.0" in about and "MIT" in about
    assert "Model card" in [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())]
    assert "held-out" in dialog.card.toPlainText().lower() or len(dialog.card.toPlainText()) > 500
    licences = dialog.licences.toPlainText()
    assert "PySide6_Essentials" in licences and "LGPL-3.0" in licences
    assert "openslide-bin" in licences and "LGPL-2.1" in licences and "download.qt.io" in licences


@pytest.fixture
def save_dialog_folders(monkeypatch: pytest.MonkeyPatch):
    """Record the folder each save dialog starts in, and answer with the next prepared path."""
    seen: list[str] = []
    answers: list[str] = []

    def fake(parent, title, suggested, *args, **kwargs):
        seen.append(str(Path(suggested).parent))
        return (answers.pop(0), "") if answers else ("", "")

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(fake))
    return seen, answers


def test_export_starts_in_the_image_folder_then_the_last_export_folder(
        qtbot, make_window, open_and_wait, save_dialog_folders, small_image: Path, tmp_path: Path) -> None:
    seen, answers = save_dialog_folders
    window = make_window()
    open_and_wait(window, small_image)
    window.actions.export_overlay.trigger()  # cancelled
    assert seen[-1] == str(small_image.parent)
    elsewhere = tmp_path / "figures"
    elsewhere.mkdir()
    answers.append(str(elsewhere / "fig.png"))
    with qtbot.waitSignal(window.exported, timeout=30_000):
        window.actions.export_overlay.trigger()
    window.actions.export_overlay.trigger()
    assert seen[-1] == str(elsewhere)  # the folder used last wins over the image's


def test_startup_probe_reports_and_saves_the_help_dialogs(qtbot, make_window, monkeypatch, tmp_path, capsys) -> None:
    """The bundle's smoke test reads these lines (a frozen program cannot be patched from outside)."""
    from viewer.gui import startup_probe

    monkeypatch.setenv(startup_probe.PROBE_ENV, str(tmp_path))
    window = make_window()
    startup_probe.install(window, None)
    window.model_ready.emit()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert "model" in capsys.readouterr().out.split()
    for name in ("window", "about", "about_licences", "shortcuts"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name

"""Help › Keyboard Shortcuts: a table made from the window's own actions, so it cannot go stale.

Every action reachable from the menu bar (in menu order, submenus included) that has a shortcut
is listed with the menu it lives in; actions with a shortcut that no menu shows (added to the
window only) come last under "Window". A new action with a shortcut appears here by itself.
"""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView, QDialog, QDialogButtonBox, QHeaderView, QLabel, QMainWindow, QMenu, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

MOUSE_NOTE = "Mouse: the wheel zooms around the cursor; drag to pan; drop a file on the window to open it."


def _plain(text: str) -> str:
    """Menu text as read: '&Open…' -> 'Open…' ('&&' stays a literal '&')."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&")


def keys_text(action: QAction) -> str:
    """The action's shortcuts as the platform writes them, e.g. 'Ctrl+O' or 'F, Ctrl+0'."""
    keys = [s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts()]
    return ", ".join(k for k in dict.fromkeys(keys) if k)


def shortcut_rows(window: QMainWindow) -> list[tuple[str, str, str]]:
    """(menu path, command, keys) for every action of ``window`` that has a shortcut."""
    rows: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def visit(menu: QMenu, path: str) -> None:
        for action in menu.actions():
            if action.isSeparator():
                continue
            submenu = action.menu()
            if submenu is not None:
                visit(submenu, f"{path} › {_plain(submenu.title())}")
                continue
            if id(action) in seen:
                continue
            seen.add(id(action))
            keys = keys_text(action)
            if keys:
                rows.append((path, _plain(action.text()), keys))

    for top in window.menuBar().actions():
        if top.menu() is not None:
            visit(top.menu(), _plain(top.menu().title()))
    # QWidget.actions() called unbound: MainWindow keeps its Actions in an attribute of that name.
    for action in QWidget.actions(window):
        if id(action) not in seen and keys_text(action):
            seen.add(id(action))
            rows.append(("Window", _plain(action.text()), keys_text(action)))
    return rows


class ShortcutsDialog(QDialog):
    def __init__(self, window: QMainWindow, parent: QWidget | None = None) -> None:
        super().__init__(parent or window)
        self.setWindowTitle("Keyboard Shortcuts")
        rows = shortcut_rows(window)
        self.table = QTableWidget(len(rows), 3)
        self.table.setHorizontalHeaderLabels(["Menu", "Command", "Keys"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(QLabel(MOUSE_NOTE))
        layout.addWidget(buttons)
        self.resize(560, min(720, 120 + 30 * len(rows)))

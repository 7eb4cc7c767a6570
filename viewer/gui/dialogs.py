"""File dialogs and message boxes, in one place so tests can replace them.

Save dialogs do not confirm overwrites themselves (native dialogs differ); we ask with a
QMessageBox and pass ``force=True`` to the core writers only after the user agreed.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from viewer.slide import IMAGE_SUFFIXES

IMAGE_FILTER = "Images ({});;All files (*)".format(" ".join(f"*{s}" for s in IMAGE_SUFFIXES))
JSON_FILTER = "BreCaHAD annotations (*.json);;All files (*)"
ANNOTATION_FILTER = "Annotations (*.json *.geojson);;BreCaHAD annotations (*.json);;QuPath GeoJSON (*.geojson);;All files (*)"
MODEL_FILTER = "Keras models (*.keras);;All files (*)"


def ask_open_path(parent: QWidget, title: str, folder: str, name_filter: str) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, title, folder, name_filter)
    return path or None


def ask_open_folder(parent: QWidget, title: str, folder: str) -> str | None:
    """Ask for a folder (a .zarr heatmap store is one)."""
    path = QFileDialog.getExistingDirectory(parent, title, folder)
    return path or None


def ask_save_path(parent: QWidget, title: str, suggested: str, name_filter: str,
                  suffix: str, also: tuple[str, ...] = ()) -> tuple[Path, bool] | None:
    """Ask where to save; returns (path, force) or None if the user cancelled.

    ``suffix`` is added when the name has none of the filter's endings; ``also`` lists
    sibling suffixes written alongside (a heatmap's .json sidecar) that count as overwrites.
    """
    name, _ = QFileDialog.getSaveFileName(
        parent, title, suggested, name_filter, options=QFileDialog.Option.DontConfirmOverwrite
    )
    if not name:
        return None
    path = Path(name)
    if not path.suffix:
        path = path.with_suffix(suffix)
    existing = [p for p in [path, *(path.with_suffix(s) for s in also)] if p.exists()]
    if not existing:
        return path, False
    names = ", ".join(p.name for p in existing)
    answer = QMessageBox.question(
        parent, "Replace file?",
        f"{names} already exist{'s' if len(existing) == 1 else ''} in {path.parent}.\nReplace {'it' if len(existing) == 1 else 'them'}?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
    )
    return (path, True) if answer == QMessageBox.StandardButton.Yes else None


def warn(parent: QWidget, title: str, message: str) -> None:
    """Show a one-line problem; the window stays as it was."""
    QMessageBox.warning(parent, title, message)

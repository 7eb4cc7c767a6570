"""Editing the annotations of the open image: undo, selection, saving, and nothing lost.

Every edit is an :class:`~viewer.gui.undo_commands.AnnotationEdit` on one ``QUndoStack``
(Ctrl+Z, Ctrl+Shift+Z). The stack's clean state is "as on disk": the window title shows ``*``
when it is not, and closing the window or replacing the image or its annotations asks Save /
Discard / Cancel. While there are unsaved edits they are written to a recovery file every few
seconds (atomically); saving or discarding removes it, and a recovery file found when an image
opens (the viewer did not close normally) is offered back. Saves are atomic, and the first save
over a dataset's ``groundTruth/`` file keeps the original beside it as ``.orig``.

The edits themselves are the Qt-free functions of :mod:`viewer.annotations.edits`; the mouse
and keyboard side is :mod:`viewer.gui.annotation_tools`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QStandardPaths, QTimer, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QMessageBox, QWidget

from viewer.annotations import (
    TUMOUR_CLASS,
    Annotations,
    Region,
    class_label,
    regions_sidecar_for,
    save_annotation_file,
)
from viewer.annotations import edits
from viewer.annotations.edits import Selection
from viewer.annotations.recovery import Recovery, find_recovery, list_recoveries, remove_recovery, write_recovery
from viewer.errors import InputError
from viewer.gui import dialogs
from viewer.gui.annotation_layer import MARKER_SIZE, AnnotationLayer
from viewer.gui.document import Document
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.status import StatusBar
from viewer.gui.undo_commands import AnnotationEdit

RECOVERY_INTERVAL_MS = 3000
"""Unsaved edits reach the recovery file at most this long after they are made."""
AGREEMENT_DELAY_MS = 400
"""The Agreement dock is recomputed at most this often while the user edits."""
UNDO_LIMIT = 1000
SAVE_FILTER = "BreCaHAD annotations (*.json);;QuPath GeoJSON (*.geojson);;All files (*)"
Button = QMessageBox.StandardButton


def recovery_folder() -> Path:
    """Where recovery files live (``HISTOVIEWER_CACHE_DIR`` overrides, as for the heatmap stores)."""
    override = os.environ.get("HISTOVIEWER_CACHE_DIR")
    if override:
        return Path(override) / "recovery"
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".local" / "share" / "histoviewer") / "recovery"


class AnnotationEditor(QObject):
    edited = Signal()
    """The annotations on screen changed (an edit, an undo or a redo)."""
    selection_changed = Signal()
    agreement_due = Signal()
    """Throttled ``edited``: time to recompute the agreement table."""
    saved = Signal(str)

    def __init__(self, window: QWidget, document: Document, layer: AnnotationLayer, layers_panel: LayersPanel,
                 status: StatusBar) -> None:
        super().__init__(window)
        self._window = window
        self._document = document
        self._layer = layer
        self._panel = layers_panel
        self._status = status
        self.undo_stack = QUndoStack(self)
        self.undo_stack.setUndoLimit(UNDO_LIMIT)
        self.undo_stack.cleanChanged.connect(self._on_clean_changed)
        self.selection = Selection()
        self.current_class = TUMOUR_CLASS
        self.save_path: Path | None = None
        """Where Save writes: the file the annotations came from, or the last Save As."""
        self.recovery_folder = recovery_folder()
        self._image: Path | None = None
        self._revision = 0
        self._written_revision: int | None = 0
        self._recovery_timer = QTimer(self, interval=RECOVERY_INTERVAL_MS)
        self._recovery_timer.timeout.connect(self.write_recovery_now)
        self._agreement_timer = QTimer(self, singleShot=True, interval=AGREEMENT_DELAY_MS)
        self._agreement_timer.timeout.connect(self.agreement_due)
        self._restore_next: Path | None = None

    # State ----------------------------------------------------------------------------------
    @property
    def annotations(self) -> Annotations | None:
        return self._document.annotations

    @property
    def size(self) -> tuple[int, int]:
        opened = self._document.opened
        return (opened.slide.width, opened.slide.height) if opened is not None else (0, 0)

    @property
    def is_dirty(self) -> bool:
        return not self.undo_stack.isClean()

    @property
    def has_image(self) -> bool:
        return self._document.opened is not None

    def reset(self) -> None:
        """The document has other annotations (an image opened or closed, a file loaded):
        they are the saved state; then offer a recovery of this image's unsaved edits if any."""
        self._agreement_timer.stop()
        # Reached only after Save or Discard: the previous image's recovery file has done its job
        # (clear() makes the stack clean, which removes it while _image is still that image).
        self.undo_stack.clear()
        if self._image is not None:
            remove_recovery(self.recovery_folder, self._image)
        opened = self._document.opened
        self._image = Path(opened.slide.path) if opened is not None else None
        self.selection = Selection()
        annotations = self.annotations
        self.save_path = annotations.source if annotations is not None else None
        self._written_revision = self._revision
        self._redraw()
        self._update_counts()
        if self._image is not None:
            self._offer_recovery()

    def show_state(self, annotations: Annotations, selection: Selection) -> None:
        """Put ``annotations`` on screen (the undo commands call this)."""
        self._document.annotations = annotations
        self.selection = selection
        self._revision += 1
        self._redraw()
        self._update_counts()
        self.edited.emit()
        self.selection_changed.emit()
        if not self._agreement_timer.isActive():
            self._agreement_timer.start()

    def set_selection(self, selection: Selection) -> None:
        self.selection = selection
        self._redraw()
        self.selection_changed.emit()

    def _redraw(self, annotations: Annotations | None = None) -> None:
        width, height = self.size
        self._layer.set_annotations(annotations or self.annotations, width, height, self.selection)

    def _update_counts(self) -> None:
        annotations = self.annotations
        if annotations is None or not self.has_image:
            self._panel.update_counts(None)
            return
        parts = [self.save_path.name if self.save_path else "not saved yet"]
        if self.save_path is not None and self.save_path.suffix.lower() != ".geojson" and annotations.regions:
            # BreCaHAD's layout has no regions: say where they are kept.
            parts[0] += f" (regions go to {regions_sidecar_for(self.save_path).name})"
        if annotations.notes and self.undo_stack.count() == 0:
            parts.append("; ".join(annotations.notes))
        self._panel.update_counts(annotations.counts(), " — ".join(parts), annotations.region_counts())

    def _on_clean_changed(self, clean: bool) -> None:
        self._window.setWindowModified(not clean)
        if clean:
            self._recovery_timer.stop()
            if self._image is not None:
                remove_recovery(self.recovery_folder, self._image)
        else:
            self._recovery_timer.start()

    # Edits ----------------------------------------------------------------------------------
    def _base(self) -> Annotations:
        """The annotations to edit (a new, empty set when the image has none)."""
        if self.annotations is not None:
            return self.annotations
        return Annotations.empty()

    def _push(self, text: str, after: Annotations, selection: Selection) -> None:
        self.undo_stack.push(AnnotationEdit(self, text, self._base(), after, self.selection, selection))

    def add_point(self, x: float, y: float, name: str | None = None) -> bool:
        """Add a point of ``name`` (default: the current class) at level-0 (x, y) on the image."""
        width, height = self.size
        if not self.has_image or not (0 <= x <= width and 0 <= y <= height):
            return False
        name = name or self.current_class
        after, selection = edits.add_points(self._base(), name, np.array([[x / width, y / height]]))
        self._push(f"Add {class_label(name)} Point", after, selection)
        return True

    def move_selection(self, dx: float, dy: float) -> None:
        if not self.selection or (dx == 0 and dy == 0):
            return
        after = edits.move(self._base(), self.selection, dx, dy, self.size)
        self._push(f"Move {self._describe(self.selection)}", after, self.selection)

    def preview_move(self, dx: float, dy: float) -> None:
        """Draw the selection moved by (dx, dy) without changing anything (while dragging)."""
        if self.selection:
            self._redraw(edits.move(self._base(), self.selection, dx, dy, self.size))

    def delete_selection(self) -> None:
        if not self.selection:
            return
        after = edits.delete(self._base(), self.selection)
        self._push(f"Delete {self._describe(self.selection)}", after, Selection())

    def reclass_selection(self, name: str) -> None:
        if not self.selection:
            return
        after, selection = edits.reclass(self._base(), self.selection, name)
        self._push(f"Make {self._describe(self.selection)} {class_label(name)}", after, selection)

    def add_region(self, vertices: np.ndarray, name: str | None = None) -> bool:
        """Add a polygon region (level-0 vertices); refused when it has no area."""
        name = name or self.current_class
        xy = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        if len(np.unique(xy, axis=0)) < 3:
            return False
        region = Region.polygon(name, xy)
        if region.area() <= 0:
            return False
        after, selection = edits.add_region(self._base(), region)
        self._push(f"Add {class_label(name)} Region", after, selection)
        return True

    @staticmethod
    def _describe(selection: Selection) -> str:
        points, regions = sum(len(i) for i in selection.points.values()), len(selection.regions)
        words = []
        if points:
            words.append(f"{points} Point{'s' if points != 1 else ''}")
        if regions:
            words.append(f"{regions} Region{'s' if regions != 1 else ''}")
        return " and ".join(words)

    # Selection ------------------------------------------------------------------------------
    def hit(self, x: float, y: float, pixels_per_screen_pixel: float) -> Selection:
        """The point under (x, y) (within a marker's radius on screen), else the region under it."""
        annotations = self.annotations
        if annotations is None:
            return Selection()
        width, height = self.size
        shown = self._layer.shown_classes()
        reach = (MARKER_SIZE / 2 + 3) * pixels_per_screen_pixel
        best: tuple[float, str, int] | None = None
        for name in annotations.classes:
            if name not in shown:
                continue
            xy = annotations.pixel_points(name, width, height)
            if not len(xy):
                continue
            d2 = (xy[:, 0] - x) ** 2 + (xy[:, 1] - y) ** 2
            k = int(np.argmin(d2))
            if d2[k] <= reach**2 and (best is None or d2[k] < best[0]):
                best = (float(d2[k]), name, k)
        if best is not None:
            return Selection.of({best[1]: [best[2]]})
        from viewer.annotations import points_in_rings

        for k in range(len(annotations.regions) - 1, -1, -1):  # the topmost (latest) first
            region = annotations.regions[k]
            if region.name in shown and points_in_rings(np.array([[x, y]]), region.rings)[0]:
                return Selection.of(regions=[k])
        return Selection()

    def select_rect(self, x0: float, y0: float, x1: float, y1: float, add: bool = False) -> None:
        if self.annotations is None:
            return
        rect = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        found = edits.points_in_rect(self.annotations, rect, self.size, self._layer.shown_classes())
        self.set_selection(self.selection.union(found) if add else found)

    def select_all(self) -> None:
        annotations = self.annotations
        if annotations is None:
            return
        shown = self._layer.shown_classes()
        self.set_selection(Selection.of(
            {n: range(len(annotations.normalised(n))) for n in annotations.classes if n in shown},
            [k for k, r in enumerate(annotations.regions) if r.name in shown]))

    # Saving ---------------------------------------------------------------------------------
    def save(self) -> bool:
        """Save to where the annotations came from (Save As when they are new); True if saved."""
        if self.annotations is None or not self.has_image:
            return True
        if self.save_path is None:
            return self.save_as()
        return self._save_to(self.save_path)

    def save_as(self) -> bool:
        if not self.has_image:
            return False
        slide = self._document.opened.slide
        if self.save_path is not None:
            suggested = str(self.save_path)
        else:  # whole slides go to QuPath; single fields keep BreCaHAD's layout
            suffix = ".geojson" if len(slide.native_levels) > 1 else ".json"
            suggested = str(Path(slide.path).with_suffix(suffix))
        answer = dialogs.ask_save_path(self._window, "Save Annotations As", suggested, SAVE_FILTER, ".json")
        if answer is None:
            return False
        return self._save_to(answer[0])

    def _save_to(self, path: Path) -> bool:
        annotations = self._base()
        try:
            report = save_annotation_file(annotations, path, self.size, force=True)
        except InputError as exc:
            dialogs.warn(self._window, "Cannot save annotations", f"{exc}. Your edits are still here, unsaved.")
            return False
        self.save_path = Path(path)
        self.undo_stack.setClean()
        remove_recovery(self.recovery_folder, self._image)
        self._update_counts()
        message = f"Saved {Path(path).name}" + ("; " + "; ".join(report.notes) if report.notes else "")
        self._status.showMessage(message, 15000)
        self.saved.emit(message)
        return True

    def maybe_save(self) -> bool:
        """Before the annotations are replaced: Save / Discard / Cancel. True = go ahead."""
        if not self.is_dirty:
            return True
        name = self._document.opened.slide.name if self.has_image else "the image"
        answer = QMessageBox.question(
            self._window, "Unsaved annotations",
            f"The annotations of {name} have unsaved changes. Save them first?",
            Button.Save | Button.Discard | Button.Cancel, Button.Save,
        )
        if answer == Button.Save:
            return self.save()
        if answer == Button.Discard:
            if self._image is not None:
                remove_recovery(self.recovery_folder, self._image)
            self._written_revision = None  # if the replacement fails, the edits are written again
            return True
        return False

    # Recovery -------------------------------------------------------------------------------
    def write_recovery_now(self) -> None:
        """Write the unsaved edits to the recovery file if they changed since the last write."""
        if not self.is_dirty or self._image is None or self._written_revision == self._revision:
            return
        try:
            write_recovery(self.recovery_folder, self._image, self.size, self._base(), self.save_path)
        except (InputError, OSError) as exc:
            self._status.showMessage(f"Could not write the recovery file: {exc}", 15000)
            return
        self._written_revision = self._revision

    def offer_startup_recovery(self) -> bool:
        """At start without an image: offer the newest recovery; True if its image is being opened."""
        found = list_recoveries(self.recovery_folder)
        if not found:
            return False
        newest = found[0]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest.written))
        answer = QMessageBox.question(
            self._window, "Restore unsaved annotations?",
            f"HistoViewer did not close normally. Unsaved annotation edits of {newest.image.name} from {when} "
            "were kept. Open the image and restore them? (Discard deletes them; Cancel asks again when the "
            "image is opened.)", Button.Yes | Button.Discard | Button.Cancel, Button.Yes,
        )
        if answer == Button.Discard:
            remove_recovery(self.recovery_folder, newest.image)
        if answer != Button.Yes:
            return False
        self._restore_next = newest.image.absolute()
        return True

    @property
    def recovery_image(self) -> str | None:
        """The image whose recovered edits are restored as soon as it opens."""
        return str(self._restore_next) if self._restore_next is not None else None

    def _offer_recovery(self) -> None:
        recovery = find_recovery(self.recovery_folder, self._image)
        if recovery is None:
            return
        if self._restore_next is not None and self._restore_next == self._image.absolute():
            self._restore_next = None
            self.restore(recovery)
            return
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(recovery.written))
        answer = QMessageBox.question(
            self._window, "Restore unsaved annotations?",
            f"Unsaved annotation edits of {self._image.name} from {when} were kept when HistoViewer did not "
            "close normally. Restore them? (No discards them.)", Button.Yes | Button.No, Button.Yes,
        )
        if answer == Button.Yes:
            self.restore(recovery)
        else:
            remove_recovery(self.recovery_folder, self._image)

    def restore(self, recovery: Recovery) -> None:
        """Put recovered edits on screen as one undoable, unsaved edit over the file's state."""
        if recovery.size != self.size:
            dialogs.warn(self._window, "Cannot restore annotations",
                         f"{recovery.path}: was written for a {recovery.size[0]} x {recovery.size[1]} image, "
                         f"this one is {self.size[0]} x {self.size[1]}; it is kept, unchanged")
            return
        if recovery.source is not None:
            self.save_path = recovery.source
        self._push("Restore Unsaved Edits", recovery.annotations, Selection())
        self._written_revision = None
        self._status.showMessage(f"Restored unsaved edits of {self._image.name}; save them to keep them", 15000)

    def shut_down(self) -> None:
        """The window closes (after Save or Discard): no more recovery writes."""
        self._recovery_timer.stop()
        self._agreement_timer.stop()
        if self._image is not None and not self.is_dirty:
            remove_recovery(self.recovery_folder, self._image)

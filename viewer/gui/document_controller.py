"""Opening and closing images and their annotations, and the File › Open Recent menu.

An image is opened in a worker (document.read_image: the slide's header and the annotations,
no pixels) before anything changes, so a file that cannot be opened leaves the window as it
was, and a later open supersedes one still being opened. The canvas then reads the pixels it
shows, tile by tile. Annotations (BreCaHAD JSON or QuPath GeoJSON) are read on the main thread;
replacing annotations with unsaved edits asks first (``before_replace``). ``switched`` tells the
window to show the new document (or the placeholder); ``annotations_changed`` re-compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QWidget

from viewer.annotations import load_annotation_file
from viewer.errors import InputError
from viewer.gui import dialogs
from viewer.gui.annotation_layer import AnnotationLayer
from viewer.gui.document import Document, OpenedImage, read_image
from viewer.gui.heatmap_controller import HeatmapController
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.settings import Settings
from viewer.gui.status import StatusBar
from viewer.gui.worker import describe_error, run_in_background


class DocumentController(QObject):
    image_opened = Signal(str)
    open_failed = Signal(str)
    switched = Signal()  # the document is another image, or none
    annotations_changed = Signal()

    def __init__(
        self, window: QWidget, document: Document, heatmaps: HeatmapController, annotation_layer: AnnotationLayer,
        layers_panel: LayersPanel, status: StatusBar, settings: Settings, auto_run: QAction,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._document = document
        self._heatmaps = heatmaps
        self._annotation_layer = annotation_layer
        self._layers_panel = layers_panel
        self._status = status
        self._settings = settings
        self._auto_run = auto_run  # Analysis › Run Heatmap on Open
        self._generation = 0  # of the latest open: an older read that finishes late is dropped
        self._shut_down = False
        self.before_replace: Callable[[], bool] = lambda: True
        """Asked before the annotations on screen are replaced (unsaved edits: Save/Discard/Cancel)."""

    # Images ---------------------------------------------------------------------------------
    def choose_image(self) -> None:
        path = dialogs.ask_open_path(self._window, "Open Image", self._settings.last_folder("images"),
                                     dialogs.IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path, annotations: str | Path | None = None) -> None:
        """Open ``path`` in the background; the window switches to it only if that succeeds."""
        if self._shut_down or not self.before_replace():
            return
        self._generation += 1
        self._status.showMessage(f"Opening {Path(path).name}…")
        run_in_background(
            read_image, path, annotations,
            on_result=partial(self._on_read, self._generation, str(path)),
            on_error=partial(self._on_failed, self._generation),
        )

    def _on_read(self, generation: int, path: str, opened: OpenedImage) -> None:
        if generation != self._generation:
            return  # the user opened something else meanwhile
        self._heatmaps.stop()  # before the swap: the old run reports on the old image
        self._document.opened = opened
        self._document.annotations = opened.annotations
        self._heatmaps.clear()
        self.switched.emit()
        self._show_annotations()
        slide = opened.slide
        self._settings.add_recent_file(slide.path)
        self._settings.set_last_folder("images", slide.path)
        notes = "; ".join(slide.notes)
        self._status.showMessage(f"{slide.name}: {slide.width} × {slide.height} px" + (f" ({notes})" if notes else ""),
                                 8000)
        self.image_opened.emit(path)
        if opened.annotation_problem:
            dialogs.warn(self._window, "Annotations not loaded",
                         f"{opened.annotation_problem}. The image is shown without them.")
        if self._auto_run.isChecked():
            self._heatmaps.run()

    def _on_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        message = describe_error(exc)
        self._status.clearMessage()
        dialogs.warn(self._window, "Cannot open image", message)
        self.open_failed.emit(message)

    def close_image(self) -> None:
        if not self.before_replace():
            return
        self._generation += 1
        self._heatmaps.stop()
        self._document.opened = None
        self._document.annotations = None
        self._heatmaps.clear()
        self._annotation_layer.set_annotations(None, 0, 0)
        self._layers_panel.set_counts(None)
        self.switched.emit()
        self.annotations_changed.emit()

    def shut_down(self) -> None:
        """The window is closing: nothing opens any more, and a read still going is dropped."""
        self._shut_down = True
        self._generation += 1

    def fill_recent_menu(self, menu: QMenu) -> None:
        menu.clear()
        files = self._settings.recent_files()
        for number, path in enumerate(files, start=1):
            action = menu.addAction(f"&{number % 10}  {Path(path).name}")
            action.setToolTip(path)
            action.setStatusTip(path)
            # not partial(): triggered(bool) would land in open_image's annotations argument
            action.triggered.connect(lambda _checked=False, path=path: self.open_image(path))
        if not files:
            menu.addAction("No recent images").setEnabled(False)
        menu.addSeparator()
        menu.addAction("Clear Recent", self._settings.clear_recent_files).setEnabled(bool(files))

    # Annotations ----------------------------------------------------------------------------
    def choose_annotations(self) -> None:
        path = dialogs.ask_open_path(self._window, "Open Annotations", self._settings.last_folder("annotations"),
                                     dialogs.ANNOTATION_FILTER)
        if path:
            self.load_annotations_file(path)

    def load_annotations_file(self, path: str | Path) -> bool:
        """Replace the annotations (a few kB of JSON: read on the main thread)."""
        if self._document.opened is None:
            dialogs.warn(self._window, "No image", "Open an image first, then its annotations.")
            return False
        slide = self._document.opened.slide
        try:
            annotations = load_annotation_file(path, (slide.width, slide.height))
        except InputError as exc:
            dialogs.warn(self._window, "Cannot open annotations", str(exc))
            return False
        if not self.before_replace():
            return False
        self._settings.set_last_folder("annotations", path)
        self._document.annotations = annotations
        self._show_annotations()
        if annotations.notes:  # e.g. unknown classes kept, points outside the image skipped
            self._status.showMessage(f"{Path(path).name}: {'; '.join(annotations.notes)}", 15000)
        return True

    def _show_annotations(self) -> None:
        slide, annotations = self._document.opened.slide, self._document.annotations
        self._annotation_layer.set_annotations(annotations, slide.width, slide.height)
        state = self._layers_panel.state
        self._annotation_layer.set_visibility(state.show_annotations, state.hidden_classes)
        if annotations is None:
            self._layers_panel.set_counts(None)
        else:
            source = annotations.source.name if annotations.source else ""
            notes = "; ".join(annotations.notes)
            self._layers_panel.set_counts(annotations.counts(), f"{source}{' — ' + notes if notes else ''}")
        self.annotations_changed.emit()

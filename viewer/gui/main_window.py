"""The main window: composes the canvas, docks, actions and controllers, and wires them together.

The work lives in the controllers: DocumentController opens and closes images and annotations,
ModelController loads the model, HeatmapController runs the heatmap, AgreementController keeps
the Agreement dock current and ExportController writes files. They share one Document and
change it only on the main thread, once new data is complete. The window itself shows the
document, applies the layer settings, reads out the pixel under the cursor (from tiles already
decoded: the readout never waits for a decode), accepts dropped files and saves its layout on close.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QDockWidget, QFrame, QMainWindow, QMenu, QScrollArea, QStackedWidget, QWidget

from viewer.colormaps import colormap_lut
from viewer.gui.about import AboutDialog
from viewer.gui.actions import build_actions, build_menus
from viewer.gui.agreement_controller import AgreementController
from viewer.gui.agreement_panel import AgreementPanel
from viewer.gui.annotation_editor import AnnotationEditor
from viewer.gui.annotation_layer import AnnotationLayer
from viewer.gui.annotation_tools import AnnotationTools
from viewer.gui.canvas import ZOOM_STEP, Canvas
from viewer.gui.document import Document
from viewer.gui.document_controller import DocumentController
from viewer.gui.export_controller import ExportController
from viewer.gui.heatmap_controller import HeatmapController
from viewer.gui.heatmap_layer import HeatmapLayer
from viewer.gui.improve_model import ImproveModelController
from viewer.gui.region_picker import RegionPicker
from viewer.gui.tissue_layer import TissueLayer
from viewer.gui.layers import LayerState
from viewer.gui.layers_panel import LayersPanel
from viewer.gui.model_controller import ModelController
from viewer.gui.placeholder import Placeholder
from viewer.gui.settings import Settings
from viewer.gui.shortcuts_dialog import ShortcutsDialog
from viewer.gui.status import StatusBar
from viewer.gui.worker import ensure_thread_capacity, wait_for_workers
from viewer.slide import IMAGE_SUFFIXES

APP_NAME = "HistoViewer"

MODEL_LOAD_DELAY_MS = 600
"""When started with a file, the model load waits this long, so the slide's first view (about
0.7 s without the TensorFlow import competing) comes first; the heatmap waits for the model."""


def _forwarded(controller: str, name: str) -> property:
    """A window attribute kept for tests, benchmarks and scripts; it lives in a controller."""
    return property(
        lambda window: getattr(getattr(window, controller), name),
        lambda window, value: setattr(getattr(window, controller), name, value),
        doc=f"``{controller}.{name}``",
    )


class MainWindow(QMainWindow):
    image_opened = Signal(str)
    open_failed = Signal(str)
    model_ready = Signal()
    heatmap_finished = Signal(bool)  # True = complete, False = cancelled or failed
    exported = Signal(str)
    export_failed = Signal(str)

    opened = _forwarded("document", "opened")
    annotations = _forwarded("document", "annotations")
    model = _forwarded("model_controller", "model")
    model_path = _forwarded("model_controller", "path")
    model_loader = _forwarded("model_controller", "loader")
    runner = _forwarded("heatmap_controller", "runner")
    heatmap = _forwarded("heatmap_controller", "heatmap")
    heatmap_stride = _forwarded("heatmap_controller", "stride")
    heatmap_complete = _forwarded("heatmap_controller", "complete")
    window_step = _forwarded("heatmap_controller", "window_step")
    agreement_result = _forwarded("agreement_controller", "result")

    def __init__(self, model_path: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        ensure_thread_capacity()
        self.settings = Settings()
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.resize(1280, 860)
        self.document = Document()
        self._closing = False

        self.canvas = Canvas(tile_cache_bytes=self.settings.tile_cache_bytes())
        self.heatmap_layer = HeatmapLayer(self.canvas)
        self.tissue_layer = TissueLayer(self.canvas)
        self.region_picker = RegionPicker(self.canvas)
        self.annotation_layer = AnnotationLayer(self.canvas)
        self.placeholder = Placeholder()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.canvas)
        self.setCentralWidget(self.stack)
        self.layers_panel = LayersPanel(LayerState.from_settings(self.settings.layer_values()))
        self.agreement_panel = AgreementPanel()
        self.status = StatusBar()
        self.setStatusBar(self.status)
        self.actions = build_actions(self)
        self.toolbar, panels_menu = build_menus(self, self.actions)
        self._add_docks(panels_menu)
        self._add_overlay_toggles(panels_menu)

        self.model_controller = ModelController(self, model_path, self.status, self.settings)
        self.heatmap_controller = HeatmapController(
            self, self.document, self.model_controller, self.canvas, self.heatmap_layer, self.layers_panel,
            self.status, self.actions, self.settings,
        )
        self.agreement_controller = AgreementController(self.agreement_panel, self.document, self.heatmap_controller)
        self.document_controller = DocumentController(
            self, self.document, self.heatmap_controller, self.annotation_layer, self.layers_panel, self.status,
            self.settings, self.actions.auto_run,
        )
        self.annotation_editor = AnnotationEditor(self, self.document, self.annotation_layer, self.layers_panel,
                                                  self.status)
        self.annotation_tools = AnnotationTools(self, self.canvas, self.annotation_editor, self.layers_panel)
        self.export_controller = ExportController(
            self, self.document, self.heatmap_controller, self.model_controller, self.agreement_controller,
            self.layers_panel, self.actions.export_legend, self.status, self.settings,
        )
        self.improve_model_controller = ImproveModelController(
            self, self.document, self.model_controller, self.agreement_controller, self.settings, self.status)
        self._connect()
        self.actions.auto_run.setChecked(self.settings.auto_run_heatmap())
        self.actions.export_legend.setChecked(self.settings.export_legend())
        self._apply_layers(self.layers_panel.state, save=False)
        self._restore_window()
        self._update_image_actions()
        self.heatmap_controller.update_actions()

    def _add_docks(self, panels_menu: QMenu) -> None:
        docks = []
        for title, name, widget in (("Layers", "layers_dock", self.layers_panel),
                                    ("Agreement", "agreement_dock", self.agreement_panel)):
            dock = QDockWidget(title, self)
            dock.setObjectName(name)  # saveState()/restoreState() identify docks by name
            scroll = QScrollArea()  # small screens scroll the panel instead of squashing it
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setWidget(widget)
            dock.setWidget(scroll)
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            panels_menu.addAction(dock.toggleViewAction())
            docks.append(dock)
        # Give the image most of the width; a saved layout (restored in __init__) overrides this.
        self.resizeDocks(docks, [300, 300], Qt.Orientation.Horizontal)
        self.resizeDocks(docks, [self.layers_panel.sizeHint().height() + 30, 200], Qt.Orientation.Vertical)

    def _add_overlay_toggles(self, panels_menu: QMenu) -> None:
        """View › Overview and View › Scale Bar, remembered in the settings."""
        self.show_overview_action = QAction("&Overview", self, checkable=True, shortcut="O",
                                            statusTip="Show a thumbnail of the whole slide; click it to move there")
        self.show_scale_bar_action = QAction("Scale &Bar", self, checkable=True,
                                             statusTip="Show a scale bar (when the slide records its pixel size)")
        view_menu = panels_menu.parentWidget()  # the Panels submenu lives in the View menu
        for action, on, apply, save in (
            (self.show_overview_action, self.settings.show_overview(), self.canvas.set_overview_enabled,
             self.settings.set_show_overview),
            (self.show_scale_bar_action, self.settings.show_scale_bar(), self.canvas.set_scale_bar_enabled,
             self.settings.set_show_scale_bar),
        ):
            action.setChecked(on)
            apply(on)
            action.toggled.connect(apply)
            action.toggled.connect(save)
            self.addAction(action)  # the shortcut works even when the menu bar is hidden
            if isinstance(view_menu, QMenu):
                view_menu.insertAction(panels_menu.menuAction(), action)
        if isinstance(view_menu, QMenu):
            view_menu.insertSeparator(panels_menu.menuAction())

    def _connect(self) -> None:
        a, documents, heatmaps, exports = (self.actions, self.document_controller, self.heatmap_controller,
                                           self.export_controller)
        a.open.triggered.connect(documents.choose_image)
        a.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        a.open_annotations.triggered.connect(documents.choose_annotations)
        a.load_model.triggered.connect(self.choose_model)
        a.export_overlay.triggered.connect(exports.export_overlay)
        a.export_heatmap.triggered.connect(exports.export_heatmap)
        a.open_heatmap.triggered.connect(heatmaps.choose_store)
        a.close_image.triggered.connect(self.close_image)
        a.quit.triggered.connect(self.close)
        a.fit.triggered.connect(self.canvas.fit)
        a.zoom_100.triggered.connect(lambda: self.canvas.zoom_to(1.0))
        a.zoom_in.triggered.connect(lambda: self.canvas.zoom_by(ZOOM_STEP))
        a.zoom_out.triggered.connect(lambda: self.canvas.zoom_by(1 / ZOOM_STEP))
        a.show_image.toggled.connect(lambda on: self._change_layers(show_image=on))
        a.show_annotations.toggled.connect(lambda on: self._change_layers(show_annotations=on))
        a.show_heatmap.toggled.connect(lambda on: self._change_layers(show_heatmap=on))
        a.show_tissue.toggled.connect(lambda on: self._change_layers(show_tissue=on))
        a.smooth_heatmap.toggled.connect(lambda on: self._change_layers(smooth=on))
        a.overview_max.toggled.connect(lambda on: self._change_layers(overview_max=on))
        a.run_visible.triggered.connect(heatmaps.run_visible)
        a.run_rectangle.toggled.connect(lambda on: self.region_picker.start() if on else self.region_picker.cancel())
        a.cancel_heatmap.triggered.connect(self.region_picker.cancel)
        self.region_picker.chosen.connect(lambda x, y, w, h: heatmaps.run(scope=(x, y, w, h)))
        self.region_picker.closed.connect(lambda: a.run_rectangle.setChecked(False))
        a.run_heatmap.triggered.connect(self.run_heatmap)
        a.cancel_heatmap.triggered.connect(heatmaps.cancel)
        a.auto_run.toggled.connect(self.settings.set_auto_run_heatmap)
        a.export_legend.toggled.connect(self.settings.set_export_legend)
        a.improve_model.triggered.connect(self.improve_model_controller.choose)
        a.window_step_group.triggered.connect(lambda action: heatmaps.set_window_step(action.data()))
        a.about.triggered.connect(lambda: AboutDialog(self.model_path, self).exec())
        a.shortcuts.triggered.connect(lambda: ShortcutsDialog(self).exec())
        self.placeholder.open_requested.connect(documents.choose_image)
        self.layers_panel.changed.connect(self._apply_layers)
        self.agreement_panel.export_requested.connect(exports.export_agreement)
        self.status.cancel_requested.connect(heatmaps.cancel)
        self.canvas.cursor_moved.connect(self._show_cursor)
        self.canvas.cursor_left.connect(self.status.clear_cursor)
        self.canvas.zoom_changed.connect(self.status.show_zoom)
        self.canvas.tile_failed.connect(lambda message: self.status.showMessage(message, 15000))
        documents.switched.connect(self._show_document)
        documents.annotations_changed.connect(self.agreement_controller.update)
        documents.annotations_changed.connect(self.annotation_editor.reset)
        documents.before_replace = self.annotation_editor.maybe_save
        self.annotation_editor.agreement_due.connect(self.agreement_controller.update)
        documents.image_opened.connect(self.image_opened)
        documents.open_failed.connect(self.open_failed)
        self.model_controller.ready.connect(self.model_ready)
        heatmaps.changed.connect(self.agreement_controller.update)
        heatmaps.changed.connect(self._show_tissue_mask)
        heatmaps.finished.connect(self.heatmap_finished)
        exports.exported.connect(self.exported)
        exports.export_failed.connect(self.export_failed)

    # Commands used from outside the window (the app, tests, benchmarks, scripts) -------------
    def start(self, image: str | None = None, annotations: str | None = None) -> None:
        """Begin loading the model in the background and open ``image`` if given."""
        if self._closing:
            return  # closed before the event loop got here
        # Importing TensorFlow takes seconds of mostly GIL-holding work: started at once, it
        # halves the speed of showing the slide. With a file to show, it starts a little later
        # (a heatmap asked for meanwhile waits for the model as usual).
        self.model_controller.load(self.model_path, delay_ms=MODEL_LOAD_DELAY_MS if image else 0)
        self.heatmap_controller.update_actions()
        if not image and self.annotation_editor.offer_startup_recovery():
            image = self.annotation_editor.recovery_image
        if image:
            self.open_image(image, annotations)

    def open_image(self, path: str | Path, annotations: str | Path | None = None) -> None:
        """Open ``path`` in the background; the window switches to it only if that succeeds."""
        self.document_controller.open_image(path, annotations)

    def close_image(self) -> None:
        self.document_controller.close_image()

    def load_annotations_file(self, path: str | Path) -> bool:
        """Replace the annotations of the open image; False (after a message box) if that fails."""
        return self.document_controller.load_annotations_file(path)

    def choose_model(self) -> None:
        path = self.model_controller.ask_path()
        if path:
            self.load_model(path)

    def load_model(self, path: str | None) -> None:
        """Load a model in the background (None = bundled); the current one stays until then."""
        self.model_controller.load(path)
        # run() leaves Run/Cancel as they were when it starts waiting for a model: catch up here.
        self.heatmap_controller.update_actions()

    def run_heatmap(self) -> None:
        self.heatmap_controller.run()

    # Showing the document -------------------------------------------------------------------
    def _show_document(self) -> None:
        opened = self.document.opened
        if opened is None:
            self.canvas.clear_image()
            self.stack.setCurrentWidget(self.placeholder)
            self.setWindowTitle(APP_NAME)
            self.setWindowFilePath("")
            self.status.clear_cursor()
            self.status.show_zoom(None)
        else:
            self.stack.setCurrentWidget(self.canvas)  # first, so the canvas fits its real size
            self.canvas.set_slide(opened.slide)
            self.setWindowTitle(f"{opened.slide.name}[*] — {APP_NAME}")  # [*]: unsaved annotation edits
            self.setWindowFilePath(str(opened.slide.path))
        self.region_picker.cancel()  # a box drawn on the previous image means nothing here
        self._update_image_actions()

    def _update_image_actions(self) -> None:
        a, has_image = self.actions, self.document.opened is not None
        for action in (a.open_annotations, a.open_heatmap, a.export_overlay, a.close_image, a.fit, a.zoom_100,
                       a.zoom_in, a.zoom_out, a.improve_model):
            action.setEnabled(has_image)

    def _fill_recent_menu(self) -> None:
        self.document_controller.fill_recent_menu(self.actions.recent_menu)

    def _change_layers(self, **changes: object) -> None:
        state = replace(self.layers_panel.state, **changes)
        if state != self.layers_panel.state:
            self.layers_panel.set_state(state)
            self._apply_layers(state)

    def _apply_layers(self, state: LayerState, save: bool = True) -> None:
        self.canvas.image_item.setVisible(state.show_image)
        self.annotation_layer.set_visibility(state.show_annotations, state.hidden_classes)
        self.heatmap_layer.set_style(colormap_lut(state.colormap), state.threshold, state.opacity, state.show_heatmap,
                                     smooth=state.smooth, coarse="max" if state.overview_max else "mean")
        self.tissue_layer.set_visible(state.show_tissue)
        for action, on in ((self.actions.show_image, state.show_image),
                           (self.actions.show_annotations, state.show_annotations),
                           (self.actions.show_heatmap, state.show_heatmap),
                           (self.actions.show_tissue, state.show_tissue),
                           (self.actions.smooth_heatmap, state.smooth),
                           (self.actions.overview_max, state.overview_max)):
            action.blockSignals(True)
            action.setChecked(on)
            action.blockSignals(False)
        if save:
            self.settings.save_layer_values(state.to_settings())

    def _show_tissue_mask(self) -> None:
        mask = self.heatmap_controller.tissue
        if mask is not self.tissue_layer.mask:
            self.tissue_layer.set_mask(mask)
            self.tissue_layer.set_visible(self.layers_panel.state.show_tissue)

    def _show_cursor(self, x: float, y: float) -> None:
        if self.document.opened is None:
            return
        slide = self.document.opened.slide
        col, row = math.floor(x), math.floor(y)
        if not (0 <= col < slide.width and 0 <= row < slide.height):
            self.status.clear_cursor()
            return
        # Only from a decoded full-resolution tile: a read here could stall the window on a decode.
        rgb = self.canvas.tile_layer.pixel_at(col, row)
        probability = self.heatmap_layer.probability_at(x, y)
        self.status.show_cursor(col, row, rgb, probability)

    # Drag and drop --------------------------------------------------------------------------
    @staticmethod
    def _dropped_files(event: QDragEnterEvent | QDropEvent) -> tuple[list[str], list[str]]:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        images = [p for p in paths if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        jsons = [p for p in paths if Path(p).suffix.lower() in (".json", ".geojson")]
        return images, jsons

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        images, jsons = self._dropped_files(event)
        if images or (jsons and self.document.opened is not None):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        images, jsons = self._dropped_files(event)
        event.acceptProposedAction()
        # Defer: a modal message box inside a drop handler would block the drag source.
        if images:
            QTimer.singleShot(0, partial(self.open_image, images[0], jsons[0] if jsons else None))
        elif jsons:
            QTimer.singleShot(0, partial(self.load_annotations_file, jsons[0]))

    # Window state ---------------------------------------------------------------------------
    def _restore_window(self) -> None:
        geometry, state = self.settings.window_geometry(), self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if not self._closing and not self.annotation_editor.maybe_save():
            event.ignore()  # Cancel: unsaved annotation edits stay
            return
        self._closing = True
        self.annotation_editor.shut_down()
        self.improve_model_controller.shut_down()
        self.settings.save_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self.document_controller.shut_down()
        self.model_controller.loader.discard()
        self.heatmap_controller.shut_down()
        self.canvas.shut_down()  # joins the tile-reading threads
        self.hide()
        # Join the worker threads so none outlives the window (a tile takes well under a second;
        # a model still loading finishes its import first).
        wait_for_workers()
        super().closeEvent(event)

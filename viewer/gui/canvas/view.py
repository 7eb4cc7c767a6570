"""The slide canvas: a pyqtgraph ViewBox in level-0 pixel coordinates (y down, square pixels).

Layers are separate items stacked with ``setZValue`` (image 0, heatmap 10, annotations 20+).
This module owns the view (zoom, pan, fit, cursor) and composes the image layer
(:mod:`tile_layer`: tiles of the pyramid level that matches the zoom, read in the background),
the overview (:mod:`minimap`) and the scale bar (:mod:`scale_bar`), which float over the view
as child widgets. Whatever the slide's size, the canvas holds only the tiles on screen, the
coarsest level and a byte-bounded cache.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QColor, QMouseEvent
from PySide6.QtWidgets import QWidget

from viewer.gui.canvas.minimap import THUMBNAIL_SIDE, Minimap
from viewer.gui.canvas.scale_bar import ScaleBar
from viewer.gui.canvas.tile_layer import DEFAULT_CACHE_BYTES, TileLayer
from viewer.gui.canvas.tile_loader import ReadJob, TileLoader
from viewer.gui.qt_workarounds import apply_workarounds
from viewer.slide.source import SlideSource

# Before anything emits signals: see qt_workarounds (PySide6 6.12.0 loses a reference per emit).
apply_workarounds()

# Row-major arrays are what numpy, tifffile and the core hand us; say so once, globally.
pg.setConfigOptions(imageAxisOrder="row-major")

BACKGROUND = QColor(38, 38, 40)
Z_IMAGE, Z_HEATMAP, Z_ANNOTATIONS = 0, 10, 20
MAX_ZOOM = 40.0  # screen pixels per image pixel: beyond this nothing new is visible
MIN_RANGE = 16.0  # image pixels across the view at the deepest wheel zoom
ZOOM_STEP = 1.25
OVERLAY_MARGIN = 10  # px between the overlays and the canvas edges


class Canvas(pg.GraphicsView):
    """Shows one slide and any number of overlay items; emits the cursor in level-0 pixels."""

    cursor_moved = Signal(float, float)
    """Cursor position in image coordinates (throttled to ~30 Hz)."""
    cursor_left = Signal()
    zoom_changed = Signal(float)
    """Screen pixels per image pixel (1.0 = 100 %)."""
    tile_failed = Signal(str)
    """A tile could not be decoded (drawn grey); one line for the status bar."""

    _slide: SlideSource | None = None  # class default: GraphicsView.__init__ already resizes

    def __init__(self, parent: QWidget | None = None, tile_cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(parent, background=BACKGROUND)
        self.view = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False, defaultPadding=0.0)
        self.setCentralItem(self.view)
        self.setMinimumSize(200, 150)
        self.loader = TileLoader(parent=self)
        self.tile_layer = TileLayer(self.loader, tile_cache_bytes, parent=self)
        self.tile_layer.tile_failed.connect(self.tile_failed)
        self.add_item(self.tile_layer.root, Z_IMAGE, ignore_bounds=True)
        self.minimap = Minimap(self)
        self.minimap.navigate.connect(self.centre_on)
        self.scale_bar = ScaleBar(self)
        self._overview_enabled = True
        self._last_cursor: QPointF | None = None
        # Mouse moves arrive at hundreds of Hz; the readout only needs ~30.
        self._mouse_proxy = pg.SignalProxy(self.scene().sigMouseMoved, rateLimit=30, slot=self._on_mouse_moved)
        self.view.sigRangeChanged.connect(self._on_range_changed)
        # Range changes come in bursts (one per mouse move while panning): update tiles and
        # overlays once per burst.
        self._view_timer = QTimer(self, singleShot=True, interval=10)
        self._view_timer.timeout.connect(self._update_view)

    # Image ----------------------------------------------------------------------------------
    @property
    def slide(self) -> SlideSource | None:
        return self._slide

    @property
    def image_item(self) -> pg.GraphicsObject:
        """The image layer's item: hiding it hides the slide (View › Image)."""
        return self.tile_layer.root

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of level 0 of the slide shown, or (0, 0)."""
        if self._slide is None:
            return 0, 0
        return self._slide.width, self._slide.height

    def set_slide(self, slide: SlideSource) -> None:
        """Show ``slide`` fitted to the view; its coarsest level appears first, finer tiles follow."""
        self._slide = slide
        width, height = self.image_size
        # Keep the image findable: limited zoom-out and panning; generous for small images so
        # that 100 % still works in a large window.
        pad = 2 * max(width, height, 1000)
        self.view.setLimits(
            xMin=-pad, xMax=width + pad, yMin=-pad, yMax=height + pad,
            minXRange=MIN_RANGE, maxXRange=width + 2 * pad, minYRange=MIN_RANGE, maxYRange=height + 2 * pad,
        )
        self.tile_layer.set_slide(slide)
        self.minimap.clear()
        self._request_thumbnail(slide)
        self.fit()
        self._update_view()

    def clear_image(self) -> None:
        self._slide = None
        self.tile_layer.set_slide(None)
        self.minimap.clear()
        self.scale_bar.set_scale(None)

    def shut_down(self) -> None:
        """Stop reading tiles and join the reading threads (the window is closing)."""
        self.tile_layer.shut_down()
        self.loader.shut_down()

    def is_drawn(self) -> bool:
        """Every tile the current view needs is on screen and nothing is waiting to be read
        (tests and scripts wait for this before looking at the canvas)."""
        layer = self.tile_layer
        return not self._view_timer.isActive() and layer.is_idle() and layer.is_complete()

    def _request_thumbnail(self, slide: SlideSource) -> None:
        generation = self.tile_layer.generation
        self.loader.submit(ReadJob(
            generation, "thumbnail", read=partial(slide.thumbnail, THUMBNAIL_SIDE),
            deliver=partial(self._on_thumbnail, slide),
        ))

    def _on_thumbnail(self, slide: SlideSource, job: ReadJob, pixels: np.ndarray | None,
                      error: BaseException | None, _dropped: bool) -> None:
        if job.generation != self.tile_layer.generation or pixels is None:
            return  # another slide by now, or no thumbnail (its tiles report their own errors)
        self.minimap.set_thumbnail(pixels, slide.width, slide.height)
        self._update_overlays()

    # Overlays -------------------------------------------------------------------------------
    def set_overview_enabled(self, on: bool) -> None:
        """View › Overview."""
        self._overview_enabled = bool(on)
        self._update_overlays()

    def set_scale_bar_enabled(self, on: bool) -> None:
        """View › Scale Bar."""
        self.scale_bar.set_enabled_by_user(on)
        self._update_overlays()

    def _update_overlays(self) -> None:
        rect = self.view.viewRect()
        width, height = self.image_size
        minimap = self.minimap
        minimap.set_view_rect(rect)
        whole_image_visible = rect.contains(QRectF(0, 0, width, height))
        minimap.setVisible(self._overview_enabled and minimap.has_thumbnail and not whole_image_visible)
        minimap.move(self.width() - minimap.width() - OVERLAY_MARGIN, OVERLAY_MARGIN)
        slide = self._slide
        mpp = slide.mpp if slide is not None else None
        self.scale_bar.set_scale(None if mpp is None else mpp[0] / self.zoom_level())
        self.scale_bar.move(OVERLAY_MARGIN, self.height() - self.scale_bar.height() - OVERLAY_MARGIN)

    # View -----------------------------------------------------------------------------------
    def add_item(self, item: pg.GraphicsObject, z: float, ignore_bounds: bool = False) -> None:
        item.setZValue(z)
        self.view.addItem(item, ignoreBounds=ignore_bounds)

    def fit(self) -> None:
        width, height = self.image_size
        if width:
            self.view.setRange(QRectF(0, 0, width, height), padding=0.02)

    def zoom_level(self) -> float:
        """Screen pixels per image pixel."""
        width = self.view.viewRect().width()
        return self.view.boundingRect().width() / width if width > 0 else 1.0

    def zoom_to(self, level: float) -> None:
        """Set screen pixels per image pixel, keeping the view centre fixed."""
        centre = self.view.viewRect().center()
        size = self.view.boundingRect().size()
        w, h = size.width() / level, size.height() / level
        self.view.setRange(QRectF(centre.x() - w / 2, centre.y() - h / 2, w, h), padding=0)

    def zoom_by(self, factor: float) -> None:
        """Zoom in (factor > 1) around the cursor when it is over the image, else the centre."""
        centre = self._last_cursor if self._cursor_inside() else self.view.viewRect().center()
        factor = min(factor, MAX_ZOOM / self.zoom_level()) if factor > 1 else factor
        self.view.scaleBy((1 / factor, 1 / factor), center=centre)

    def centre_on(self, x: float, y: float) -> None:
        """Move the view so level-0 point ``(x, y)`` is in its centre, keeping the zoom."""
        centre = self.view.viewRect().center()
        self.view.translateBy(x=x - centre.x(), y=y - centre.y())

    def visible_centre(self) -> tuple[float, float] | None:
        """Centre of the visible part of the image, in image pixels (None without an image)."""
        width, height = self.image_size
        if not width:
            return None
        rect = self.view.viewRect().intersected(QRectF(0, 0, width, height))
        if rect.isEmpty():
            return width / 2, height / 2
        return rect.center().x(), rect.center().y()

    def level0_per_device_px(self) -> float:
        """Level-0 pixels per physical screen pixel: what the tile level is chosen by (on a
        HiDPI screen, a finer level keeps the image as sharp as the screen)."""
        pixel = self.view.viewRect().width() / max(1.0, self.view.boundingRect().width())
        return pixel / max(self.devicePixelRatioF(), 1.0)

    def _update_view(self) -> None:
        if self._slide is None or self.closed:
            return
        rect = self.view.viewRect()
        self.tile_layer.update_view(rect.left(), rect.top(), rect.right(), rect.bottom(),
                                    self.level0_per_device_px())
        self._update_overlays()

    def _cursor_inside(self) -> bool:
        return self._last_cursor is not None and self.underMouse()

    def _on_range_changed(self, *_args: object) -> None:
        self.zoom_changed.emit(self.zoom_level())
        if self._slide is not None:
            self._view_timer.start()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        # pyqtgraph's close() deletes the scene, then resizes: the view is gone by then.
        if self._slide is not None and event is not None and not self.closed:
            self.zoom_changed.emit(self.zoom_level())
            self._view_timer.start()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.shut_down()  # a canvas used on its own; inside the window, the window calls shut_down
        super().closeEvent(event)

    # Cursor ---------------------------------------------------------------------------------
    def _on_mouse_moved(self, args: tuple) -> None:
        scene_pos = args[0]
        if not self.view.sceneBoundingRect().contains(scene_pos):
            self._last_cursor = None
            self.cursor_left.emit()
            return
        point = self.view.mapSceneToView(scene_pos)
        self._last_cursor = point
        self.cursor_moved.emit(point.x(), point.y())

    def leaveEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().leaveEvent(event)
        self._last_cursor = None
        self.cursor_left.emit()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        # A double click fits the image, as in most viewers.
        if event.button() == Qt.MouseButton.LeftButton:
            self.fit()
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

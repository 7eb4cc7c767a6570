"""The annotation tools: what the mouse and keys do on the canvas while annotating.

- **Navigate** (N): the canvas pans and zooms as usual;
- **Add Points** (P): a click adds a point of the current class;
- **Select** (S): click a point or region, Shift adds to the selection, drag on empty canvas
  for a rubber band, drag a selected item to move the selection; Del deletes it; 1–7 give it
  one of the seven BreCaHAD classes (0: ``ignore``, for regions);
- **Polygon** (G): click the corners; double-click, Enter or a click on the first corner closes
  it; Backspace removes the last corner, Esc cancels;
- **Freehand** (D): press, draw, release.

Wheel zoom and middle-button panning keep working in every tool. Positions are level-0 pixels,
so points stay where they were put at every zoom and on whole slides. The menus and toolbar
of these actions are added here too, so the window itself only creates this object.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QBrush,
    QColor,
    QIcon,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPolygonF,
    QShortcut,
)
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsRectItem, QMainWindow, QMenu, QToolBar

from viewer.annotations import CLASSES, IGNORE_CLASS, class_colour, class_label
from viewer.annotations.edits import Selection
from viewer.gui.annotation_editor import AnnotationEditor
from viewer.gui.canvas import Z_ANNOTATIONS, Canvas
from viewer.gui.icon import multi_size_icon
from viewer.gui.layers_panel import LayersPanel, ring_icon

CLICK_SLOP = 4  # screen px a click may wander and still be a click
CLOSE_REACH = 9  # screen px from the first corner that closes a polygon
FREEHAND_STEP = 3  # screen px between freehand vertices


class Tool(enum.Enum):
    NAVIGATE = "navigate"
    POINTS = "points"
    SELECT = "select"
    POLYGON = "polygon"
    FREEHAND = "freehand"


_TOOLS = (
    (Tool.NAVIGATE, "&Navigate", "N", "Pan and zoom; annotations are not changed"),
    (Tool.POINTS, "Add &Points", "P", "Click to add a point of the current class"),
    (Tool.SELECT, "&Select", "S", "Click or drag a box to select; drag to move; Del deletes; 1–7 change the class"),
    (Tool.POLYGON, "&Polygon Region", "G", "Click the corners of a region; double-click or Enter closes it"),
    (Tool.FREEHAND, "&Freehand Region", "D", "Press, draw the outline of a region, release"),
)


def _glyph(kind: str, size: int) -> QPixmap:
    """Toolbar glyphs drawn in code, in the style of :mod:`viewer.gui.icon`."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 32
    ink = QColor(60, 60, 70)
    cyan = QColor(0, 200, 240)
    p.setPen(QPen(ink, 2.2 * s))

    def pt(x: float, y: float) -> QPointF:
        return QPointF(x * s, y * s)

    if kind == "navigate":  # a four-way arrow: pan
        for (x0, y0), (x1, y1) in (((16, 3), (16, 29)), ((3, 16), (29, 16))):
            p.drawLine(pt(x0, y0), pt(x1, y1))
        for tip, a, b in (((16, 3), (12, 7), (20, 7)), ((16, 29), (12, 25), (20, 25)),
                          ((3, 16), (7, 12), (7, 20)), ((29, 16), (25, 12), (25, 20))):
            p.drawPolyline(QPolygonF([pt(*a), pt(*tip), pt(*b)]))
    elif kind == "points":  # a marker ring and a plus
        p.setPen(QPen(QColor(15, 15, 15), 4.5 * s))
        p.drawEllipse(pt(12, 18), 7 * s, 7 * s)
        p.setPen(QPen(cyan, 2.2 * s))
        p.drawEllipse(pt(12, 18), 7 * s, 7 * s)
        p.setPen(QPen(ink, 2.6 * s))
        p.drawLine(pt(25, 3), pt(25, 13))
        p.drawLine(pt(20, 8), pt(30, 8))
    elif kind == "select":  # a pointer over a dashed box
        pen = QPen(ink, 1.6 * s, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.drawRect(QRectF(3 * s, 3 * s, 20 * s, 20 * s))
        p.setPen(QPen(ink, 1.2 * s))
        p.setBrush(QColor(250, 250, 250))
        p.drawPolygon(QPolygonF([pt(13, 11), pt(29, 20), pt(21, 22), pt(25, 30), pt(22, 31), pt(18, 24), pt(13, 28)]))
    elif kind == "polygon":
        corners = [pt(5, 9), pt(21, 4), pt(28, 20), pt(14, 28)]
        p.setBrush(QColor(0, 200, 240, 60))
        p.setPen(QPen(QColor(0, 150, 190), 2.2 * s))
        p.drawPolygon(QPolygonF(corners))
        p.setBrush(ink)
        p.setPen(Qt.PenStyle.NoPen)
        for corner in corners:
            p.drawEllipse(corner, 2.6 * s, 2.6 * s)
    elif kind == "freehand":
        path = QPainterPath(pt(6, 16))
        path.cubicTo(pt(4, 4), pt(18, 2), pt(22, 9))
        path.cubicTo(pt(26, 14), pt(30, 20), pt(22, 27))
        path.cubicTo(pt(14, 33), pt(8, 26), pt(6, 16))
        p.setBrush(QColor(0, 200, 240, 60))
        p.setPen(QPen(QColor(0, 150, 190), 2.2 * s))
        p.drawPath(path)
    elif kind in ("undo", "redo"):
        if kind == "redo":
            p.translate(size, 0)
            p.scale(-1, 1)
        path = QPainterPath(pt(8, 12))
        path.cubicTo(pt(18, 6), pt(30, 12), pt(26, 26))
        p.setPen(QPen(ink, 2.6 * s))
        p.drawPath(path)
        p.setBrush(ink)
        p.setPen(Qt.PenStyle.NoPen)
        p.drawPolygon(QPolygonF([pt(3, 12), pt(11, 5), pt(12, 17)]))
    p.end()
    return pixmap


def tool_icon(kind: str) -> QIcon:
    return multi_size_icon(lambda size: _glyph(kind, size))


class AnnotationTools(QObject):
    def __init__(self, window: QMainWindow, canvas: Canvas, editor: AnnotationEditor, panel: LayersPanel) -> None:
        super().__init__(window)
        self._window = window
        self._canvas = canvas
        self._editor = editor
        self._panel = panel
        self.tool = Tool.NAVIGATE
        self._press: QPointF | None = None  # screen position of the left press
        self._start: tuple[float, float] | None = None  # level-0 position of the left press
        self._mode: str | None = None  # "move" or "band" while dragging in Select
        self.draft: list[tuple[float, float]] = []  # corners of the region being drawn
        self._draft_item = QGraphicsPathItem()
        self._band_item = QGraphicsRectItem()
        for item in (self._draft_item, self._band_item):
            item.setVisible(False)
            canvas.add_item(item, Z_ANNOTATIONS + 60, ignore_bounds=True)
        band_pen = QPen(QColor(255, 255, 255), 1.5, Qt.PenStyle.DashLine)
        band_pen.setCosmetic(True)
        self._band_item.setPen(band_pen)
        self._band_item.setBrush(QBrush(QColor(255, 255, 255, 40)))
        self._build_actions()
        self._build_menus()
        canvas.viewport().installEventFilter(self)
        self._finish_keys = [QShortcut(QKeySequence(k), window) for k in (Qt.Key.Key_Return, Qt.Key.Key_Enter)]
        for shortcut in self._finish_keys:
            shortcut.setEnabled(False)
            shortcut.activated.connect(self.finish_polygon)
        # Esc drops a region being drawn. It is also Analysis › Cancel's key, which gives it up
        # while drawing (two enabled shortcuts on one key would both be ambiguous and do nothing).
        self._cancel_key = QShortcut(QKeySequence(Qt.Key.Key_Escape), window)
        self._cancel_key.setEnabled(False)
        self._cancel_key.activated.connect(self.cancel_draft)
        self._lent_shortcuts: list[QKeySequence] | None = None
        rectangle = getattr(getattr(window, "actions", None), "run_rectangle", None)
        if rectangle is not None:  # the analysis box is moved with the mouse: back to Navigate
            rectangle.toggled.connect(lambda on: on and self.set_tool(Tool.NAVIGATE))
        panel.current_class_chosen.connect(self.set_current_class)
        panel.reclass_requested.connect(self._reclass)
        editor.selection_changed.connect(self._selection_changed)
        self._selection_changed()

    # Actions, menus, toolbar -------------------------------------------------------------------
    def _action(self, text: str, shortcuts: list, tip: str, checkable: bool = False) -> QAction:
        action = QAction(text, self._window, checkable=checkable)
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setStatusTip(tip)
        shown = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{tip} ({shown})" if shown else tip)
        self._window.addAction(action)  # shortcuts work even when the menu bar is hidden
        return action

    def _build_actions(self) -> None:
        stack = self._editor.undo_stack
        self.undo = stack.createUndoAction(self._window, "&Undo")
        self.undo.setShortcuts([QKeySequence(QKeySequence.StandardKey.Undo)])
        self.redo = stack.createRedoAction(self._window, "&Redo")
        self.redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        for action, kind in ((self.undo, "undo"), (self.redo, "redo")):
            action.setIcon(tool_icon(kind))
            self._window.addAction(action)
        self.save = self._action("&Save Annotations", [QKeySequence.StandardKey.Save],
                                 "Save the annotations to their file (atomically; a dataset's original is kept as .orig)")
        self.save_as = self._action("Save Annotations &As…", ["Ctrl+Shift+S"],
                                    "Save the annotations as BreCaHAD JSON (.json) or QuPath GeoJSON (.geojson)")
        self.delete = self._action("&Delete Selected", [QKeySequence.StandardKey.Delete, "Backspace"],
                                   "Delete the selected points and regions (while drawing: the last corner)")
        self.select_all = self._action("Select &All Annotations", ["Ctrl+Shift+A"], "Select every shown point and region")
        self.save.triggered.connect(self._editor.save)
        self.save_as.triggered.connect(self._editor.save_as)
        self.delete.triggered.connect(self._delete)
        self.select_all.triggered.connect(self._editor.select_all)
        self.tool_group = QActionGroup(self._window)
        self.tools: dict[Tool, QAction] = {}
        for tool, text, key, tip in _TOOLS:
            action = self._action(text, [key], tip, checkable=True)
            action.setData(tool.value)
            action.setIcon(tool_icon(tool.value))
            self.tool_group.addAction(action)
            self.tools[tool] = action
        self.tools[Tool.NAVIGATE].setChecked(True)
        self.tool_group.triggered.connect(lambda action: self.set_tool(Tool(action.data())))
        self.class_group = QActionGroup(self._window)
        self.classes: dict[str, QAction] = {}
        for number, name in [*((n + 1, c) for n, c in enumerate(CLASSES)), (0, IGNORE_CLASS)]:
            label = "Ignore (regions)" if name == IGNORE_CLASS else class_label(name)
            action = self._action(f"&{number} {label}", [str(number)],
                                  f"New points and regions are {label}; the selection becomes {label}", True)
            action.setIcon(ring_icon(class_colour(name)))
            action.setData(name)
            self.class_group.addAction(action)
            action.triggered.connect(lambda _checked=False, name=name: self._class_key(name))
            self.classes[name] = action
        self.classes[self._editor.current_class].setChecked(True)

    def _build_menus(self) -> None:
        bar = self._window.menuBar()
        menus = {a.text(): a for a in bar.actions()}
        self.menu = QMenu("A&nnotate", self._window)
        self.menu.addActions([self.undo, self.redo])
        self.menu.addSeparator()
        self.menu.addActions(list(self.tools.values()))
        self.menu.addSeparator()
        class_menu = self.menu.addMenu("&Class")
        class_menu.addActions(list(self.classes.values()))
        self.menu.addActions([self.select_all, self.delete])
        before = menus.get("&Analysis")
        if before is not None:
            bar.insertMenu(before, self.menu)
        else:
            bar.addMenu(self.menu)
        file_menu = menus.get("&File")
        if file_menu is not None and file_menu.menu() is not None:
            entries = file_menu.menu().actions()
            after = next((k for k, a in enumerate(entries) if a is getattr(self._window.actions, "open_annotations", None)), None)
            anchor = entries[after + 1] if after is not None and after + 1 < len(entries) else None
            file_menu.menu().insertActions(anchor, [self.save, self.save_as])
        self.toolbar = QToolBar("Annotation tools", self._window)
        self.toolbar.setObjectName("annotation_toolbar")  # saveState() needs a name to restore it
        self.toolbar.setMovable(False)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.toolbar.addActions(list(self.tools.values()))
        self.toolbar.addSeparator()
        self.toolbar.addActions([self.undo, self.redo])
        self._window.addToolBar(self.toolbar)

    # Tool and class -----------------------------------------------------------------------------
    def set_tool(self, tool: Tool) -> None:
        self.cancel_draft()
        self.tool = tool
        self.tools[tool].setChecked(True)
        viewport = self._canvas.viewport()
        if tool is Tool.NAVIGATE:
            viewport.unsetCursor()
        else:
            viewport.setCursor(Qt.CursorShape.ArrowCursor if tool is Tool.SELECT else Qt.CursorShape.CrossCursor)
            picker = getattr(self._window, "region_picker", None)
            if picker is not None and picker.active:
                picker.cancel()  # one thing at a time under the mouse (and on Enter)
            show = getattr(self._window, "actions", None)
            if show is not None and not show.show_annotations.isChecked():
                show.show_annotations.setChecked(True)  # editing what one cannot see helps nobody
        self._window.statusBar().showMessage(dict((t, tip) for t, _, _, tip in _TOOLS)[tool], 6000)

    def set_current_class(self, name: str) -> None:
        if not name:
            return
        self._editor.current_class = name
        if name in self.classes:
            self.classes[name].setChecked(True)
        self._panel.set_current_class(name)

    def _class_key(self, name: str) -> None:
        self.set_current_class(name)
        if self._editor.selection:
            self._reclass(name)

    def _reclass(self, name: str) -> None:
        if name:
            self._editor.reclass_selection(name)

    def _selection_changed(self) -> None:
        count = self._editor.selection.count()
        self._panel.set_selection_count(count)
        self.delete.setEnabled(True)  # also removes a polygon's last corner while drawing

    def _delete(self) -> None:
        if self.draft and self.tool is Tool.POLYGON:
            self.draft.pop()
            self._show_draft()
            if not self.draft:
                self.cancel_draft()
            return
        self._editor.delete_selection()

    # Drawing regions --------------------------------------------------------------------------
    def cancel_draft(self) -> None:
        self.draft = []
        self._draft_item.setVisible(False)
        self._drafting(False)

    def _drafting(self, on: bool) -> None:
        """Enter and Esc finish or drop the region being drawn, only while there is one."""
        for shortcut in self._finish_keys:
            shortcut.setEnabled(on and self.tool is Tool.POLYGON)
        self._cancel_key.setEnabled(on)
        cancel = getattr(getattr(self._window, "actions", None), "cancel_heatmap", None)
        if cancel is None:
            return
        if on and self._lent_shortcuts is None:
            self._lent_shortcuts = cancel.shortcuts()
            cancel.setShortcuts([k for k in self._lent_shortcuts if k != QKeySequence(Qt.Key.Key_Escape)])
        elif not on and self._lent_shortcuts is not None:
            cancel.setShortcuts(self._lent_shortcuts)
            self._lent_shortcuts = None

    def finish_polygon(self) -> None:
        corners = self.draft
        self.cancel_draft()
        if len(corners) < 3 or not self._editor.add_region(np.array(corners)):
            self._window.statusBar().showMessage("A region needs at least three corners around an area", 6000)

    def _show_draft(self, cursor: tuple[float, float] | None = None) -> None:
        corners = self.draft + ([cursor] if cursor is not None else [])
        if not corners:
            self._draft_item.setVisible(False)
            return
        path = QPainterPath(QPointF(*corners[0]))
        for x, y in corners[1:]:
            path.lineTo(x, y)
        if len(corners) >= 3:
            path.closeSubpath()
        r, g, b = class_colour(self._editor.current_class)
        pen = QPen(QColor(r, g, b), 2.0, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self._draft_item.setPen(pen)
        self._draft_item.setBrush(QBrush(QColor(r, g, b, 35)))
        self._draft_item.setPath(path)
        self._draft_item.setVisible(True)

    # Mouse ------------------------------------------------------------------------------------
    def _image_point(self, event: QMouseEvent) -> tuple[float, float]:
        scene = self._canvas.mapToScene(event.position().toPoint())
        point = self._canvas.view.mapSceneToView(scene)
        return point.x(), point.y()

    def _screen_distance(self, a: QPointF, b: QPointF) -> float:
        return math.hypot(a.x() - b.x(), a.y() - b.y())

    def _per_screen_pixel(self) -> float:
        return 1.0 / max(self._canvas.zoom_level(), 1e-9)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if self.tool is Tool.NAVIGATE or not self._editor.has_image:
            return False
        kind = event.type()
        if kind not in (QEvent.Type.MouseButtonPress, QEvent.Type.MouseMove, QEvent.Type.MouseButtonRelease,
                        QEvent.Type.MouseButtonDblClick):
            return False
        left = Qt.MouseButton.LeftButton
        if kind == QEvent.Type.MouseMove:
            if not event.buttons() & left:
                if self.tool is Tool.POLYGON and self.draft:
                    self._show_draft(self._image_point(event))
                return False  # hover: the cursor readout keeps working
            self._drag(event)
            return True
        if event.button() != left:
            return False  # middle-button pan, right button: as usual
        if kind == QEvent.Type.MouseButtonPress:
            self._pressed(event)
        elif kind == QEvent.Type.MouseButtonRelease:
            self._released(event)
        elif self.tool is Tool.POLYGON and self.draft:  # double click: close the polygon
            self.finish_polygon()
        return True

    def _pressed(self, event: QMouseEvent) -> None:
        self._press = event.position()
        x, y = self._start = self._image_point(event)
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if self.tool is Tool.SELECT:
            hit = self._editor.hit(x, y, self._per_screen_pixel())
            if hit:
                if not _contains(self._editor.selection, hit):
                    self._editor.set_selection(self._editor.selection.union(hit) if shift else hit)
                self._mode = "move"
            else:
                self._mode = "band"
                if not shift:
                    self._editor.set_selection(Selection())
        elif self.tool is Tool.POLYGON:
            if len(self.draft) >= 3:
                fx, fy = self.draft[0]
                if math.hypot(fx - x, fy - y) / self._per_screen_pixel() <= CLOSE_REACH:
                    self.finish_polygon()
                    return
            self.draft.append((x, y))
            self._show_draft()
            self._drafting(True)
        elif self.tool is Tool.FREEHAND:
            self.draft = [(x, y)]
            self._show_draft()
            self._drafting(True)

    def _drag(self, event: QMouseEvent) -> None:
        if self._start is None:
            return
        x, y = self._image_point(event)
        sx, sy = self._start
        if self.tool is Tool.SELECT and self._mode == "move":
            self._editor.preview_move(x - sx, y - sy)
        elif self.tool is Tool.SELECT and self._mode == "band":
            self._band_item.setRect(QRectF(QPointF(sx, sy), QPointF(x, y)).normalized())
            self._band_item.setVisible(True)
        elif self.tool is Tool.FREEHAND and self.draft:
            lx, ly = self.draft[-1]
            if math.hypot(lx - x, ly - y) / self._per_screen_pixel() >= FREEHAND_STEP:
                self.draft.append((x, y))
                self._show_draft()

    def _released(self, event: QMouseEvent) -> None:
        if self._start is None or self._press is None:
            return
        x, y = self._image_point(event)
        sx, sy = self._start
        moved = self._screen_distance(event.position(), self._press) > CLICK_SLOP
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if self.tool is Tool.POINTS and not moved:
            if not self._editor.add_point(x, y):
                self._window.statusBar().showMessage("Points go on the image", 4000)
        elif self.tool is Tool.SELECT and self._mode == "move":
            if moved:
                self._editor.move_selection(x - sx, y - sy)
            else:
                self._editor.set_selection(self._editor.selection)  # redraw without the preview
        elif self.tool is Tool.SELECT and self._mode == "band":
            self._band_item.setVisible(False)
            if moved:
                self._editor.select_rect(sx, sy, x, y, add=shift)
        elif self.tool is Tool.FREEHAND:
            corners = self.draft
            self.cancel_draft()
            if len(corners) >= 3 and not self._editor.add_region(np.array(corners)):
                self._window.statusBar().showMessage("Draw around an area to make a region", 6000)
        self._start = self._press = None
        self._mode = None


def _contains(selection: Selection, part: Selection) -> bool:
    return all(set(i) <= set(selection.points.get(n, ())) for n, i in part.points.items()) and \
        set(part.regions) <= set(selection.regions)

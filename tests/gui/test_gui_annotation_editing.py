"""Editing annotations in the window: tools with real mouse events, undo/redo, prompts, recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QMessageBox

from .synthetic_slides import SyntheticSlide
from viewer.annotations import IGNORE_CLASS, load_annotation_file, load_annotations
from viewer.annotations.recovery import find_recovery
from viewer.gui.annotation_tools import Tool

Button = QMessageBox.StandardButton
REPO = Path(__file__).resolve().parents[2]


def screen_pos(window, x: float, y: float) -> QPoint:
    """Viewport position of level-0 image point (x, y)."""
    canvas = window.canvas
    return canvas.mapFromScene(canvas.view.mapViewToScene(QPointF(x, y)))


def click(qtbot, window, x: float, y: float, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.mouseClick(window.canvas.viewport(), Qt.MouseButton.LeftButton, modifier, screen_pos(window, x, y))


def drag(qtbot, window, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
    viewport = window.canvas.viewport()
    a, b = screen_pos(window, *start), screen_pos(window, *end)
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=a)
    for k in range(1, steps + 1):
        qtbot.mouseMove(viewport, a + (b - a) * k / steps)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=b)


def pixels(window, name: str) -> np.ndarray:
    slide = window.document.opened.slide
    return window.annotations.pixel_points(name, slide.width, slide.height)


@pytest.fixture
def editing(make_window, open_and_wait, small_image):
    window = make_window()
    open_and_wait(window, small_image)
    window.canvas.zoom_to(3.0)  # markers apart, easy to hit
    window.canvas.centre_on(100, 80)
    return window


def assert_close(a, b, tolerance: float = 1e-6) -> None:
    """Equal classes and regions, points within ``tolerance`` of the image size (BreCaHAD's 6 decimals)."""
    assert a.classes == b.classes and len(a.regions) == len(b.regions)
    for name in a.classes:
        assert np.abs(a.normalised(name) - b.normalised(name)).max(initial=0) <= tolerance, name
    for ra, rb in zip(a.regions, b.regions):
        assert ra.name == rb.name
        for x, y in zip(ra.rings, rb.rings):
            np.testing.assert_allclose(x, y, atol=1e-6)


def leave_saved(window) -> None:
    """Tests end with nothing unsaved, so closing the window asks nothing."""
    window.annotation_editor.undo_stack.setClean()


def test_add_move_delete_reclass_and_exact_undo_redo(qtbot, editing):
    window, editor, tools = editing, editing.annotation_editor, editing.annotation_tools
    states = [window.annotations]
    tumours = len(pixels(window, "tumor"))
    assert not window.isWindowModified()

    tools.set_tool(Tool.POINTS)
    untouched = window.annotation_layer._items["non_tumor"]
    click(qtbot, window, 90.0, 70.0)
    states.append(window.annotations)
    assert window.annotation_layer._items["non_tumor"] is untouched  # only the edited class is redrawn
    click(qtbot, window, 120.0, 95.0)
    states.append(window.annotations)
    added = pixels(window, "tumor")[-2:]
    np.testing.assert_allclose(added, [[90, 70], [120, 95]], atol=0.5)  # within a screen pixel at 300 %
    assert window.layers_panel.count_text("tumor") == str(tumours + 2)  # live count
    assert window.isWindowModified()

    tools.set_tool(Tool.SELECT)
    click(qtbot, window, 90.0, 70.0)  # a click selects the point under it
    assert editor.selection.points == {"tumor": (tumours,)}
    drag(qtbot, window, (90.0, 70.0), (100.0, 60.0))  # dragging moves it
    states.append(window.annotations)
    np.testing.assert_allclose(pixels(window, "tumor")[tumours], [100, 60], atol=0.5)
    np.testing.assert_allclose(pixels(window, "tumor")[tumours + 1], [120, 95], atol=0.5)  # the other stays

    drag(qtbot, window, (80.0, 50.0), (130.0, 100.0))  # rubber band on empty canvas: both new points
    assert editor.selection.points.get("tumor", ())[-2:] == (tumours, tumours + 1)
    selected = editor.selection.count()
    tools.classes["mitosis"].trigger()  # key 3: the selection becomes mitosis
    states.append(window.annotations)
    assert len(pixels(window, "mitosis")) == selected and window.layers_panel.count_text("mitosis") == str(selected)
    assert tools.delete.isEnabled()
    tools.delete.trigger()  # Del
    states.append(window.annotations)
    assert len(pixels(window, "mitosis")) == 0 and len(pixels(window, "tumor")) == tumours + 2 - selected

    stack = editor.undo_stack
    for k in range(len(states) - 1, 0, -1):  # Ctrl+Z all the way back: each state exactly
        tools.undo.trigger()
        assert window.annotations.same_as(states[k - 1]), k
    assert not window.isWindowModified() and window.annotations.same_as(states[0])
    for k in range(1, len(states)):  # Ctrl+Shift+Z forward again
        tools.redo.trigger()
        assert window.annotations.same_as(states[k]), k
    assert stack.index() == stack.count()
    assert tools.redo.shortcuts()[0].toString() == "Ctrl+Shift+Z" and tools.undo.shortcut().toString() == "Ctrl+Z"
    leave_saved(window)


def test_number_keys_and_the_layers_panel_reclass(qtbot, editing):
    window, editor, tools = editing, editing.annotation_editor, editing.annotation_tools
    tools.set_tool(Tool.SELECT)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    click(qtbot, window, *pixels(window, "tumor")[0])
    qtbot.keyClick(window.canvas.viewport(), Qt.Key.Key_5)  # 5 = apoptosis
    assert len(pixels(window, "apoptosis")) == 1 and editor.current_class == "apoptosis"
    panel = window.layers_panel
    panel.class_combo.setCurrentIndex(panel.class_combo.findData("lumen"))
    assert editor.current_class == "lumen"
    panel.apply_button.click()
    assert len(pixels(window, "apoptosis")) == 0 and len(pixels(window, "lumen")) == 1
    qtbot.keyClick(window.canvas.viewport(), Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(pixels(window, "apoptosis")) == 1
    qtbot.keyClick(window.canvas.viewport(), Qt.Key.Key_Delete)
    assert len(pixels(window, "apoptosis")) == 0
    leave_saved(window)


def test_polygon_and_freehand_regions_with_the_ignore_class(qtbot, editing):
    window, editor, tools = editing, editing.annotation_editor, editing.annotation_tools
    tools.set_current_class(IGNORE_CLASS)
    tools.set_tool(Tool.POLYGON)
    for corner in ((70, 60), (110, 60), (110, 90)):
        click(qtbot, window, *corner)
    assert len(tools.draft) == 3
    click(qtbot, window, 70.5, 60.5)  # a click on the first corner closes it
    assert not tools.draft
    (region,) = window.annotations.regions
    assert region.name == IGNORE_CLASS
    np.testing.assert_allclose(region.rings[0], [[70, 60], [110, 60], [110, 90]], atol=0.5)
    assert window.annotation_layer.region_count() == 1

    tools.set_current_class("tumor")
    tools.set_tool(Tool.FREEHAND)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    outline = np.stack([130 + 12 * np.cos(angles), 100 + 12 * np.sin(angles)], axis=1)
    viewport = window.canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=screen_pos(window, *outline[0]))
    for x, y in outline[1:]:
        qtbot.mouseMove(viewport, screen_pos(window, x, y))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=screen_pos(window, *outline[-1]))
    freehand = window.annotations.regions[-1]
    assert freehand.name == "tumor" and len(freehand.rings[0]) >= 12
    assert freehand.area() == pytest.approx(np.pi * 12**2, rel=0.15)
    assert window.layers_panel._region_labels[IGNORE_CLASS].text() == "1"

    tools.set_tool(Tool.SELECT)  # a click inside a region selects it; Del removes it
    click(qtbot, window, 100, 70)
    assert editor.selection.regions == (0,)
    tools.delete.trigger()
    assert [r.name for r in window.annotations.regions] == ["tumor"]
    tools.undo.trigger()
    assert [r.name for r in window.annotations.regions] == [IGNORE_CLASS, "tumor"]

    tools.set_tool(Tool.POLYGON)  # Esc drops a polygon being drawn
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    click(qtbot, window, 20, 20)
    click(qtbot, window, 40, 20)
    assert len(tools.draft) == 2
    assert QKeySequence(Qt.Key.Key_Escape) not in window.actions.cancel_heatmap.shortcuts()  # lent while drawing
    qtbot.keyClick(window.canvas.viewport(), Qt.Key.Key_Escape)
    assert not tools.draft and len(window.annotations.regions) == 2
    assert QKeySequence(Qt.Key.Key_Escape) in window.actions.cancel_heatmap.shortcuts()  # and given back
    leave_saved(window)


def test_save_writes_brecahad_with_a_sidecar_and_keeps_the_original(qtbot, editing, small_image):
    window, editor, tools = editing, editing.annotation_editor, editing.annotation_tools
    truth = small_image.parent.parent / "groundTruth" / "small.json"
    original = truth.read_bytes()
    editor.add_point(50, 50, "non_mitosis")
    editor.add_region(np.array([[10, 10], [60, 10], [60, 40]]), IGNORE_CLASS)
    tools.save.trigger()
    assert not window.isWindowModified()
    assert truth.with_name("small.json.orig").read_bytes() == original
    saved = load_annotations(truth)
    assert_close(saved, window.annotations)
    assert "small.regions.geojson" in window.status.currentMessage()  # the user is told where regions went
    assert "small.regions.geojson" in window.layers_panel.annotations_source.text()  # and it stays said
    editor.add_point(70, 70, "tumor")  # a second save keeps the first original
    tools.save.trigger()
    assert truth.with_name("small.json.orig").read_bytes() == original


def test_save_as_geojson_and_reopen(qtbot, editing, small_image, dialogs_seen):
    window, editor, tools = editing, editing.annotation_editor, editing.annotation_tools
    editor.add_point(70, 70, "tumor")
    editor.add_region(np.array([[10, 10], [60, 10], [60, 40]]), "tumor")
    target = small_image.parent / "mine.geojson"
    dialogs_seen.save_paths.append(str(target))
    tools.save_as.trigger()
    assert not window.isWindowModified() and editor.save_path == target
    data = json.loads(target.read_text())
    assert data["type"] == "FeatureCollection"
    assert {f["geometry"]["type"] for f in data["features"]} == {"MultiPoint", "Polygon"}
    slide = window.document.opened.slide
    assert_close(load_annotation_file(target, (slide.width, slide.height)), window.annotations)
    assert window.load_annotations_file(target)  # File › Open Annotations… reads GeoJSON too
    assert len(window.annotations.regions) == 1


def test_unsaved_changes_ask_save_discard_cancel(qtbot, editing, small_image, tiled_image, dialogs_seen, open_and_wait):
    window, editor = editing, editing.annotation_editor
    editor.add_point(50, 50)
    edited = window.annotations
    dialogs_seen.answer = Button.Cancel
    window.close_image()  # Cancel: nothing changes
    assert "unsaved changes" in dialogs_seen.expect("question")[1]
    assert window.document.opened is not None and window.annotations is edited and window.isWindowModified()
    window.close()  # Cancel on closing the window keeps it open
    dialogs_seen.expect("question")
    assert window.isVisible()

    dialogs_seen.answer = Button.Save  # opening another image: Save writes the file first
    open_and_wait(window, tiled_image)
    dialogs_seen.expect("question")
    truth = small_image.parent.parent / "groundTruth" / "small.json"
    assert len(load_annotations(truth).normalised("tumor")) == len(edited.normalised("tumor"))
    assert window.document.opened.slide.name == "tiled.tif" and not window.isWindowModified()

    editor.add_point(30, 30)
    dialogs_seen.answer = Button.Discard  # a bad annotations file is refused before asking
    bad = tiled_image.parent / "bad.geojson"
    bad.write_text('{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}')
    kept = window.annotations
    assert not window.load_annotations_file(bad)
    title, text = dialogs_seen.expect("warning")
    assert "bad.geojson" in text and "LineString" in text and window.annotations is kept
    window.close_image()  # Discard: closes without saving
    dialogs_seen.expect("question")
    assert window.document.opened is None and not window.isWindowModified()


def test_recovery_after_a_crash(qtbot, make_window, small_image, tmp_path, dialogs_seen):
    """A viewer process edits, waits for its recovery file and dies; the next start restores."""
    cache = Path(os.environ["HISTOVIEWER_CACHE_DIR"])
    script = textwrap.dedent(f"""
        import os, sys, time
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from PySide6.QtCore import QSettings, QTimer
        QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, {str(tmp_path / 'crash-settings')!r})
        from viewer.gui.app import create_application
        from viewer.gui.main_window import MainWindow
        app = create_application()
        window = MainWindow()
        window.show()
        window.open_image({str(small_image)!r})
        def edit():
            if window.document.opened is None:
                return QTimer.singleShot(50, edit)
            window.annotation_editor.add_point(11.5, 22.25, "mitosis")
            window.annotation_editor.add_point(33.0, 44.0, "tumor")
            wait()
        def wait():
            if any(os.scandir(os.path.join(os.environ["HISTOVIEWER_CACHE_DIR"], "recovery"))
                   if os.path.isdir(os.path.join(os.environ["HISTOVIEWER_CACHE_DIR"], "recovery")) else []):
                print("recovery written", flush=True)
                os._exit(9)  # a crash: no close, no save, no clean-up
            QTimer.singleShot(100, wait)
        QTimer.singleShot(0, edit)
        QTimer.singleShot(60000, lambda: os._exit(3))
        app.exec()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 9 and "recovery written" in result.stdout, result.stderr[-2000:]
    recovery = find_recovery(cache / "recovery", small_image)
    assert recovery is not None

    window = make_window()
    with qtbot.waitSignal(window.image_opened, timeout=20_000):
        window.start()  # no image given: the newest recovery is offered (the fixture answers Yes)
    title, text = dialogs_seen.expect("question")
    assert "did not close normally" in text and "small.tif" in text
    assert window.document.opened.slide.name == "small.tif"
    assert window.annotations.same_as(recovery.annotations) and window.isWindowModified()
    np.testing.assert_allclose(pixels(window, "mitosis")[-1], [11.5, 22.25], atol=1e-9)
    window.annotation_editor.undo_stack.undo()  # one undo goes back to the file's state
    assert len(pixels(window, "mitosis")) == 0
    window.annotation_editor.undo_stack.redo()
    dialogs_seen.answer = Button.Discard
    window.close()
    dialogs_seen.expect("question")
    assert find_recovery(cache / "recovery", small_image) is None  # discarded on purpose: gone


def test_the_recovery_file_follows_the_edits(qtbot, editing, small_image):
    window, editor = editing, editing.annotation_editor
    folder = editor.recovery_folder
    editor.add_point(40, 40)
    qtbot.waitUntil(lambda: find_recovery(folder, small_image) is not None, timeout=10_000)  # the timer wrote it
    assert find_recovery(folder, small_image).annotations.same_as(window.annotations)
    editor.undo_stack.undo()  # back to the saved state: nothing to recover
    assert find_recovery(folder, small_image) is None


def test_agreement_updates_after_edits(qtbot, editing, run_heatmap):
    window, editor = editing, editing.annotation_editor
    run_heatmap(window)
    before = {c.name: c.points for c in window.agreement_result.classes}
    editor.add_point(100, 80, "tumor")
    editor.add_point(101, 81, "tumor")
    qtbot.waitUntil(lambda: {c.name: c.points for c in window.agreement_result.classes}.get("tumor")
                    == before["tumor"] + 2, timeout=5000)
    leave_saved(window)


def test_points_stay_in_level0_pixels_on_a_zoomed_whole_slide(qtbot, make_window, monkeypatch, tmp_path):
    import viewer.gui.document as document

    slide = SyntheticSlide(width=60_000, height=40_000, downsamples=(1, 4, 16, 64), name="wsi.svs")
    path = tmp_path / "wsi.svs"
    path.write_bytes(b"x")
    monkeypatch.setattr(document, "open_slide", lambda p: slide)
    window = make_window()
    with qtbot.waitSignal(window.image_opened, timeout=20_000):
        window.open_image(path)
    window.canvas.zoom_to(2.0)
    window.canvas.centre_on(31_234.5, 20_345.25)
    qtbot.waitUntil(window.canvas.is_drawn, timeout=20_000)
    tools = window.annotation_tools
    tools.set_tool(Tool.POINTS)
    click(qtbot, window, 31_234.5, 20_345.25)
    np.testing.assert_allclose(pixels(window, "tumor")[-1], [31_234.5, 20_345.25], atol=0.5)  # half a screen px
    window.canvas.fit()  # zoomed out: the point is where it was put
    window.canvas.zoom_to(8.0)
    window.canvas.centre_on(31_234.5, 20_345.25)
    tools.set_tool(Tool.SELECT)
    click(qtbot, window, 31_234.5, 20_345.25)
    assert window.annotation_editor.selection.points == {"tumor": (0,)}
    assert window.annotation_editor.save_path is None
    leave_saved(window)


def test_a_qupath_file_with_unknown_classes_is_kept_and_said(qtbot, editing, small_image):
    window = editing
    qupath = small_image.parent / "qupath.geojson"
    qupath.write_text(json.dumps([
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[10, 10], [20, 30], [5000, 5]]},
         "properties": {"classification": {"name": "Stroma", "color": [150, 200, 150]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [50, 1], [50, 50], [1, 1]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}},
    ]))
    assert window.load_annotations_file(qupath)
    assert "Stroma" in window.annotations.classes and len(pixels(window, "Stroma")) == 2
    message = window.status.currentMessage()
    assert "'Stroma'" in message and "1 point(s) outside" in message
    assert window.layers_panel.count_text("Stroma") == "2"
    assert [r.name for r in window.annotations.regions] == [IGNORE_CLASS]


def test_exported_overlay_shows_the_edited_regions_like_the_cli(qtbot, editing, export_to, small_image, model_file,
                                                                 tmp_path):
    from PIL import Image

    from viewer.cli import main as cli_main

    window, editor = editing, editing.annotation_editor
    editor.add_region(np.array([[20, 20], [90, 25], [80, 90], [25, 80]]), IGNORE_CLASS)
    editor.add_region(np.array([[110, 30], [180, 40], [150, 120]]), "tumor")
    editor.save()  # BreCaHAD JSON + regions sidecar, where the CLI finds them
    window.layers_panel._class_boxes["non_tumor"].setChecked(False)  # hiding a class keeps the ignore region
    window.actions.show_heatmap.trigger()
    gui_file = tmp_path / "gui.png"
    export_to(window, window.actions.export_overlay, gui_file)
    cli_file = tmp_path / "cli.png"
    assert cli_main(["export", str(small_image), "--out", str(cli_file), "--no-heatmap", "--classes",
                     ",".join(c for c in window.annotations.classes if c != "non_tumor") + f",{IGNORE_CLASS}",
                     "--quiet"]) == 0
    gui, cli = np.asarray(Image.open(gui_file)), np.asarray(Image.open(cli_file))
    assert np.array_equal(gui, cli)
    plain = window.document.opened.slide.read_all()
    assert (gui[30:70, 30:70] != plain[30:70, 30:70]).any()  # the ignore region is drawn
    assert (gui[60, 140] != plain[60, 140]).any()  # and the tumour region

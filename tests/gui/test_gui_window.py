"""Opening files through the real actions, layer toggles, errors, recent files, drag and drop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QMimeData, QPointF, QRectF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QDockWidget

from viewer.gui.main_window import MainWindow


def test_open_through_the_menu_action(qtbot, make_window, dialogs_seen, small_image: Path) -> None:
    window = make_window()
    assert not window.actions.export_overlay.isEnabled()  # nothing to export yet
    dialogs_seen.open_paths.append(str(small_image))
    with qtbot.waitSignal(window.image_opened, timeout=20_000):
        window.actions.open.trigger()
    assert window.windowTitle().startswith("small.tif")
    assert window.canvas.image_size == (200, 160)
    assert window.stack.currentWidget() is window.canvas
    # groundTruth/small.json was found and loaded with the image
    assert window.annotations is not None and window.annotations.counts()["tumor"] == 4
    assert window.annotation_layer.is_class_shown("tumor")
    assert window.actions.export_overlay.isEnabled()
    # the view fits the image
    rect = window.canvas.view.viewRect()
    assert rect.width() >= 200 * 0.99 or rect.height() >= 160 * 0.99


def test_toggles_and_shortcuts(qtbot, make_window, open_and_wait, run_heatmap, small_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    heatmap_item = window.heatmap_layer.item
    assert heatmap_item.isVisible() and window.annotation_layer.is_class_shown("tumor")

    window.actions.show_annotations.trigger()
    assert not window.annotation_layer.is_class_shown("tumor")
    assert not window.layers_panel.annotations_group.isChecked()  # panel follows the action
    window.actions.show_annotations.trigger()
    assert window.annotation_layer.is_class_shown("tumor")

    window.activateWindow()
    window.canvas.setFocus()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window.canvas, Qt.Key.Key_H)
    assert not heatmap_item.isVisible() and not window.actions.show_heatmap.isChecked()
    qtbot.keyClick(window.canvas, Qt.Key.Key_A)
    assert not window.annotation_layer.is_class_shown("tumor")
    qtbot.keyClick(window.canvas, Qt.Key.Key_H)
    qtbot.keyClick(window.canvas, Qt.Key.Key_A)
    assert heatmap_item.isVisible() and window.annotation_layer.is_class_shown("tumor")

    # per-class toggle in the legend, opacity slider on the item
    window.layers_panel._class_boxes["tumor"].setChecked(False)
    assert not window.annotation_layer.is_class_shown("tumor")
    window.layers_panel.opacity_slider.setValue(80)
    assert abs(heatmap_item.opacity() - 0.8) < 1e-6
    window.actions.show_image.trigger()
    assert not window.canvas.image_item.isVisible()


def test_zoom_actions(qtbot, make_window, open_and_wait, small_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    window.actions.zoom_100.trigger()
    assert abs(window.canvas.zoom_level() - 1.0) < 0.02
    window.actions.zoom_in.trigger()
    assert window.canvas.zoom_level() > 1.2
    window.actions.zoom_out.trigger()
    window.actions.zoom_out.trigger()
    assert window.canvas.zoom_level() < 1.0
    window.actions.fit.trigger()
    assert window.canvas.view.viewRect().contains(QRectF(0, 0, 200, 160))
    assert "%" in window.status.zoom_label.text()


def test_cursor_readout(qtbot, make_window, open_and_wait, run_heatmap, small_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    # The readout takes colours from decoded tiles only (it never decodes on the main thread).
    qtbot.waitUntil(lambda: window.canvas.tile_layer.pixel_at(19, 19) is not None, timeout=20_000)
    window._show_cursor(19.5, 19.9)
    pixel = window.opened.slide.read_all()[19, 19]
    assert window.status.position_label.text().split() == ["x", "19", "y", "19"]
    assert window.status.rgb_label.text().split()[1:] == [str(v) for v in pixel]
    # (19.5, 19.9) is in cell (0, 0), the 8 px square centred on (16, 16); 20.0 would be cell 1
    assert window.status.probability_label.text() == f"p {window.heatmap[0, 0]:.3f}"
    window._show_cursor(-5, 3)
    assert window.status.position_label.text() == ""


def test_bad_file_keeps_the_previous_image(qtbot, make_window, dialogs_seen, open_and_wait,
                                           small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 40)
    dialogs_seen.open_paths.append(str(bad))
    with qtbot.waitSignal(window.open_failed, timeout=20_000):
        window.actions.open.trigger()
    title, text = dialogs_seen.expect("warning")
    assert "broken.tif" in text and "\n" not in text
    assert window.opened.slide.path == small_image
    assert window.windowTitle().startswith("small.tif")
    assert window.annotations is not None


def test_bad_annotations_warn_and_keep_the_old_ones(qtbot, make_window, dialogs_seen, open_and_wait,
                                                    small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    before = window.annotations
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    dialogs_seen.open_paths.append(str(bad))
    window.actions.open_annotations.trigger()
    assert "bad.json" in dialogs_seen.expect("warning")[1]
    assert window.annotations is before

    other = tmp_path / "other.json"
    other.write_text('{"mitosis": [{"x": 0.5, "y": 0.5}]}', encoding="utf-8")
    dialogs_seen.open_paths.append(str(other))
    window.actions.open_annotations.trigger()
    assert window.annotations.counts()["mitosis"] == 1
    assert window.annotation_layer.is_class_shown("mitosis")


def test_recent_files(qtbot, make_window, open_and_wait, small_image: Path, tiled_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    open_and_wait(window, tiled_image)
    assert window.settings.recent_files() == [str(tiled_image.resolve()), str(small_image.resolve())]
    window._fill_recent_menu()
    entries = [a for a in window.actions.recent_menu.actions() if a.toolTip().endswith(".tif")]
    assert [a.toolTip() for a in entries] == window.settings.recent_files()
    with qtbot.waitSignal(window.image_opened, timeout=20_000):
        entries[1].trigger()
    assert window.opened.slide.path.name == "small.tif"
    small_image.unlink()  # missing files are pruned from the list
    assert window.settings.recent_files() == [str(tiled_image.resolve())]


def test_drop_an_image(qtbot, make_window, small_image: Path) -> None:
    window = make_window()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(small_image))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.image_opened, timeout=20_000):
        window.dropEvent(event)
    assert window.opened.slide.path == small_image


def test_settings_persist_across_windows(qtbot, make_window, open_and_wait, small_image: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    panel = window.layers_panel
    panel.opacity_slider.setValue(70)
    panel.threshold_slider.setValue(25)
    panel.colormap_combo.setCurrentText("viridis")
    panel._class_boxes["tumor"].setChecked(False)
    window.actions.show_heatmap.trigger()
    window.actions.auto_run.trigger()
    agreement_dock = window.findChild(QDockWidget, "agreement_dock")
    agreement_dock.close()
    window.close()
    geometry = window.saveGeometry()

    again = make_window(auto_run=None)
    state = again.layers_panel.state
    assert (state.opacity, state.threshold, state.colormap) == (0.7, 0.25, "viridis")
    assert state.hidden_classes == {"tumor"} and not state.show_heatmap
    assert again.actions.auto_run.isChecked()
    assert not again.heatmap_layer.item.isVisible()
    # dock layout and geometry come back (offscreen Qt clamps sizes to its small screen, so
    # compare what was saved rather than pixel sizes)
    assert not again.findChild(QDockWidget, "agreement_dock").isVisible()
    assert again.findChild(QDockWidget, "layers_dock").isVisible()
    assert again.settings.window_geometry() == geometry


def test_close_image(qtbot, make_window, open_and_wait, small_image: Path) -> None:
    window: MainWindow = make_window()
    open_and_wait(window, small_image)
    window.actions.close_image.trigger()
    assert window.opened is None and window.stack.currentWidget() is window.placeholder
    assert window.windowTitle() == "HistoViewer"
    assert not window.actions.export_overlay.isEnabled()
    assert np.isfinite(window.canvas.zoom_level())


def test_drop_annotations_onto_an_open_image(qtbot, make_window, open_and_wait, small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    other = tmp_path / "other.json"
    other.write_text('{"lumen": [{"x": 0.25, "y": 0.5}, {"x": 0.5, "y": 0.5}]}', encoding="utf-8")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(other))])
    window.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                                Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: window.annotations.source == other)
    assert window.annotations.counts()["lumen"] == 2 and window.annotation_layer.is_class_shown("lumen")
    assert window.layers_panel._count_labels["lumen"].text() == "2"


def test_about_shows_version_and_model_card(qtbot, make_window) -> None:
    from viewer import __version__
    from viewer.gui.about import AboutDialog

    dialog = AboutDialog(None, make_window())
    text = dialog.browser.toPlainText()
    assert f"HistoViewer {__version__}" in text and "Research use only" in text
    assert "BreCaHAD" in text

"""Export Overlay equals `histoviewer export` pixel for pixel; Export Heatmap; overwrite questions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viewer.cli import main as cli_main


def test_overlay_export_matches_the_cli(qtbot, make_window, dialogs_seen, export_to, open_and_wait, run_heatmap,
                                        small_image: Path, model_file: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    panel = window.layers_panel
    panel.opacity_slider.setValue(60)
    panel.threshold_slider.setValue(30)
    panel.colormap_combo.setCurrentText("viridis")
    window.actions.export_legend.setChecked(True)
    gui_file = tmp_path / "gui.png"
    export_to(window, window.actions.export_overlay, gui_file)

    cli_file = tmp_path / "cli.png"
    code = cli_main(["export", str(small_image), "--out", str(cli_file), "--model", str(model_file),
                     "--opacity", "0.6", "--threshold", "0.3", "--colormap", "viridis", "--legend", "--quiet"])
    assert code == 0
    gui, cli = np.asarray(Image.open(gui_file)), np.asarray(Image.open(cli_file))
    assert gui.shape == cli.shape and gui.shape[1] > 200  # the legend panel widens it
    assert np.array_equal(gui, cli)

    # hidden layers are left out, as with --no-heatmap --no-annotations
    window.actions.show_heatmap.trigger()
    window.actions.show_annotations.trigger()
    window.actions.export_legend.setChecked(False)
    plain = tmp_path / "plain.png"
    export_to(window, window.actions.export_overlay, plain)
    assert np.array_equal(np.asarray(Image.open(plain)), window.opened.slide.read_all())


def test_overwrite_asks_first(qtbot, make_window, dialogs_seen, export_to, open_and_wait, small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    dialogs_seen.answer = dialogs_seen.answer.No
    dialogs_seen.save_paths.append(str(target))
    window.actions.export_overlay.trigger()
    assert "out.png" in dialogs_seen.expect("question")[1]
    assert target.read_bytes() == b"keep me"

    dialogs_seen.answer = dialogs_seen.answer.Yes
    export_to(window, window.actions.export_overlay, target)
    dialogs_seen.expect("question")
    assert Image.open(target).size == (200, 160)


def test_export_error_is_shown(qtbot, make_window, dialogs_seen, open_and_wait, small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    dialogs_seen.save_paths.append(str(tmp_path / "no such folder" / "x.png"))
    with qtbot.waitSignal(window.export_failed, timeout=30_000):
        window.actions.export_overlay.trigger()
    assert "does not exist" in dialogs_seen.expect("warning")[1]


def test_heatmap_export_writes_array_and_sidecar(qtbot, make_window, dialogs_seen, export_to, open_and_wait, run_heatmap,
                                                 small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    target = tmp_path / "heat.npy"
    (tmp_path / "heat.json").write_text("{}")  # an existing sidecar counts as an overwrite
    export_to(window, window.actions.export_heatmap, target)
    assert "heat.json" in dialogs_seen.expect("question")[1]
    np.testing.assert_array_equal(np.load(target), window.heatmap)
    meta = json.loads((tmp_path / "heat.json").read_text())
    assert meta["geometry"]["stride"] == 8 and meta["complete"] is True
    assert meta["image"]["file"] == "small.tif" and meta["model"]["file"] == "m.keras"


def test_agreement_csv(qtbot, make_window, dialogs_seen, open_and_wait, run_heatmap, small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    panel = window.agreement_panel
    assert panel.export_button.isEnabled()
    assert panel.table.item(0, 0).text() == "Tumour" and panel.table.item(0, 1).text() == "4"
    target = tmp_path / "agreement.csv"
    dialogs_seen.save_paths.append(str(target))
    with qtbot.waitSignal(window.exported, timeout=30_000):
        panel.export_button.click()
    assert target.read_text().splitlines()[0].startswith("row,class,points")


def test_hidden_classes_export_matches_cli_classes_option(qtbot, make_window, dialogs_seen, export_to, open_and_wait,
                                                          small_image: Path, tmp_path: Path) -> None:
    window = make_window()
    open_and_wait(window, small_image)
    window.actions.show_heatmap.trigger()  # heatmap off: no model needed on either side
    boxes = window.layers_panel._class_boxes
    hidden = [name for name in boxes if name != "tumor"]
    for name in hidden:
        boxes[name].setChecked(False)
    gui_file = tmp_path / "gui_classes.png"
    export_to(window, window.actions.export_overlay, gui_file)

    cli_file = tmp_path / "cli_classes.png"
    assert cli_main(["export", str(small_image), "--out", str(cli_file), "--no-heatmap", "--classes", "tumor"]) == 0
    gui, cli = np.asarray(Image.open(gui_file)), np.asarray(Image.open(cli_file))
    assert np.array_equal(gui, cli)
    everything = tmp_path / "all.png"
    assert cli_main(["export", str(small_image), "--out", str(everything), "--no-heatmap"]) == 0
    assert not np.array_equal(gui, np.asarray(Image.open(everything)))  # a marker really was hidden


def test_export_is_refused_when_the_image_closes_while_the_dialog_is_up(
        qtbot, make_window, dialogs_seen, open_and_wait, run_heatmap, small_image: Path, tmp_path: Path,
        monkeypatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    target = tmp_path / "late.png"

    def dialog_during_which_the_image_closes(*args, **kwargs):
        window.close_image()  # what a background open landing under the modal dialog does
        return str(target), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(dialog_during_which_the_image_closes))
    window.export_controller.export_overlay()
    assert "changed while the save dialog was open" in dialogs_seen.expect("warning")[1]
    assert not target.exists() and window.opened is None


# ------------------------------------------------------------------ whole slides: the options dialog


def test_whole_slide_export_offers_area_and_size_and_matches_the_cli(
        qtbot, make_window, dialogs_seen, export_to, open_and_wait, run_heatmap, model_file: Path, tmp_path: Path,
        monkeypatch) -> None:
    """A pyramidal slide: the dialog's visible area, longest side and smooth give the same
    pyramidal TIFF as `histoviewer export --region --max-size --smooth` on the same heatmap."""
    import tifffile
    from PySide6.QtCore import QRectF
    from PySide6.QtWidgets import QDialog
    from slide_factory import write_pyramidal_tiff

    from viewer.gui.export import OverlayOptionsDialog

    monkeypatch.setenv("HISTOVIEWER_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "heatmaps").mkdir(parents=True)  # the viewer does not create it (yet)
    slide = write_pyramidal_tiff(tmp_path / "slide.tif", 1100, 900, tile=128, levels=3)
    window = make_window()
    open_and_wait(window, slide)
    run_heatmap(window)
    store = window.heatmap_controller.store_path
    assert store is not None and store.is_dir()  # a whole slide's heatmap lives in a store
    window.canvas.view.setRange(QRectF(200, 150, 500, 400), padding=0)
    qtbot.wait(50)
    seen = {}

    def answer(dialog) -> int:
        seen["label"] = dialog.output_label.text()
        dialog.visible_button.setChecked(True)
        dialog.max_size_button.setChecked(True)
        dialog.max_size_spin.setValue(300)
        dialog.smooth_box.setChecked(True)
        seen["region"] = dialog.region()
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(OverlayOptionsDialog, "exec", answer)
    gui_file = tmp_path / "gui.tif"
    export_to(window, window.actions.export_overlay, gui_file)
    assert "Output: 1100 × 900 px" in seen["label"]  # full resolution fits a PNG: downsample 1
    x, y, w, h = seen["region"]
    assert 150 <= x <= 250 and 100 <= y <= 200 and w < 1100 and h < 900  # about what is on screen

    cli_file = tmp_path / "cli.tif"
    assert cli_main(["export", str(slide), "--out", str(cli_file), "--heatmap", str(store), "--region",
                     f"{x},{y},{w},{h}", "--max-size", "300", "--smooth", "--threshold", "0.5", "--quiet"]) == 0
    with tifffile.TiffFile(gui_file) as gui, tifffile.TiffFile(cli_file) as cli:
        gui_levels, cli_levels = gui.series[0].levels, cli.series[0].levels
        assert max(gui_levels[0].shape[:2]) == 300 and len(gui_levels) == len(cli_levels)
        for a, b in zip(gui_levels, cli_levels):
            assert np.array_equal(a.asarray(), b.asarray())
        gui_pixels = gui_levels[0].asarray()
    # The heatmap really is in the picture, smoothed: cell squares give other pixels.
    squares = tmp_path / "squares.tif"
    assert cli_main(["export", str(slide), "--out", str(squares), "--heatmap", str(store), "--region",
                     f"{x},{y},{w},{h}", "--max-size", "300", "--threshold", "0.5", "--quiet"]) == 0
    assert not np.array_equal(tifffile.imread(squares), gui_pixels)


def test_whole_slide_export_cancelled_in_the_dialog_writes_nothing(
        qtbot, make_window, dialogs_seen, open_and_wait, tmp_path: Path, monkeypatch) -> None:
    from PySide6.QtWidgets import QDialog
    from slide_factory import write_pyramidal_tiff

    from viewer.gui.export import OverlayOptionsDialog, default_downsample

    slide = write_pyramidal_tiff(tmp_path / "slide.tif", 900, 700, tile=128, levels=2)
    window = make_window()
    open_and_wait(window, slide)
    monkeypatch.setattr(OverlayOptionsDialog, "exec", lambda dialog: QDialog.DialogCode.Rejected)
    dialogs_seen.save_paths.append(str(tmp_path / "never.tif"))
    window.actions.export_overlay.trigger()
    assert dialogs_seen.save_paths == [str(tmp_path / "never.tif")]  # the save dialog never came
    assert not (tmp_path / "never.tif").exists()
    # The default downsample keeps a whole slide within what a PNG may hold.
    assert default_downsample((0, 0, 900, 700)) == 1.0
    assert default_downsample((0, 0, 80_000, 60_000)) == pytest.approx(8.67, abs=0.01)

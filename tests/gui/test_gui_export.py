"""Export Overlay equals `histoviewer export` pixel for pixel; Export Heatmap; overwrite questions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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

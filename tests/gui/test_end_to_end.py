"""End to end on a real BreCaHAD image: open, annotations load, heatmap runs, export matches the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from viewer.cli import main as cli_main

pytestmark = pytest.mark.data


def test_real_image_heatmap_and_export(qtbot, make_window, dialogs_seen, shared_data_dir: Path,
                                       model_file: Path, tmp_path: Path) -> None:
    image = sorted((shared_data_dir / "images").glob("*.tif"))[0]
    window = make_window(auto_run=True)
    tiles = []
    window.runner.tile_ready.connect(lambda *args: tiles.append(args[1:3]))
    dialogs_seen.open_paths.append(str(image))
    with qtbot.waitSignal(window.heatmap_finished, timeout=120_000) as done:
        window.actions.open.trigger()  # auto-run starts the heatmap once the image is shown
    assert done.args == [True]
    slide = window.opened.slide
    assert (slide.width, slide.height) == (1360, 1024)
    assert window.annotations.counts()["tumor"] > 0  # groundTruth/<stem>.json came along
    assert len(tiles) > 4 and np.isfinite(window.heatmap).all()
    assert window.agreement_panel.table.rowCount() >= 1 and "AUC" in window.agreement_panel.auc_label.text()

    out = tmp_path / "gui.png"
    dialogs_seen.save_paths.append(str(out))
    with qtbot.waitSignal(window.exported, timeout=60_000):
        window.actions.export_overlay.trigger()
    state = window.layers_panel.state
    cli_out = tmp_path / "cli.png"
    assert cli_main(["export", str(image), "--out", str(cli_out), "--model", str(model_file), "--quiet",
                     "--opacity", str(state.opacity), "--threshold", str(state.threshold),
                     "--colormap", state.colormap]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(cli_out)))

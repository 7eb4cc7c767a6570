"""Analysis › Improve Model from My Annotations…: a real fine-tune in a child process, from the window."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtWidgets import QPushButton

from viewer.model import file_sha256, read_model_metadata


@pytest.fixture
def improving(make_window, open_and_wait, small_image, run_heatmap):
    window = make_window()
    open_and_wait(window, small_image)
    run_heatmap(window)
    return window


def test_improve_model_fine_tunes_in_a_subprocess_shows_progress_and_loads_the_result(
        qtbot, improving, small_image, model_file, tmp_path):
    window, controller = improving, improving.improve_model_controller
    truth = small_image.parent.parent / "groundTruth" / "small.json"
    saved = truth.read_bytes()
    tumours = len(window.annotations.normalised("tumor"))
    window.annotation_editor.add_point(150, 40, "tumor")  # an unsaved correction
    assert window.annotation_editor.is_dirty
    out = tmp_path / "models" / "improved.keras"
    out.parent.mkdir()
    steps: list[tuple[int, int]] = []
    assert window.actions.improve_model.isEnabled()
    assert controller.start(out, epochs=2)
    controller.job.progress.connect(lambda done, total, _line: steps.append((done, total)))
    assert controller.job.is_running()
    assert controller.progress_dialog is not None and controller.progress_dialog.isVisible()
    # The window stays responsive while the process trains: the event loop runs (waitSignal spins it).
    with qtbot.waitSignal(controller.finished, timeout=180_000) as blocker:
        pass
    assert blocker.args == [True], controller.job.lines[-5:]
    assert steps == [(1, 2), (2, 2)]
    assert controller.progress_dialog is None  # closed
    # The unsaved edit was trained on (one tumour point more than the saved file), and stays unsaved.
    assert any(f"({tumours + 1} tumour points" in line for line in controller.job.lines), controller.job.lines
    assert window.annotation_editor.is_dirty and truth.read_bytes() == saved
    assert not controller.job.work_dir.exists()  # the temporary folder is gone
    record = read_model_metadata(out)
    assert record["finetuned_from"]["sha256"] == file_sha256(model_file)
    assert record["split"]["trained_here"] == ["small"]
    from viewer.gui.about import about_markdown  # Help › About says what the model in use came from

    assert f"Fine-tuned from `m.keras` (SHA-256 `{file_sha256(model_file)}`)" in about_markdown(str(out))
    # The new model is loaded and its heatmap computed; the Agreement panel shows before and after.
    qtbot.waitUntil(lambda: window.model_path == str(out), timeout=60_000)
    qtbot.waitUntil(lambda: window.agreement_controller.result is not None
                    and window.agreement_controller.before is not None, timeout=60_000)
    panel = window.agreement_panel
    assert not panel.table.isColumnHidden(3)
    assert "Before, with m.keras" in panel.auc_label.text()
    window.annotation_editor.undo_stack.setClean()


def test_improve_model_can_be_cancelled_and_writes_nothing(qtbot, improving, tmp_path):
    window, controller = improving, improving.improve_model_controller
    out = tmp_path / "never.keras"
    assert controller.start(out, epochs=100_000)  # far more than the test waits for
    with qtbot.waitSignal(controller.job.progress, timeout=180_000):
        pass  # training is under way in the child process
    job = controller.job
    with qtbot.waitSignal(controller.finished, timeout=30_000) as blocker:
        controller.progress_dialog.findChild(QPushButton).click()  # the dialog's Cancel button
    assert blocker.args == [False]
    assert not job.is_running() and not job.work_dir.exists()
    if os.name == "posix":  # stopped like Ctrl+C: the CLI cleaned up and said so, no kill needed
        assert any("interrupted" in line for line in job.lines), job.lines[-3:]
    assert not out.exists() and not list(tmp_path.glob(".never*"))  # the atomic write never happened
    assert "cancelled" in window.status.currentMessage()
    assert window.agreement_controller.before is None


def test_improve_model_refuses_what_it_cannot_do(qtbot, improving, model_file, dialogs_seen, tmp_path):
    window, controller = improving, improving.improve_model_controller
    from viewer.model import bundled_model_path

    assert not controller.start(Path(model_file))  # the model in use
    assert "never overwritten" in dialogs_seen.expect("warning")[1]
    assert not controller.start(bundled_model_path())
    assert "never overwritten" in dialogs_seen.expect("warning")[1]
    window.annotation_editor.select_all()
    window.annotation_editor.delete_selection()  # no tumour points left to learn from
    assert not controller.start(tmp_path / "x.keras")
    assert "no tumour points" in dialogs_seen.expect("warning")[1]
    assert controller.job is None
    window.annotation_editor.undo_stack.setClean()


def test_a_failing_fine_tune_says_why_in_one_line_and_keeps_the_model(qtbot, improving, model_file, dialogs_seen,
                                                                        tmp_path):
    window, controller = improving, improving.improve_model_controller
    out = tmp_path / "no such folder" / "x.keras"
    assert controller.start(out, epochs=1)
    with qtbot.waitSignal(controller.finished, timeout=180_000) as blocker:
        pass
    assert blocker.args == [False]
    title, text = dialogs_seen.expect("warning")
    assert title == "Improve Model failed" and "x.keras" in text and "\n" not in text
    assert not text.startswith("histoviewer")
    assert window.model_path == str(model_file) and window.model is not None  # the model in use stays
    assert not controller.job.work_dir.exists()

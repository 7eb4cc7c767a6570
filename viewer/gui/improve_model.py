"""Analysis › Improve Model from My Annotications…: fine-tune the current model on the open image.

The fine-tune is ``histoviewer train --init`` (the same core function as the CLI, with its
defaults), run by :class:`TeachingJob` in a **separate process** through QProcess: training
holds the GIL and both cores for tens of seconds, which a thread inside the viewer would turn
into a frozen window. The process's progress lines (``epoch 3/5 …``) drive a progress dialog
whose Cancel ends the process; the model file is written atomically by the CLI, so a cancelled
run leaves nothing behind.

Unsaved edits: the annotations *as on screen* are written, with their regions, into a temporary
BreCaHAD-layout folder beside a link to the image (:func:`viewer.finetune.teaching_folder`); the
user's own annotation file is not touched and the edits stay unsaved (the title keeps its ``*``),
so Save / Discard still mean what they meant. "Also train on the original training data" links
the other images of the image's dataset folder into it; the fine-tune keeps the current model's
validation and test images out of training.

When the process succeeds the new model is loaded (the heatmap re-runs with it) and the
Agreement panel shows the image's figures before and after.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from viewer.gui import dialogs

EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/(\d+)")


def histoviewer_command() -> tuple[str, list[str]]:
    """(program, leading arguments) that run the ``histoviewer`` CLI in a new process: the same
    interpreter with ``-m viewer``, or the frozen executable itself (it takes CLI commands)."""
    if getattr(sys, "frozen", False):
        return sys.executable, []
    return sys.executable, ["-m", "viewer"]


class TeachingJob(QObject):
    """One fine-tune in a child process; emits progress and the outcome, never touches widgets."""

    progress = Signal(int, int, str)  # epoch done, epochs, the line
    succeeded = Signal(str)  # the new model file
    failed = Signal(str)  # one line: why
    cancelled = Signal()

    def __init__(self, arguments: list[str], out: Path, work_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.out = out
        self.work_dir = work_dir
        self.last_error = ""
        self.lines: list[str] = []
        """Everything the process said (for the record and for tests)."""
        self._cancelling = False
        self._buffer = ""
        self.process = QProcess(self)
        program, lead = histoviewer_command()
        self.process.setProgram(program)
        self.process.setArguments(lead + arguments)
        # The CLI writes progress and errors to stderr: one stream, read as it comes.
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._error)

    def start(self) -> None:
        self.process.start()

    def is_running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def cancel(self) -> None:
        """Ask the process to stop, and kill it if it has not after 3 s (never blocks the window).

        On POSIX the request is SIGINT, which the CLI treats as Ctrl+C: Keras stops between
        batches and a half-written output is removed (viewer.atomic); elsewhere QProcess's
        terminate(). The model file is only ever renamed into place complete, so even a kill
        leaves no model behind."""
        if not self.is_running():
            return
        self._cancelling = True
        pid = self.process.processId()
        if os.name == "posix" and pid > 0:
            os.kill(pid, signal.SIGINT)
        else:
            self.process.terminate()
        QTimer.singleShot(3000, self._kill_if_running)

    def _kill_if_running(self) -> None:
        if self.is_running():
            self.process.kill()

    def wait(self, msecs: int = 5000) -> None:
        """Block until the process has ended (closing the window)."""
        self.process.waitForFinished(msecs)

    def _read(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._buffer = self._buffer.split("\n")
        for line in (ln.strip() for ln in lines):
            if not line:
                continue
            self.lines.append(line)
            match = EPOCH_LINE.match(line)
            if match:
                self.progress.emit(int(match.group(1)), int(match.group(2)), line)
            elif "WARNING" not in line and not line.startswith(("I0000", "W0000", "E0000")):
                # The CLI's one-line error is its last line; the message box needs no program name.
                self.last_error = line.removeprefix("histoviewer: error: ")

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._cancelling:
            self.cancelled.emit()
        elif code == 0 and status == QProcess.ExitStatus.NormalExit and self.out.is_file():
            self.succeeded.emit(str(self.out))
        else:
            self.failed.emit(self.last_error or f"the training process ended with code {code}")

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.failed.emit(f"the training process could not be started ({self.process.errorString()})")


class ImproveModelDialog(QDialog):
    """Where to write the new model, whether to add the original data, how many epochs."""

    def __init__(self, parent: QWidget, image_name: str, base_name: str, suggested: Path,
                 original: Path | None, originals: int, epochs: int) -> None:
        super().__init__(parent)
        self.setWindowTitle("Improve Model from My Annotations")
        intro = QLabel(
            f"Fine-tune <b>{base_name}</b> on the annotations of <b>{image_name}</b> as they are now, "
            "ignore regions included. Unsaved edits are used as they are, from a temporary copy: "
            "your annotation file is not changed and your edits stay unsaved.")
        intro.setWordWrap(True)
        self.path_edit = QLineEdit(str(suggested))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(browse)
        self.add_original = QCheckBox(
            f"Also train on the original training data ({originals} images in {original.name})" if original else
            "Also train on the original training data (not found beside this image)")
        self.add_original.setToolTip("Replaying the data the model learned from keeps it from forgetting it; "
                                     "the model's validation and test images are never trained on")
        self.add_original.setEnabled(original is not None)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(epochs)
        form = QFormLayout()
        form.addRow("New model file:", row)
        form.addRow("Epochs:", self.epochs)
        form.addRow(self.add_original)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start Training")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(buttons)
        self.resize(560, self.sizeHint().height())

    def _browse(self) -> None:
        chosen = dialogs.ask_save_path(self, "Save Improved Model As", self.path_edit.text(), dialogs.MODEL_FILTER,
                                       ".keras", also=(".metrics.json", ".curves.png"))
        if chosen:
            self.path_edit.setText(str(chosen[0]))


class ImproveModelController(QObject):
    """Analysis › Improve Model from My Annotations…: dialog, checks, the job, loading the result."""

    finished = Signal(bool)  # True = a new model was written and is being loaded

    def __init__(self, window, document, models, agreement, settings, status) -> None:
        super().__init__(window)
        self._window = window
        self._document = document
        self._models = models
        self._agreement = agreement
        self._settings = settings
        self._status = status
        self.job: TeachingJob | None = None
        self.progress_dialog: QProgressDialog | None = None

    def running(self) -> bool:
        return self.job is not None and self.job.is_running()

    def _base_path(self) -> Path:
        from viewer.model import bundled_model_path

        return Path(self._models.path) if self._models.path else bundled_model_path()

    def _problem(self) -> str | None:
        """Why fine-tuning cannot start now, or None."""
        from viewer.annotations import TUMOUR_CLASS
        from viewer.finetune import MAX_TEACHING_PIXELS

        opened, annotations = self._document.opened, self._document.annotations
        if self.running():
            return "A fine-tune is already running."
        if opened is None:
            return "Open an image with annotations first."
        slide = opened.slide
        from viewer.dataset import IMAGE_GLOBS

        if f"*{Path(slide.path).suffix.lower()}" not in IMAGE_GLOBS:
            return (f"{Path(slide.path).name}: fine-tuning reads microscope fields saved as "
                    f"{', '.join(g[2:].upper() for g in IMAGE_GLOBS)}.")
        if slide.width * slide.height > MAX_TEACHING_PIXELS:
            return (f"{slide.name} is {slide.width:,} × {slide.height:,} px; fine-tuning opens its images whole, "
                    f"so it works on microscope fields up to {MAX_TEACHING_PIXELS // 1_000_000} megapixels.")
        if annotations is None or not len(annotations.normalised(TUMOUR_CLASS)):
            return "The image has no tumour points to learn from: add some with Annotate › Add Points."
        if self._models.model is None and self._models.problem:
            return f"No model to improve: {self._models.problem}"
        return None

    def choose(self) -> None:
        """The menu command: check, ask, then start."""
        from viewer.finetune import FINETUNE_EPOCHS, original_dataset_for
        from viewer.dataset import find_dataset

        problem = self._problem()
        if problem:
            dialogs.warn(self._window, "Improve Model", problem)
            return
        slide = self._document.opened.slide
        base = self._base_path()
        folder = Path(self._settings.last_folder("models") or Path(slide.path).parent)
        suggested = folder / f"{base.stem}-{Path(slide.path).stem}.keras"
        original = original_dataset_for(slide.path)
        originals = len(find_dataset(original)) - 1 if original else 0
        dialog = ImproveModelDialog(self._window, Path(slide.path).name, base.name, suggested, original, originals,
                                    FINETUNE_EPOCHS)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        out = Path(dialog.path_edit.text()).expanduser()
        self.start(out, add_original=dialog.add_original.isChecked(), epochs=dialog.epochs.value())

    def start(self, out: str | Path, add_original: bool = False, epochs: int | None = None,
              allow_held_out: bool | None = None) -> bool:
        """Write the teaching folder and start the fine-tune; False (after a message) if refused.

        ``allow_held_out`` None asks the user when the image is a held-out image of the model."""
        from viewer.errors import InputError
        from viewer.finetune import original_dataset_for, teach_arguments, teaching_folder, teaching_images
        from viewer.model import bundled_model_path, read_model_metadata

        problem = self._problem()
        if problem:
            dialogs.warn(self._window, "Improve Model", problem)
            return False
        out = Path(out)
        if out.suffix.lower() != ".keras":
            out = out.with_suffix(".keras")
        base = self._base_path()
        if out.resolve() in (base.resolve(), bundled_model_path().resolve()):
            dialogs.warn(self._window, "Improve Model", f"{out.name} is the model in use or the bundled model, "
                         "which are never overwritten; choose another file.")
            return False
        slide = self._document.opened.slide
        original = original_dataset_for(slide.path) if add_original else None
        work = Path(tempfile.mkdtemp(prefix="histoviewer-teach-"))
        try:
            record = read_model_metadata(base)
            folder, stem, originals = teaching_folder(work / "data", slide.path, self._document.annotations, original)
        except (InputError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            dialogs.warn(self._window, "Improve Model", str(exc))
            return False
        images, why = teaching_images(record, stem, originals)
        if why and allow_held_out is None:
            answer = QMessageBox.question(self._window, "Train on a held-out image?", f"{why}\n\nTrain on it anyway?",
                                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                          QMessageBox.StandardButton.No)
            allow_held_out = answer == QMessageBox.StandardButton.Yes
        if why and not allow_held_out:
            shutil.rmtree(work, ignore_errors=True)
            return False
        self._settings.set_last_folder("models", str(out))
        # The figures of this image now, to show next to the new model's.
        self._agreement.set_before(self._models.name())
        self.job = TeachingJob(teach_arguments(base, folder, out, images, epochs, bool(why)), out, work, self)
        self.job.progress.connect(self._on_progress)
        self.job.succeeded.connect(self._on_succeeded)
        self.job.failed.connect(self._on_failed)
        self.job.cancelled.connect(self._on_cancelled)
        self._show_progress(epochs)
        self.job.start()
        self._status.showMessage(f"Fine-tuning {base.name} on {stem}…")
        return True

    def _show_progress(self, epochs: int | None) -> None:
        dialog = QProgressDialog("Starting the training process…", "Cancel", 0, epochs or 1, self._window)
        dialog.setWindowTitle("Improving the model")
        dialog.setWindowModality(Qt.WindowModality.NonModal)  # the viewer stays usable meanwhile
        dialog.setAutoClose(False)
        dialog.setAutoReset(False)
        dialog.setMinimumDuration(0)
        dialog.setMinimumWidth(380)
        dialog.setValue(0)
        dialog.canceled.connect(self.cancel)
        dialog.show()
        self.progress_dialog = dialog

    def _close_progress(self) -> None:
        if self.progress_dialog is not None:
            self.progress_dialog.canceled.disconnect(self.cancel)
            self.progress_dialog.close()
            self.progress_dialog.deleteLater()
            self.progress_dialog = None

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, done: int, total: int, line: str) -> None:
        if self.progress_dialog is not None:
            self.progress_dialog.setMaximum(total)
            self.progress_dialog.setValue(done)
            figures = dict(re.findall(r"\b(loss|accuracy) ([0-9.]+)", line))
            detail = (f"training loss {float(figures['loss']):.3f}, accuracy {float(figures['accuracy']):.3f}"
                      if {"loss", "accuracy"} <= figures.keys() else "")
            self.progress_dialog.setLabelText(f"Epoch {done} of {total} done\n{detail}".strip())

    def _on_succeeded(self, path: str) -> None:
        self._close_progress()
        self._status.showMessage(f"Improved model written to {path}; loading it…", 10000)
        self._window.load_model(path)
        self.finished.emit(True)

    def _on_failed(self, message: str) -> None:
        self._close_progress()
        self._agreement.set_before(None)
        dialogs.warn(self._window, "Improve Model failed", message)
        self.finished.emit(False)

    def _on_cancelled(self) -> None:
        self._close_progress()
        self._agreement.set_before(None)
        self._status.showMessage("Fine-tuning cancelled; no model was written", 10000)
        self.finished.emit(False)

    def shut_down(self) -> None:
        """Closing the window ends a fine-tune still running (nothing is written)."""
        if self.running():
            self.job.cancel()
            self.job.wait()
            if self.job.is_running():
                self.job.process.kill()
                self.job.wait()

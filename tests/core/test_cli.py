"""viewer.cli: exit codes and the one-line error contract.

0 success; 2 bad input, with exactly one line on stderr naming the file and the problem and no
traceback; 1 internal error, with a short message (``--debug``, before or after the
subcommand, shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from viewer import cli
from viewer.cli import COMMANDS, main

RGB = np.random.default_rng(7).integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _restore_debug_env(monkeypatch):
    # main(["--debug", ...]) sets HISTOVIEWER_DEBUG; monkeypatch puts the original back afterwards.
    monkeypatch.setenv("HISTOVIEWER_DEBUG", "")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A good image and a collection of bad inputs."""
    out = {}
    out["image"] = tmp_path / "good.tif"
    tifffile.imwrite(out["image"], RGB, photometric="rgb")
    out["corrupt_image"] = tmp_path / "corrupt.tif"
    out["corrupt_image"].write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    out["corrupt_model"] = tmp_path / "corrupt.keras"
    out["corrupt_model"].write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out["bad_json"] = tmp_path / "bad.json"
    out["bad_json"].write_text('{"tumor": [', encoding="utf-8")
    out["existing"] = tmp_path / "existing.npy"
    out["existing"].write_bytes(b"precious")
    out["existing_png"] = tmp_path / "existing.png"
    out["existing_png"].write_bytes(b"precious")
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(code: int, err: str, *words: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- heatmap


def test_heatmap_bad_inputs(capsys, files, tmp_path):
    out = tmp_path / "h.npy"
    cases = [
        (["heatmap", tmp_path / "missing.tif", "--out", out], ["missing.tif", "not found"]),
        (["heatmap", files["corrupt_image"], "--out", out], ["corrupt.tif"]),
        (["heatmap", files["bad_json"], "--out", out], ["bad.json", "not a TIFF"]),
        (["heatmap", tmp_path, "--out", out], ["folder"]),
        (["heatmap", files["image"], "--out", out, "--model", files["corrupt_model"]], ["corrupt.keras", "not a valid"]),
        (["heatmap", files["image"], "--out", out, "--model", tmp_path / "nope.keras"], ["nope.keras", "not found"]),
        (["heatmap", files["image"], "--out", files["existing"]], ["existing.npy", "--force"]),
        (["heatmap", files["image"], "--out", tmp_path / "no" / "dir" / "h.npy"], ["does not exist"]),
        (["heatmap", files["image"], "--out", files["image"] / "h.npy"], ["not a folder"]),
        (["heatmap", files["image"], "--out", out, "--stride", "abc"], ["--stride"]),
        (["heatmap", files["image"], "--out", out, "--stride", "0"], ["--stride"]),
        (["heatmap", files["image"]], ["--out"]),
        (["heatmap", files["image"], "--out", out, "--format", "gif"], ["--format"]),
        (["heatmap", files["image"], "--out", out, "--bogus"], ["--bogus"]),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert_bad_input(code, err, *words)
    assert files["existing"].read_bytes() == b"precious"
    assert not out.exists()


def test_unwritable_output_folder(capsys, files, tmp_path, monkeypatch):
    """Root writes anywhere: the unwritable folder is simulated through os.access."""
    from viewer import atomic

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, m, **kw: False if Path(p) == locked else real_access(p, m))
    code, _, err = run(capsys, "heatmap", files["image"], "--out", locked / "h.npy")
    assert_bad_input(code, err, "not writable")
    code, _, err = run(capsys, "export", files["image"], "--out", locked / "o.png", "--no-heatmap", "--no-annotations")
    assert_bad_input(code, err, "not writable")
    assert list(locked.iterdir()) == []


def test_full_disk_during_export_is_bad_input_and_leaves_nothing(capsys, files, tmp_path, monkeypatch):
    from viewer import atomic

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)
    out = tmp_path / "figure.png"
    code, _, err = run(capsys, "export", files["image"], "--out", out, "--no-heatmap", "--no-annotations")
    assert_bad_input(code, err, "disk is full")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".figure")]


# --------------------------------------------------------------------------- export


def test_export_bad_inputs(capsys, files, tmp_path):
    out = tmp_path / "o.png"
    quiet = ["--no-annotations"]
    cases = [
        (["export", tmp_path / "missing.tif", "--out", out, *quiet], ["missing.tif", "not found"]),
        (["export", files["corrupt_image"], "--out", out, *quiet], ["corrupt.tif"]),
        (["export", files["image"], "--out", out, "--model", files["corrupt_model"], *quiet], ["corrupt.keras"]),
        (["export", files["image"], "--out", out, "--no-heatmap", "--annotations", files["bad_json"]], ["bad.json", "JSON"]),
        (["export", files["image"], "--out", out, "--no-heatmap", "--annotations", tmp_path / "gone.json"], ["gone.json"]),
        (["export", files["image"], "--out", files["existing_png"], *quiet], ["existing.png", "--force"]),
        (["export", files["image"], "--out", tmp_path / "o.gif", *quiet], ["o.gif"]),
        (["export", files["image"], "--out", out, "--opacity", "2", *quiet], ["--opacity"]),
        (["export", files["image"], "--out", out, "--opacity", "nan", *quiet], ["--opacity"]),
        (["export", files["image"], "--out", out, "--threshold", "-1", *quiet], ["--threshold"]),
        (["export", files["image"], "--out", out, "--colormap", "nope", *quiet], ["--colormap"]),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert_bad_input(code, err, *words)
    assert files["existing_png"].read_bytes() == b"precious"
    assert not out.exists()


def test_export_with_auto_annotations_still_prints_one_line(capsys, files, tmp_path):
    code, _, err = run(capsys, "export", files["image"], "--out", tmp_path / "o.png", "--model", files["corrupt_model"])
    assert_bad_input(code, err, "corrupt.keras")


def test_export_without_model_writes_a_figure(capsys, files, tmp_path):
    out = tmp_path / "o.png"
    code, stdout, err = run(capsys, "export", files["image"], "--out", out, "--no-heatmap", "--no-annotations")
    assert code == 0, err
    assert out.is_file() and "wrote" in stdout


# --------------------------------------------------------------------------- evaluate / prepare / train


@pytest.fixture
def broken_dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "groundTruth").mkdir()
    (root / "images" / "a.tif").write_bytes(b"not an image at all")
    (root / "groundTruth" / "a.json").write_text("{}")
    return root


def test_evaluate_prepare_train_bad_inputs(capsys, files, tmp_path, broken_dataset):
    cases = [
        (["evaluate", "--data", tmp_path / "none"], ["none", "not found"]),
        (["evaluate", "--data", files["image"]], ["good.tif"]),
        (["evaluate", "--data", tmp_path], ["images/"]),
        (["evaluate", "--data", broken_dataset, "--model", files["corrupt_model"]], ["corrupt.keras"]),
        (["evaluate", "--data", broken_dataset, "--split", "nope"], ["--split"]),
        (["prepare", "--data", tmp_path / "none", "--out", tmp_path / "p.npz"], ["not found"]),
        (["prepare", "--data", broken_dataset, "--out", tmp_path / "p.npz"], ["a.tif", "not a TIFF"]),
        (["prepare", "--data", broken_dataset, "--out", files["existing"]], ["existing.npy"]),
        (["train", "--data", tmp_path / "none", "--out", tmp_path / "m.keras"], ["none"]),
        (["train", "--data", broken_dataset, "--out", files["existing"]], ["existing.npy"]),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert_bad_input(code, err, *words)


def test_evaluate_reports_a_bad_image_in_the_dataset(capsys, broken_dataset):
    """Loads the bundled model (TensorFlow), then meets the corrupt image."""
    from viewer.model import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("no bundled model")
    broken_json = broken_dataset / "groundTruth" / "a.json"
    code, _, err = run(capsys, "evaluate", "--data", broken_dataset, "--split", "all", "--no-heatmap")
    assert_bad_input(code, err, "a.tif")
    (broken_dataset / "images" / "a.tif").write_bytes(b"")
    broken_json.write_text("[]")
    code, _, err = run(capsys, "evaluate", "--data", broken_dataset, "--split", "all", "--no-heatmap")
    assert_bad_input(code, err)


# --------------------------------------------------------------------------- internal errors and --debug


@pytest.fixture
def broken_heatmap(monkeypatch):
    """Make the heatmap command hit a bug."""
    module = importlib.import_module("viewer.commands.heatmap")

    def boom(args):
        raise RuntimeError("something broke\nsecond line of detail")

    monkeypatch.setattr(module, "run", boom)
    return module


def test_internal_error_exits_1_with_a_short_message(capsys, broken_heatmap, files, tmp_path):
    code, _, err = run(capsys, "heatmap", files["image"], "--out", tmp_path / "h.npy")
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and "internal error" in lines[0] and "RuntimeError" in lines[0] and "--debug" in lines[0]
    assert "something broke" in lines[0] and len(lines[0]) < 300


@pytest.mark.parametrize("where", ["before", "after", "middle", "abbreviated"])
def test_debug_shows_the_traceback_wherever_it_is_placed(capsys, broken_heatmap, files, tmp_path, where):
    argv = ["heatmap", str(files["image"]), "--out", str(tmp_path / "h.npy")]
    if where == "before":
        argv = ["--debug", *argv]
    elif where == "after":
        argv = [*argv, "--debug"]
    elif where == "middle":
        argv = [*argv[:2], "--debug", *argv[2:]]
    else:
        argv = [*argv, "--deb"]  # argparse accepts unique prefixes
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: something broke" in err


def test_debug_after_the_subcommand_keeps_the_subcommand_options(capsys, monkeypatch, files, tmp_path):
    seen = {}
    module = importlib.import_module("viewer.commands.heatmap")

    def spy(args):
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(module, "run", spy)
    assert main(["heatmap", str(files["image"]), "--out", "h.npy", "--stride", "16", "--debug"]) == 0
    assert seen["debug"] is True and seen["stride"] == 16 and seen["out"] == "h.npy"
    seen.clear()
    assert main(["--debug", "heatmap", str(files["image"]), "--out", "h.npy"]) == 0
    assert seen["debug"] is True  # the subcommand's --debug default must not reset it
    seen.clear()
    assert main(["heatmap", str(files["image"]), "--out", "h.npy"]) == 0
    assert seen["debug"] is False


def test_every_subcommand_accepts_debug():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)
    for name, sub in subparsers.choices.items():
        assert "--debug" in sub._option_string_actions, name


def test_bad_input_with_debug_shows_traceback_and_still_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "heatmap", tmp_path / "missing.tif", "--out", tmp_path / "h.npy", "--debug")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("histoviewer: error:")


def test_interrupt_exits_130(capsys, monkeypatch, files, tmp_path):
    module = importlib.import_module("viewer.commands.heatmap")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    code, _, err = run(capsys, "heatmap", files["image"], "--out", tmp_path / "h.npy")
    assert code == 130 and err.strip() == "histoviewer: interrupted"


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (MemoryError(), 1, ["out of memory"]),
        (OSError(errno.ENOSPC, "No space left on device", "/data/out.npy"), 2, ["/data/out.npy", "No space"]),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 2, ["/data/x", "Permission denied"]),
        (OSError(errno.EIO, "Input/output error"), 1, ["internal error", "OSError"]),
        (SystemExit("a string exit"), 1, ["a string exit"]),
    ],
)
def test_other_failures(capsys, monkeypatch, files, tmp_path, exc, code, words):
    module = importlib.import_module("viewer.commands.heatmap")

    def fail(args):
        raise exc

    monkeypatch.setattr(module, "run", fail)
    got, _, err = run(capsys, "heatmap", files["image"], "--out", tmp_path / "h.npy")
    assert got == code
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


def test_broken_pipe_is_quiet(capsys, monkeypatch, files, tmp_path):
    module = importlib.import_module("viewer.commands.heatmap")

    def pipe(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(module, "run", pipe)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)  # don't touch pytest's real stdout
    code, _, err = run(capsys, "heatmap", files["image"], "--out", tmp_path / "h.npy")
    assert code == 1 and err == ""


def test_library_warnings_and_log_records_stay_off_stderr(capsys, monkeypatch, files, tmp_path):
    module = importlib.import_module("viewer.commands.heatmap")

    def chatty(args):
        warnings.warn("some library deprecation", DeprecationWarning)
        warnings.warn("some library remark", UserWarning)
        logging.getLogger("absl").warning("absl says something")
        logging.getLogger("tensorflow").warning("tf says something")
        return 0

    monkeypatch.setattr(module, "run", chatty)
    code, _, err = run(capsys, "heatmap", files["image"], "--out", tmp_path / "h.npy")
    assert code == 0 and err == ""
    assert logging.root.manager.disable == logging.NOTSET  # restored after the command


# --------------------------------------------------------------------------- top level


def test_help_version_and_no_command(capsys):
    code, top, _ = run(capsys, "--help")
    assert code == 0 and "usage: histoviewer" in top
    for name in COMMANDS:
        assert name in top
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and f"histoviewer {name}" in out and "--debug" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("histoviewer ")


def test_unknown_option_and_mistyped_command(capsys):
    code, _, err = run(capsys, "--bogus", "heatmap", "x.tif", "--out", "y.npy")
    assert_bad_input(code, err, "--bogus")
    code, _, err = run(capsys, "heatmapp", "x.tif")
    assert_bad_input(code, err, "did you mean 'heatmap'")
    code, _, err = run(capsys, "expor")
    assert_bad_input(code, err, "'export'")


def test_gui_is_chosen_only_without_a_command():
    assert cli._wants_gui([]) and cli._wants_gui(["image.tif"]) and cli._wants_gui(["--debug", "image.tif"])
    assert not cli._wants_gui(["heatmap", "x.tif"]) and not cli._wants_gui(["--debug", "export"])
    assert not cli._wants_gui(["--help"]) and not cli._wants_gui(["--version"])


def test_gui_unavailable_is_a_short_message(capsys, monkeypatch, tmp_path):
    """A broken Qt install: the launcher's import of the GUI fails; one line, exit 1."""
    from viewer import launcher

    monkeypatch.setattr(launcher, "display_problem", lambda **_: None)
    monkeypatch.setitem(sys.modules, "viewer.gui.app", None)  # makes the import raise ImportError
    image = tmp_path / "x.tif"
    image.write_bytes(b"x")
    code = launcher.main([str(image)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and "cannot start the viewer window" in err


def test_cli_main_without_a_window_refuses_the_gui(capsys, tmp_path):
    """viewer.cli never imports the GUI: only the launcher passes it a way to open the window."""
    image = tmp_path / "x.tif"
    image.write_bytes(b"x")
    code, _, err = run(capsys, image)
    assert_bad_input(code, err, "viewer.launcher")


# --------------------------------------------------------------------------- real subprocesses


def _subprocess(*argv: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HISTOVIEWER_DEBUG",)}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "viewer", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_subprocess_bad_input_prints_one_line_and_no_traceback(files, tmp_path):
    result = _subprocess("heatmap", str(tmp_path / "missing.tif"), "--out", "h.npy", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("histoviewer: error:") and "missing.tif" in result.stderr


def test_subprocess_model_refused_after_importing_tensorflow_prints_one_line(files, tmp_path):
    """A .keras zip that passes the cheap checks makes Keras (and TF's chatty C++ side) load."""
    model = tmp_path / "broken.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("metadata.json", json.dumps({"keras_version": "3"}))
    result = _subprocess("heatmap", str(files["image"]), "--out", "h.npy", "--model", str(model), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "broken.keras" in result.stderr and "Traceback" not in result.stderr


def test_subprocess_internal_error_and_debug(files, tmp_path):
    code = (
        "import sys, viewer.commands.heatmap as h\n"
        "def boom(args): raise ZeroDivisionError('division by zero')\n"
        "h.run = boom\n"
        "from viewer.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, "-c", code, "heatmap", str(files["image"]), "--out", "h.npy"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "internal error: ZeroDivisionError" in result.stderr
    result = subprocess.run([*argv, "--debug"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr

"""The launcher's check before Qt starts: no display, or Qt's xcb libraries missing, is one line
naming what is missing and the apt-get line, and exit 2 (instead of Qt's SIGABRT)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from viewer.display_check import README_PACKAGES, apt_packages, display_problem, missing_xcb_libraries, xcb_plugin_path

LINUX = "linux"


def test_no_display_is_said_plainly():
    message = display_problem(env={}, platform=LINUX, missing_libraries=lambda: [])
    assert "no display" in message and "xvfb-run" in message and "--help" in message
    assert "\n" not in message


def test_missing_libraries_are_named_with_their_packages():
    missing = ["libxcb-cursor.so.0", "libxcb-icccm.so.4"]
    message = display_problem(env={"DISPLAY": ":0"}, platform=LINUX, missing_libraries=lambda: missing)
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4" in message
    assert message.endswith("sudo apt-get install -y libxcb-cursor0 libxcb-icccm4")
    assert "README" in message and "\n" not in message


def test_an_unknown_library_asks_for_the_readme_list():
    assert apt_packages(["libfoo.so.9"]) == list(README_PACKAGES)


@pytest.mark.parametrize("env", [
    {"QT_QPA_PLATFORM": "offscreen"},
    {"QT_QPA_PLATFORM": "wayland;xcb"},
    {"WAYLAND_DISPLAY": "wayland-0"},
    {"DISPLAY": ":0"},
])
def test_silent_when_a_window_can_open_or_another_plugin_was_chosen(env):
    assert display_problem(env=env, platform=LINUX, missing_libraries=lambda: []) is None


def test_silent_on_other_systems_and_when_it_cannot_tell():
    assert display_problem(env={}, platform="win32") is None
    assert display_problem(env={}, platform="darwin") is None
    assert display_problem(env={"DISPLAY": ":0"}, platform=LINUX, missing_libraries=lambda: None) is None


def test_xcb_plugin_is_found_without_importing_qt():
    code = ("import sys; from viewer.display_check import xcb_plugin_path; p = xcb_plugin_path(); "
            "print(p); assert not any(m.startswith('PySide6') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if sys.platform.startswith("linux"):
        assert result.stdout.strip().endswith("libqxcb.so")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is Linux only")
def test_missing_libraries_agree_with_the_dynamic_loader():
    """Every library reported missing really fails to load here."""
    import ctypes

    missing = missing_xcb_libraries()
    assert missing is not None and xcb_plugin_path() is not None
    for soname in missing:
        with pytest.raises(OSError):
            ctypes.CDLL(soname)


def _launch(tmp_path: Path, env_extra: dict[str, str], fake_ldd: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(env_extra)
    if fake_ldd is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        ldd = bin_dir / "ldd"
        ldd.write_text(f"#!/bin/sh\nprintf '{fake_ldd}'\n", encoding="utf-8")
        ldd.chmod(ldd.stat().st_mode | stat.S_IEXEC)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "viewer"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check is for Linux")
def test_launch_without_a_display_exits_2_with_one_line(tmp_path):
    result = _launch(tmp_path, {})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("histoviewer: error: cannot open a window: there is no display")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check is for Linux")
def test_launch_with_missing_xcb_libraries_exits_2_before_qt(tmp_path):
    """ldd (here a stand-in that reports libxcb-cursor missing) decides; Qt is never started."""
    result = _launch(tmp_path, {"DISPLAY": ":99"},
                     fake_ldd="\\tlibxcb-cursor.so.0 => not found\\n\\tlibc.so.6 => /lib/libc.so.6 (0x1)\\n")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "libxcb-cursor.so.0" in line and line.endswith("sudo apt-get install -y libxcb-cursor0")

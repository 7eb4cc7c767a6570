"""Before Qt starts: is there a screen, and can Qt's xcb plugin load?

Without a display, or without the few X11 libraries Qt's xcb platform plugin needs, Qt prints a
paragraph and aborts the process (SIGABRT) - a core dump is a poor first impression of a viewer.
This check runs first, without importing Qt, and turns both cases into one line that says what is
missing and the ``apt-get`` line that fixes it. It only speaks when it is sure: another platform
plugin (offscreen, wayland, vnc...), another operating system, or a check it cannot make all
leave the decision to Qt.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

README_SECTION = "README.md, 'A real window on a bare Linux machine'"

XCB_LIBRARIES = {
    # soname -> Debian/Ubuntu package: what Qt 6's libqxcb.so and the Qt libraries under it load.
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
}

README_PACKAGES = (
    # The line in README.md: used when a missing library is not in the table above.
    "libxcb-cursor0", "libxkbcommon-x11-0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0",
    "libxcb-randr0", "libxcb-render-util0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xkb1",
    "libx11-xcb1", "libegl1", "libgl1", "libfontconfig1", "libdbus-1-3", "libglib2.0-0",
)

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def display_problem(
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    missing_libraries: Callable[[], list[str] | None] | None = None,
    prog: str = "histoviewer",
) -> str | None:
    """One line saying why Qt could not open a window here, or None when it should be able to.

    ``missing_libraries`` returns the sonames Qt's xcb plugin cannot load (None: cannot tell);
    tests pass their own, the launcher uses :func:`missing_xcb_libraries`.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux"):
        return None  # Windows and macOS always have their platform plugin
    requested = [name.split(":")[0].strip() for name in env.get("QT_QPA_PLATFORM", "").split(";") if name.strip()]
    if requested and requested[0] != "xcb":
        return None  # offscreen, wayland, vnc...: the user chose; Qt reports its own problems
    if not requested and env.get("WAYLAND_DISPLAY"):
        return None  # Qt 6 uses its wayland plugin in a Wayland session
    if not env.get("DISPLAY"):
        return (
            "cannot open a window: there is no display (DISPLAY is not set). Run it in a desktop session, "
            f"or give it a virtual screen: 'xvfb-run {prog}' (sudo apt-get install -y xvfb); "
            f"the headless commands work without one: '{prog} --help'"
        )
    missing = (missing_libraries or missing_xcb_libraries)()
    if not missing:
        return None
    return (
        f"cannot open a window: Qt's xcb platform plugin needs system libraries that are missing: "
        f"{', '.join(missing)} (see {README_SECTION}); install them with: "
        f"sudo apt-get install -y {' '.join(apt_packages(missing))}"
    )


def apt_packages(sonames: Iterable[str]) -> list[str]:
    """Debian packages providing ``sonames``; the README's whole list if any is unknown."""
    sonames = list(sonames)
    if any(name not in XCB_LIBRARIES for name in sonames):
        return list(README_PACKAGES)
    return sorted({XCB_LIBRARIES[name] for name in sonames})


def xcb_plugin_path() -> Path | None:
    """Qt's xcb platform plugin of the PySide6 that would be imported (found without importing it)."""
    roots = []
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        roots.append(Path(sys._MEIPASS) / "PySide6")
    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots.extend(Path(p) for p in spec.submodule_search_locations)
    for root in roots:
        plugin = root / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def missing_xcb_libraries() -> list[str] | None:
    """Sonames the xcb plugin needs and the dynamic loader cannot find; None when unknown.

    ``ldd`` on the plugin gives the exact, transitive list (with Qt's own libraries found through
    the plugin's RUNPATH, in a wheel or in the bundle). Without ``ldd`` each library of the table
    is tried with ``dlopen``.
    """
    plugin = xcb_plugin_path()
    if plugin is None:
        return None
    ldd = shutil.which("ldd")
    if ldd:
        try:
            result = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            result = None
        if result is not None and result.returncode == 0:
            return sorted(set(_NOT_FOUND.findall(result.stdout)))
    missing = []
    for soname in XCB_LIBRARIES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    return missing

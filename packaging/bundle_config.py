"""What the bundle is called on each platform, and what trimming leaves out.

Shared by histoviewer.spec (PyInstaller), build.py and smoke_test.py, so the three agree on
names and paths. Plain Python: no PyInstaller import.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_NAME = "HistoViewer"
"""The bundle folder (dist/HistoViewer) and the macOS application (dist/HistoViewer.app)."""
EXE_NAME = "histoviewer"
BUNDLE_IDENTIFIER = "io.github.histoviewer.HistoViewer"  # the AppStream id too

DOCUMENT_TYPES = [
    # macOS "Open with" (Info.plist): the same types as the Linux desktop entry.
    {"CFBundleTypeName": "TIFF image or slide", "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Alternate",
     "CFBundleTypeExtensions": ["tif", "tiff", "svs", "ndpi", "scn"]},
    {"CFBundleTypeName": "Whole-slide image", "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Owner",
     "CFBundleTypeExtensions": ["mrxs", "vms", "bif"]},
]

TRIM_EXCLUDES = [
    # Python modules nothing in HistoViewer imports, that hooks or optional imports pull in.
    "tkinter", "_tkinter", "IPython", "jupyter_client", "pytest", "hypothesis", "sphinx",
    # Qt modules the viewer never uses (each one drags in its libQt6*.so and plugins). Not
    # QtOpenGL, QtOpenGLWidgets, QtSvg and QtTest: pyqtgraph imports them when it is imported.
    "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtQuickWidgets", "PySide6.QtQuick3D", "PySide6.QtNetwork",
    "PySide6.QtSql", "PySide6.QtPdf", "PySide6.QtPdfWidgets", "PySide6.QtDesigner", "PySide6.QtHelp",
    "PySide6.QtUiTools", "PySide6.QtXml", "PySide6.QtConcurrent", "PySide6.QtDBus", "PySide6.QtSvgWidgets",
    "PySide6.QtPrintSupport", "PySide6.QtMultimedia", "PySide6.QtWebEngineCore", "PySide6.QtCharts",
    # matplotlib draws the training curves with the Agg backend only.
    "matplotlib.backends.backend_qtagg", "matplotlib.backends.backend_qt", "matplotlib.backends.backend_qt5agg",
    "matplotlib.backends.backend_tkagg", "matplotlib.backends.backend_tkcairo", "matplotlib.backends.backend_webagg",
    "matplotlib.backends.backend_wx", "matplotlib.backends.backend_wxagg", "matplotlib.backends.backend_gtk3",
    "matplotlib.backends.backend_gtk4", "matplotlib.backends.backend_macosx", "matplotlib.backends.backend_nbagg",
    # TensorFlow parts the engine never imports. `import tensorflow` itself imports nearly all of
    # TensorFlow (TFLite, TensorRT stubs, the debugger, the profiler, tools: measured with
    # sys.modules after a heatmap), so only StableHLO's 24 MB extension can go; the 750 MB
    # libtensorflow_cc.so.2 is the engine itself.
    "tensorflow.compiler.mlir.stablehlo",
    # pyqtgraph's OpenGL 3-D items and example programs.
    "pyqtgraph.opengl", "pyqtgraph.examples", "pyqtgraph.jupyter",
]

TRIMMED_FOLDERS = ("tests",)
"""Folders (any depth) dropped from the bundle: libraries' own test suites."""
KEEP_TEST_FOLDERS = ("tensorflow/", "keras/")
"""Packages whose test helpers are imported at run time (``import tensorflow`` imports
``tensorflow._api.v2.__internal__.test``): never trimmed by folder name."""


TRIMMED_FILES = (
    # Qt platform plugins for embedded screens, VNC and Vulkan displays, and what only they load;
    # xcb (X11), wayland, offscreen and minimal stay.
    "PySide6/Qt/plugins/platforms/libqeglfs.so", "PySide6/Qt/plugins/platforms/libqlinuxfb.so",
    "PySide6/Qt/plugins/platforms/libqminimalegl.so", "PySide6/Qt/plugins/platforms/libqvkkhrdisplay.so",
    "PySide6/Qt/plugins/platforms/libqvnc.so", "PySide6/Qt/plugins/egldeviceintegrations/*",
    "PySide6/Qt/plugins/generic/*", "PySide6/Qt/lib/libQt6EglFSDeviceIntegration.so*",
    "PySide6/Qt/lib/libQt6EglFsKmsSupport.so*",
    # Qt's translations of its own dialogs: HistoViewer is in English and installs no translator.
    "PySide6/Qt/translations/*",
)
"""Files (bundle paths, fnmatch patterns) dropped when trimming."""


def is_trimmed_file(path: str) -> bool:
    """True for a collected binary or data file that trimming leaves out."""
    from fnmatch import fnmatch

    path = path.replace("\\", "/")
    return is_trimmed_path(path) or any(fnmatch(path, pattern) for pattern in TRIMMED_FILES)


def is_trimmed_path(path: str) -> bool:
    """True for a file or module path inside a test-suite or examples folder of a library."""
    path = path.replace("\\", "/")
    if path.startswith(KEEP_TEST_FOLDERS):
        return False
    return any(part in TRIMMED_FOLDERS for part in path.split("/")[:-1])


def executable(dist: Path, platform: str = sys.platform) -> Path:
    """The bundle's executable under ``dist`` on ``platform``."""
    if platform == "darwin":
        return dist / f"{APP_NAME}.app" / "Contents" / "MacOS" / EXE_NAME
    suffix = ".exe" if platform.startswith("win") else ""
    return dist / APP_NAME / f"{EXE_NAME}{suffix}"


def folder_size(folder: Path) -> int:
    """Bytes in the files under ``folder`` (symlinks not followed: each file counted once)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())

"""Persistent user settings (QSettings): recent files, window layout, layer and view settings.

Always INI format in the user scope, so tests can redirect every read and write into a
temporary folder with ``QSettings.setPath(IniFormat, UserScope, tmp)`` and a user's settings
file is a readable text file on every platform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from viewer import DEFAULT_STRIDE
from viewer.overlay import DEFAULT_OPACITY, DEFAULT_THRESHOLD

ORGANISATION = "HistoViewer"
APPLICATION = "HistoViewer"
MAX_RECENT = 10
DEFAULT_TILE_CACHE_MB = 512
TILE_CACHE_MB_RANGE = (64, 65536)
"""Bounds of the decoded-tile cache: below ~64 MB one screen of tiles would not fit (tiles
would be read again on every small pan); the upper bound only catches typos."""
WINDOW_STEPS = (4, 8, 16)
"""Heatmap window steps (px) the GUI offers; any other stored value falls back to the default.
All are multiples of 4 (the bundled network's down-sampling), so with that network each one
uses the engine's fast fully-convolutional path."""


def qsettings() -> QSettings:
    """The application's settings store."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, APPLICATION)


def _as_bool(value: Any, default: bool) -> bool:
    # INI files hand booleans back as the strings "true"/"false".
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _as_float(value: Any, default: float, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return min(hi, max(lo, number)) if number == number else default


def _as_int(value: Any, default: int) -> int:
    # INI files hand numbers back as strings; a hand-edited "16.0" or " 16 " still means 16.
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return default
    return int(number) if number.is_integer() else default


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # QSettings returns a bare string for a one-element list
        return [value] if value else []
    return [str(v) for v in value]


class Settings:
    """Typed accessors over :func:`qsettings`; every getter survives a hand-edited file."""

    def __init__(self) -> None:
        self._store = qsettings()

    def sync(self) -> None:
        self._store.sync()

    # Recent files -----------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        """Recent images, newest first, with files that no longer exist pruned."""
        files = [f for f in _as_list(self._store.value("recent/files")) if Path(f).is_file()]
        return files[:MAX_RECENT]

    def add_recent_file(self, path: str | Path) -> list[str]:
        path = str(Path(path).resolve())
        files = [path] + [f for f in self.recent_files() if f != path]
        self._store.setValue("recent/files", files[:MAX_RECENT])
        return files[:MAX_RECENT]

    def clear_recent_files(self) -> None:
        self._store.setValue("recent/files", [])

    # Folders ----------------------------------------------------------------------------
    def last_folder(self, kind: str) -> str:
        folder = self._store.value(f"folders/{kind}")
        return str(folder) if folder and Path(str(folder)).is_dir() else str(Path.home())

    def set_last_folder(self, kind: str, path: str | Path) -> None:
        path = Path(path)
        self._store.setValue(f"folders/{kind}", str(path if path.is_dir() else path.parent))

    # Window -----------------------------------------------------------------------------
    def window_geometry(self) -> QByteArray | None:
        value = self._store.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    def window_state(self) -> QByteArray | None:
        value = self._store.value("window/state")
        return value if isinstance(value, QByteArray) else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._store.setValue("window/geometry", geometry)
        self._store.setValue("window/state", state)

    # Behaviour --------------------------------------------------------------------------
    def auto_run_heatmap(self) -> bool:
        return _as_bool(self._store.value("heatmap/auto_run"), True)

    def set_auto_run_heatmap(self, on: bool) -> None:
        self._store.setValue("heatmap/auto_run", bool(on))

    def heatmap_stride(self) -> int:
        """The chosen heatmap window step: one of :data:`WINDOW_STEPS`, else the paper's 8 px."""
        step = _as_int(self._store.value("heatmap/stride"), DEFAULT_STRIDE)
        return step if step in WINDOW_STEPS else DEFAULT_STRIDE

    def set_heatmap_stride(self, step: int) -> None:
        self._store.setValue("heatmap/stride", int(step))

    def heatmap_precision(self) -> str:
        """Analysis › Precision: ``"float32"`` (default) or ``"bfloat16"``; anything else float32."""
        from viewer.heatmap.precision import DEFAULT_PRECISION, PRECISIONS

        value = str(self._store.value("heatmap/precision", DEFAULT_PRECISION)).strip().lower()
        return value if value in PRECISIONS else DEFAULT_PRECISION

    def set_heatmap_precision(self, precision: str) -> None:
        self._store.setValue("heatmap/precision", str(precision))

    def heatmap_threads(self) -> int | None:
        """Analysis › CPU Threads: the most threads TensorFlow may use, or None for every core
        (``heatmap/threads``; 0, missing or invalid = every core)."""
        threads = _as_int(self._store.value("heatmap/threads"), 0)
        return threads if threads >= 1 else None

    def set_heatmap_threads(self, threads: int | None) -> None:
        self._store.setValue("heatmap/threads", int(threads or 0))

    def export_legend(self) -> bool:
        return _as_bool(self._store.value("export/legend"), False)

    def set_export_legend(self, on: bool) -> None:
        self._store.setValue("export/legend", bool(on))

    # View -------------------------------------------------------------------------------
    def tile_cache_mb(self) -> int:
        """Megabytes of decoded slide tiles kept in memory (``view/tile_cache_mb``, default 512)."""
        lo, hi = TILE_CACHE_MB_RANGE
        return min(hi, max(lo, _as_int(self._store.value("view/tile_cache_mb"), DEFAULT_TILE_CACHE_MB)))

    def set_tile_cache_mb(self, megabytes: int) -> None:
        self._store.setValue("view/tile_cache_mb", int(megabytes))

    def tile_cache_bytes(self) -> int:
        return self.tile_cache_mb() * 1024 * 1024

    def show_overview(self) -> bool:
        return _as_bool(self._store.value("view/overview"), True)

    def set_show_overview(self, on: bool) -> None:
        self._store.setValue("view/overview", bool(on))

    def show_scale_bar(self) -> bool:
        return _as_bool(self._store.value("view/scale_bar"), True)

    def set_show_scale_bar(self, on: bool) -> None:
        self._store.setValue("view/scale_bar", bool(on))

    # Layers -----------------------------------------------------------------------------
    def layer_values(self) -> dict[str, Any]:
        """Saved layer settings, validated; missing keys are simply absent."""
        s = self._store
        out: dict[str, Any] = {}
        for key in ("show_image", "show_annotations", "show_heatmap"):
            if s.contains(f"layers/{key}"):
                out[key] = _as_bool(s.value(f"layers/{key}"), True)
        if s.contains("layers/opacity"):
            out["opacity"] = _as_float(s.value("layers/opacity"), DEFAULT_OPACITY, 0.0, 1.0)
        if s.contains("layers/threshold"):
            out["threshold"] = _as_float(s.value("layers/threshold"), DEFAULT_THRESHOLD, 0.0, 1.0)
        if s.contains("layers/colormap"):
            out["colormap"] = str(s.value("layers/colormap"))
        if s.contains("layers/hidden_classes"):
            out["hidden_classes"] = _as_list(s.value("layers/hidden_classes"))
        return out

    def save_layer_values(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self._store.setValue(f"layers/{key}", value)

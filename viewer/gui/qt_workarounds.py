"""Work-arounds for bugs in the Qt bindings, detected by behaviour rather than by version.

PySide6 6.12.0: ``SignalInstance.emit()`` returns ``True`` without taking a new reference, so
every emit from Python (ours, pyqtgraph's on every pan and zoom, superqt's per heatmap tile)
drops one reference to ``True``. On Python 3.11, where ``True`` is an ordinary object, the
interpreter aborts with "Fatal Python error: bool_dealloc" once a few thousand emits have
happened — in the middle of a session or at exit. PySide6 6.11.3 does not have the bug.
Python 3.12+ makes ``True`` immortal, which makes the bug harmless; we do the same here.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_applied = False


class _Probe(QObject):
    ping = Signal()


def emit_drops_references() -> bool:
    """True if emitting a signal from Python loses a reference to ``True`` (the 6.12.0 bug)."""
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    return sys.getrefcount(True) < before


def apply_workarounds() -> None:
    """Idempotent; call before the GUI starts emitting signals."""
    global _applied
    if _applied:
        return
    _applied = True
    debug_build = hasattr(sys, "gettotalrefcount")  # object layout differs there
    if sys.version_info >= (3, 12) or debug_build or not emit_drops_references():
        return  # immortal bools, an unusual build, or fixed bindings
    # Give True and False a reference count no session can exhaust (2**40 emits), as Python
    # 3.12 does. ob_refcnt is the first field of every object in CPython's release builds.
    for value in (True, False):
        ctypes.c_ssize_t.from_address(id(value)).value += 1 << 40

"""Block a script (benchmark, screenshot maker) until a Qt signal fires, keeping the loop alive.

Tests use pytest-qt's ``qtbot.waitSignal``; scripts outside pytest need the same thing.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEventLoop, QTimer


class SignalTimeout(RuntimeError):
    """The awaited signal did not fire in time."""


def wait_for(signal: Any, timeout_s: float = 600.0) -> list:
    """Run a local event loop until ``signal`` fires; return its arguments."""
    loop, got = QEventLoop(), []

    def done(*args: Any) -> None:
        got.append(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(done)
    if not got:
        raise SignalTimeout(f"timed out after {timeout_s:.0f} s")
    return list(got[0])

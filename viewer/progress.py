"""Progress of long work in the terminal: one line updated in place, with rate and ETA.

On a terminal the line is rewritten in place; in pipes and logs only a start and an end line
are printed, so logs stay short. The GUI shows the same numbers in its status bar.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Progress:
    """Counts work units (e.g. tissue cells) towards ``total`` and reports rate and ETA.

    ``unit_px``: level-0 pixels per unit, so the rate can be shown in Mpx/s.
    """

    def __init__(self, label: str, total: float, *, unit_px: float = 0.0, quiet: bool = False,
                 stream: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.total = max(0.0, float(total))
        self.unit_px = unit_px
        self.done = 0.0
        self.stream = sys.stderr if stream is None else stream
        self.show = not quiet
        self.tty = self.show and bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last = 0.0
        self._min_interval = min_interval
        if self.show and not self.tty:
            print(f"{label}: started", file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate_mpx(self) -> float:
        """Level-0 megapixels per second so far."""
        return self.done * self.unit_px / 1e6 / max(self.elapsed, 1e-9)

    def eta(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed * (self.total - self.done) / self.done

    def text(self) -> str:
        parts = [f"{self.label}: {100 * self.done / self.total:.0f}%" if self.total else f"{self.label}:"]
        if self.unit_px:
            parts.append(f"{self.rate_mpx():.1f} Mpx/s")
        eta = self.eta()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)

    def advance(self, units: float) -> None:
        self.done += units
        if self.tty and time.perf_counter() - self._last >= self._min_interval:
            self._last = time.perf_counter()
            print(f"\r{self.text()}\x1b[K", end="", file=self.stream, flush=True)

    def finish(self, summary: str = "") -> None:
        if not self.show:
            return
        prefix = "\r" if self.tty else ""
        rate = f", {self.rate_mpx():.1f} Mpx/s" if self.unit_px else ""
        tail = f"; {summary}" if summary else ""
        print(f"{prefix}{self.label}: done in {format_duration(self.elapsed)}{rate}{tail}\x1b[K" if self.tty
              else f"{self.label}: done in {format_duration(self.elapsed)}{rate}{tail}", file=self.stream, flush=True)

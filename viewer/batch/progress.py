"""The batch's progress line: slides finished, tissue area computed, rate and time left.

Like :class:`viewer.progress.Progress`: on a terminal one line rewritten in place; in pipes and
logs (a cluster job's output) a line per finished slide instead, so a log tells which slide
ended when. Slides are planned while earlier ones compute, so the tissue area still to do is
known only for planned slides; the time left adds the unplanned ones at the mean area so far.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from viewer.progress import format_duration


def _area(px: float) -> str:
    return f"{px / 1e9:.2f} Gpx" if px >= 1e9 else f"{px / 1e6:.1f} Mpx"


class BatchProgress:
    def __init__(self, slides: int, *, quiet: bool = False, stream: TextIO | None = None, min_interval: float = 0.5) -> None:
        self.slides = slides
        self.finished = 0
        self.failed = 0
        self.planned = 0
        self.planned_px = 0.0
        self.done_px = 0.0
        self.stream = sys.stderr if stream is None else stream
        self.show = not quiet
        self.tty = self.show and bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._first_work: float | None = None
        self._last = 0.0
        self._min_interval = min_interval

    # Counting -----------------------------------------------------------------------------------
    def planned_slide(self, tissue_px: float) -> None:
        """A slide was planned with ``tissue_px`` level-0 pixels of tissue left to compute."""
        self.planned += 1
        self.planned_px += tissue_px
        self._update()

    def computed(self, tissue_px: float) -> None:
        if self._first_work is None:
            self._first_work = time.perf_counter()
        self.done_px += tissue_px
        self._update()

    def slide_finished(self, line: str, *, failed: bool = False, planned: bool = True) -> None:
        """One slide is over; ``line`` describes it (printed in logs; on a terminal only if failed)."""
        self.finished += 1
        self.failed += failed
        if not planned:
            self.planned += 1
        if self.show and (failed or not self.tty):
            self.print(line)
        self._update(force=True)

    # Figures ------------------------------------------------------------------------------------
    def rate_px(self) -> float:
        if self._first_work is None:
            return 0.0
        return self.done_px / max(time.perf_counter() - self._first_work, 1e-9)

    def eta(self) -> float | None:
        rate = self.rate_px()
        if rate <= 0 or self.planned == 0:
            return None
        unplanned = max(0, self.slides - self.planned)
        remaining = max(0.0, self.planned_px - self.done_px) + unplanned * self.planned_px / self.planned
        return remaining / rate

    def text(self) -> str:
        parts = [f"batch: {self.finished}/{self.slides} slides" + (f" ({self.failed} failed)" if self.failed else "")]
        if self.planned_px > 0:
            parts.append(f"tissue {100 * min(1.0, self.done_px / self.planned_px):.0f}% of {_area(self.planned_px)} planned")
        rate = self.rate_px()
        if rate > 0:
            parts.append(f"{rate / 1e6:.1f} Mpx/s")
        eta = self.eta()
        if eta is not None and self.finished < self.slides:
            parts.append(f"ETA {format_duration(eta)}")
        return ", ".join(parts)

    # Output -------------------------------------------------------------------------------------
    def print(self, line: str) -> None:
        if not self.show:
            return
        prefix = "\r\x1b[K" if self.tty else ""
        print(f"{prefix}{line}", file=self.stream, flush=True)
        if self.tty:
            self._last = 0.0
            self._update()

    def _update(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if force or now - self._last >= self._min_interval:
            self._last = now
            print(f"\r{self.text()}\x1b[K", end="", file=self.stream, flush=True)

    def finish(self) -> None:
        if not self.show:
            return
        rate = self.rate_px()
        tail = f", {rate / 1e6:.1f} Mpx/s of tissue" if rate > 0 else ""
        line = f"batch: {self.finished}/{self.slides} slides in {format_duration(time.perf_counter() - self.start)}{tail}"
        print(f"\r{line}\x1b[K" if self.tty else line, file=self.stream, flush=True)

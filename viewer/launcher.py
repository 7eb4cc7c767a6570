"""The ``histoviewer`` program: the headless commands of :mod:`viewer.cli`, plus the window.

This is the one module outside ``viewer.gui`` that imports the GUI, and it does so openly (the
import-linter contract in pyproject.toml names it as the launcher, outside the Qt-free core).
``histoviewer COMMAND ...`` never imports Qt; ``histoviewer [IMAGE]`` first checks that a window
can open at all (:mod:`viewer.display_check`: no display, or Qt's xcb libraries missing, is one
line and exit 2 instead of Qt's abort), then imports the GUI.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Sequence

from viewer import cli
from viewer.display_check import display_problem
from viewer.errors import InputError


def open_window(args: argparse.Namespace) -> int:
    """``histoviewer [IMAGE] [--annotations A] [--model M]``: run the viewer until it closes."""
    problem = display_problem(prog=cli.PROG)
    if problem:
        raise InputError(problem)
    try:
        from viewer.gui.app import run_gui
    except ImportError as exc:  # a broken Qt install: say so in one line; the commands still work
        raise cli.GuiUnavailable(exc) from exc
    return int(run_gui(args.image, annotations=args.annotations, model=args.model) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``histoviewer`` console script and of the bundled executable."""
    # In a frozen bundle, the Dask workers of `histoviewer batch` are this executable started
    # again by multiprocessing; this turns such a start into a worker. A no-op otherwise.
    multiprocessing.freeze_support()
    return cli.main(argv, gui=open_window)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

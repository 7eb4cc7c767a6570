"""The ``histoviewer`` command.

``histoviewer [IMAGE]`` opens the GUI; the subcommands do the same work headless. Each
subcommand lives in ``viewer.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``.

Exit codes: 0 success, 1 internal error (a bug: ``--debug`` shows the traceback), 2 bad input
(one line on stderr naming the file and the problem), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from viewer import __version__
from viewer.errors import InputError

COMMANDS = ("prepare", "train", "evaluate", "heatmap", "export")
"""Headless subcommands, in the order of the paper's pipeline."""

PROG = "histoviewer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "H&E histopathology viewer with a ConvNet tumour heatmap. "
            "Run without a command (optionally with an image path) to open the viewer."
        ),
        epilog="Run 'histoviewer COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on internal errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"viewer.commands.{name}")
        module.register(subparsers)
    return parser


def _gui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Open the HistoViewer window.")
    parser.add_argument("image", nargs="?", help="image to open (TIFF, JPEG or PNG)")
    parser.add_argument("--annotations", help="annotation JSON to load with the image")
    parser.add_argument("--model", help="Keras model to use instead of the bundled one")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on internal errors")
    return parser


def _wants_gui(argv: Sequence[str]) -> bool:
    for arg in argv:
        if arg in ("-h", "--help", "--version"):
            return False
        if arg.startswith("-"):
            continue
        return arg not in COMMANDS
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``histoviewer`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if _wants_gui(argv):
            args = _gui_parser().parse_args(argv)
            from viewer.gui.app import run_gui  # Qt is imported only when the GUI is wanted

            return run_gui(args.image, annotations=args.annotations, model=args.model)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # a bug, not the user's fault
        if debug:
            traceback.print_exc()
        else:
            print(
                f"{PROG}: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                "(run again with --debug for the traceback, and please report it)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

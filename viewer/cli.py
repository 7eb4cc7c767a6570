"""The ``histoviewer`` command.

``histoviewer [IMAGE]`` opens the GUI (through the ``gui`` callable that :mod:`viewer.launcher`, the
console script, passes to :func:`main`: this module never imports Qt); the subcommands do the
same work headless. Each subcommand lives in ``viewer.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

Exit codes: 0 success, 1 internal error (a bug: ``--debug`` shows the traceback), 2 bad input
(one line on stderr naming the file and the problem; also bad options), 130 interrupted.
``--debug`` is accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence

from viewer import __version__, desktop_integration
from viewer.errors import InputError

COMMANDS = ("prepare", "train", "evaluate", "heatmap", "export", "info", "export-geojson", "batch", "annotations")
"""Headless subcommands, in the order of the paper's pipeline."""

PROG = "histoviewer"

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

_DEBUG_HELP = "show full tracebacks on internal errors (and library log output)"

# OSErrors the user can fix (disk full, read-only or protected location): exit 2, not a bug.
_USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage text plus the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = " ".join(str(message).split())
        self.exit(EXIT_INPUT, f"{self.prog}: error: {text} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "H&E histopathology viewer with a ConvNet tumour heatmap. "
            "Run without a command (optionally with an image path) to open the viewer."
        ),
        epilog="Run 'histoviewer COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    desktop_integration.add_arguments(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"viewer.commands.{name.replace('-', '_')}")
        module.register(subparsers)
    for sub in subparsers.choices.values():
        _add_debug_option(sub)
    return parser


def _add_debug_option(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after the subcommand too, without hiding a top-level ``--debug``.

    ``default=SUPPRESS`` matters: a plain ``store_true`` default (False) in the subparser would
    overwrite the True set by ``histoviewer --debug heatmap ...``.
    """
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)


def _gui_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Open the HistoViewer window.")
    parser.add_argument("image", nargs="?", help="image to open (TIFF, JPEG or PNG)")
    parser.add_argument("--annotations", help="annotation JSON to load with the image")
    parser.add_argument("--model", help="Keras model to use instead of the bundled one")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    return parser


def _wants_gui(argv: Sequence[str]) -> bool:
    for arg in argv:
        if arg in ("-h", "--help", "--version", *desktop_integration.OPTIONS):
            return False
        if arg.startswith("-"):
            continue
        return arg not in COMMANDS
    return True


def _check_not_a_mistyped_command(argv: Sequence[str]) -> None:
    """``histoviewer heatmapp x.tif`` should not open the GUI on a file called 'heatmapp'."""
    positional = [a for a in argv if not a.startswith("-")]
    if not positional:
        return
    first = positional[0]
    if os.path.exists(first):
        return
    close = difflib.get_close_matches(first, COMMANDS, n=1, cutoff=0.7)
    if close:
        raise InputError(f"unknown command '{first}'; did you mean '{close[0]}'? (see '{PROG} --help')")


def main(argv: Sequence[str] | None = None, gui: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Run ``histoviewer`` with ``argv``; returns the exit code. ``gui`` opens the window
    (:func:`viewer.launcher.open_window`); without it, the window is refused with exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    state = {"debug": "--debug" in argv}  # also set by _run when argparse sees an abbreviation
    if state["debug"]:
        os.environ["HISTOVIEWER_DEBUG"] = "1"  # lets import_keras show TensorFlow's native logs
    try:
        with _quiet_libraries(enabled=not state["debug"]):
            return _run(argv, state, gui)
    except InputError as exc:
        return _fail(EXIT_INPUT, f"{PROG}: error: {exc}", state["debug"])
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `histoviewer evaluate --json | head`: the reader went away; not an error worth a traceback.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INTERNAL
    except SystemExit as exc:  # argparse (--help, --version, bad options) or a command's sys.exit
        return _exit_code(exc)
    except MemoryError:
        return _fail(
            EXIT_INTERNAL,
            f"{PROG}: error: ran out of memory (try a smaller image, or raise the memory available)",
            state["debug"],
        )
    except OSError as exc:
        if exc.errno in _USER_OS_ERRNOS:
            where = f"{exc.filename}: " if exc.filename else ""
            return _fail(EXIT_INPUT, f"{PROG}: error: {where}{exc.strerror or exc}", state["debug"])
        return _internal(exc, state["debug"])
    except Exception as exc:  # a bug, not the user's fault
        return _internal(exc, state["debug"])


def _run(argv: list[str], state: dict, gui: Callable[[argparse.Namespace], int] | None) -> int:
    if _wants_gui(argv):
        _check_not_a_mistyped_command(argv)
        args = _gui_parser().parse_args(argv)
        if gui is None:
            raise InputError(f"no window from viewer.cli.main; run '{PROG}' (viewer.launcher) to open the viewer")
        return int(gui(args) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "debug", False):
        state["debug"] = True
        os.environ["HISTOVIEWER_DEBUG"] = "1"
        logging.disable(logging.NOTSET)
        warnings.resetwarnings()
    if args.command is None and args.desktop:
        return desktop_integration.run(args.desktop)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    return int(args.func(args) or 0)


class GuiUnavailable(Exception):
    """Qt cannot be imported (a broken install): one line and exit 1; the commands still work."""

    def __init__(self, exc: ImportError) -> None:
        super().__init__(
            f"cannot start the viewer window ({_one_line(str(exc)) or type(exc).__name__}); "
            f"the headless commands still work: {PROG} --help"
        )


@contextlib.contextmanager
def _quiet_libraries(enabled: bool) -> Iterator[None]:
    """Keep library chatter (Python warnings, WARNING-level log records) off stderr.

    The CLI promises one line on stderr for a bad input; a DeprecationWarning from a dependency
    or an absl/TensorFlow log line would break that. ``--debug`` lets everything through.
    """
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
        return EXIT_INTERNAL
    if isinstance(exc, GuiUnavailable):
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    detail = _one_line(str(exc))
    print(
        f"{PROG}: internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
        "(run again with --debug for the traceback, and please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _fail(code: int, message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(" ".join(message.split()), file=sys.stderr)
    return code


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(_one_line(str(code)), file=sys.stderr)
    return EXIT_INTERNAL


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

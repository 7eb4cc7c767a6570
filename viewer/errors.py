"""The project's own error types.

Anything the user can fix (a bad file, a bad option) is raised as :class:`InputError` with a
one-line message that names the file and the problem. The CLI turns it into exit code 2, the GUI
into a message box. Anything else is a bug and exits 1.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class HistoViewerError(Exception):
    """Base class for every error this project raises on purpose."""


class InputError(HistoViewerError):
    """A file or option the user supplied cannot be used. The message says why and what to do."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        text = f"{path}: {message}" if path is not None else message
        # One line, always: multi-line messages break the CLI contract and message-box titles.
        super().__init__(" ".join(str(text).split()))


class ImageError(InputError):
    """An image file cannot be opened."""


class AnnotationError(InputError):
    """An annotation file cannot be read."""


class ModelError(InputError):
    """A model file cannot be loaded or does not have the expected shape."""


class OutputError(InputError):
    """An output file cannot be written (exists, folder unwritable, disk full...)."""


def os_reason(exc: OSError) -> str:
    """Short human reason for an OS error, for one-line messages."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc) or type(exc).__name__


def stat_input_file(
    path: Path, error: type[InputError], kind: str, *, not_found: str = "file not found"
) -> os.stat_result:
    """Stat a file the user asked us to read, refusing anything that is not a readable regular file.

    ``kind`` completes messages such as "is a folder, not <kind>". Only regular files pass:
    a FIFO blocks ``open`` forever and a device never ends.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(not_found, path) from None
    except NotADirectoryError:
        raise error(f"{not_found} (a parent of it is a file, not a folder)", path) from None
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise error(f"is not a valid file name ({exc})", path) from None
    except OSError as exc:  # name too long, symlink loop, permission denied on a parent...
        raise error(f"cannot be opened ({os_reason(exc)})", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"is a folder, not {kind}", path)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"is not a regular file (a device, pipe or socket), not {kind}", path)
    if not os.access(path, os.R_OK):
        raise error("cannot be read (permission denied)", path)
    return st

"""The project's own error types.

Anything the user can fix (a bad file, a bad option) is raised as :class:`InputError` with a
one-line message that names the file and the problem. The CLI turns it into exit code 2, the GUI
into a message box. Anything else is a bug and exits 1.
"""

from __future__ import annotations

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

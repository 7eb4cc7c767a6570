"""Atomic file output: write to a temporary file in the target folder, then rename.

A crash, a full disk or a cancelled export therefore never leaves a half-written file behind,
and an existing file is replaced in one step or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from viewer.errors import OutputError


def check_writable(path: str | Path, *, force: bool = False) -> Path:
    """Fail early, before any long computation, if ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a folder; give a file name", path)
    if path.exists() and not force:
        raise OutputError("already exists; use --force to overwrite it", path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"folder {folder} does not exist", path)
    if not os.access(folder, os.W_OK):
        raise OutputError(f"folder {folder} is not writable", path)
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, *, force: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the target's suffix so writers that pick a format from the file
    name (Pillow, tifffile, numpy) see the right one.
    """
    path = check_writable(path, force=force)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=folder
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OutputError("the disk is full; nothing was written", path) from exc
        raise OutputError(f"cannot write ({exc.strerror or exc}); nothing was written", path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""Atomic file output: write to a temporary file in the target folder, then rename.

A crash, a full disk or a cancelled export therefore never leaves a half-written file behind,
and an existing file is replaced in one step or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from viewer.errors import OutputError


def check_writable(path: str | Path, *, force: bool = False) -> Path:
    """Fail early, before any long computation, if ``path`` cannot be written.

    Returns ``path`` as a :class:`~pathlib.Path`. Refuses folders, existing files (unless
    ``force``), devices/pipes/sockets (always: replacing ``/dev/null`` with a regular file is
    never what the user meant), missing or read-only folders, and invalid names.
    """
    path = Path(path)
    if str(path) in ("", ".", "..") or path.name in ("", ".", ".."):
        raise OutputError("is a folder; give a file name", path)
    try:
        st = os.stat(path)  # follows symlinks: we write to where a link points
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise OutputError(f"folder {_folder(path)} is a file, not a folder", path) from None
    except ValueError as exc:  # embedded NUL byte
        raise OutputError(f"is not a valid file name ({exc})", path) from None
    except OSError as exc:  # name too long, symlink loop...
        raise OutputError(f"cannot be written ({_reason(exc)})", path) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError("is a folder; give a file name", path)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError("is not a regular file (a device, pipe or socket); refusing to replace it", path)
        if not force:
            raise OutputError("already exists; use --force to overwrite it", path)
    folder = _target(path).parent
    try:
        folder_st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise OutputError(f"folder {folder} does not exist", path) from None
    except OSError as exc:
        raise OutputError(f"folder {folder} cannot be used ({_reason(exc)})", path) from None
    if not stat.S_ISDIR(folder_st.st_mode):
        raise OutputError(f"folder {folder} is a file, not a folder", path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"folder {folder} is not writable", path)
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, *, force: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the target's suffix so writers that pick a format from the file
    name (Pillow, tifffile, numpy) see the right one.

    Guarantees: on any failure (an exception in the ``with`` body, a full disk, Ctrl+C) the
    temporary file is removed and an existing ``path`` is left untouched; ``OSError`` is turned
    into :class:`OutputError` (one line, "nothing was written"). The data is flushed to disk
    before the rename, and the new file gets normal permissions (those of the file it replaces,
    or 0666 minus the umask) rather than ``mkstemp``'s private 0600. If ``path`` is a symlink,
    the file it points to is replaced and the link is kept.
    """
    path = check_writable(path, force=force)
    target = _target(path)
    folder = target.parent
    # The name is chosen before the file exists and the file is created inside the ``try``, so
    # a Ctrl+C arriving at any point after creation still finds the name to remove.
    tmp = _temporary_name(target, suffix if suffix is not None else target.suffix)
    try:
        _create_exclusive(tmp)
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"the writer removed or renamed its temporary file {tmp.name}")
        strays = _strays(tmp)
        if strays and tmp.stat().st_size == 0:
            # e.g. numpy.save adds '.npy' to a name without it: the data went to another file.
            raise RuntimeError(
                f"the writer saved to {strays[0].name} instead of the temporary file it was given "
                "(it probably added a file-name ending)"
            )
        _set_mode(tmp, target)
        _fsync(tmp)
        os.replace(tmp, target)
        fsync_folder(folder)
    except OSError as exc:
        _cleanup(tmp)
        raise _output_error(exc, path) from exc
    except BaseException:
        _cleanup(tmp)
        raise
    finally:
        for stray in _strays(tmp):
            stray.unlink(missing_ok=True)


def _temporary_name(target: Path, suffix: str) -> Path:
    """A hidden name beside ``target`` that no other file has (checked again at creation)."""
    while True:  # 64 random bits: a clash with an existing name is all but impossible
        candidate = target.parent / f".{target.name}.{secrets.token_hex(8)}{suffix}"
        if not os.path.lexists(candidate):
            return candidate


def _create_exclusive(tmp: Path) -> None:
    """Create ``tmp`` empty and private (like ``mkstemp``); fails if it appeared meanwhile."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    os.close(fd)


def _target(path: Path) -> Path:
    """Where the data really goes: the file a symlink points to, else ``path`` itself."""
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _strays(tmp: Path) -> list[Path]:
    """Files a writer created next to ``tmp`` by appending to its name (e.g. numpy's '.npy')."""
    try:
        return [p for p in tmp.parent.glob(f"{_glob_escape(tmp.name)}?*") if p != tmp]
    except OSError:  # pragma: no cover - folder vanished
        return []


def _glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _cleanup(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _output_error(exc: OSError, path: Path) -> OutputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError("the disk is full (or over quota); nothing was written", path)
    if exc.errno == errno.EROFS:
        return OutputError("is on a read-only file system; nothing was written", path)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"folder {_folder(path)} is not writable (permission denied); nothing was written", path)
    return OutputError(f"cannot be written ({_reason(exc)}); nothing was written", path)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the racy way, and put it back at once
    os.umask(mask)
    return mask


def _set_mode(tmp: Path, target: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    with contextlib.suppress(OSError):  # e.g. file systems without permissions (FAT, some mounts)
        os.chmod(tmp, mode)


def _fsync(tmp: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP):  # file system without fsync
            return
        raise
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold back Ctrl+C (SIGINT) until the block is over, then raise it.

    For a few writes that belong together (``summary.csv`` and ``summary.json``): an interrupt
    in between would leave one new and one old. Only the main thread receives Python's signal
    handlers, so elsewhere (and where SIGINT is not the default handler) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt

"""viewer.atomic: outputs are written whole or not at all, and refusals are one-line OutputErrors."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from viewer import atomic as atomic_module
from viewer.atomic import atomic_output, check_writable
from viewer.errors import InputError, OutputError


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line(info: pytest.ExceptionInfo, path, *words: str) -> str:
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    assert isinstance(info.value, InputError)
    return text


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- success


def test_writes_and_renames_with_normal_permissions(tmp_path):
    out = tmp_path / "result.png"
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".result.png.")
        assert not out.exists()
        tmp.write_bytes(b"data")
    assert out.read_bytes() == b"data"
    assert listing(tmp_path) == ["result.png"]
    # mkstemp creates 0600 files; the output must get the usual 0666 & ~umask instead.
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current_umask()


def test_suffix_override(tmp_path):
    with atomic_output(tmp_path / "model", suffix=".keras") as tmp:
        assert tmp.suffix == ".keras"
        tmp.write_bytes(b"x")
    assert (tmp_path / "model").read_bytes() == b"x"


def test_replacing_keeps_the_old_files_permissions(tmp_path):
    out = tmp_path / "shared.json"
    out.write_text("old")
    out.chmod(0o640)
    with atomic_output(out, force=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o640


def test_symlink_target_is_replaced_and_link_kept(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with atomic_output(link, force=True) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


# --------------------------------------------------------------------------- refusals before writing


def test_existing_file_refused_unless_force(tmp_path):
    out = tmp_path / "keep.txt"
    out.write_text("precious")
    with pytest.raises(OutputError) as info:
        check_writable(out)
    one_line(info, out, "already exists", "--force")
    with pytest.raises(OutputError):
        with atomic_output(out, force=False) as tmp:
            tmp.write_text("overwritten")
    assert out.read_text() == "precious" and listing(tmp_path) == ["keep.txt"]
    assert check_writable(out, force=True) == out


def test_folder_missing_is_a_file_or_target_is_a_folder(tmp_path):
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "no" / "such" / "x.png")
    one_line(info, "x.png", "does not exist")
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError) as info:
        check_writable(a_file / "x.png")  # a path under a file: unwritable
    one_line(info, "x.png", "is a file, not a folder")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path, force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(".", force=True)


def test_unwritable_folder(tmp_path, monkeypatch):
    """Root can write anywhere, so an unwritable folder is simulated through os.access."""
    real_access = os.access
    monkeypatch.setattr(atomic_module.os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "x.png")
    one_line(info, "x.png", "not writable")
    with pytest.raises(OutputError):
        with atomic_output(tmp_path / "x.png") as tmp:  # pragma: no cover - refused before
            tmp.write_text("x")
    assert listing(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_really_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable(folder / "x.png")
    finally:
        folder.chmod(0o755)


def test_temp_file_cannot_be_created(tmp_path, monkeypatch):
    """os.access can say yes and creating the file still fail (e.g. /sys, ACLs): used to escape as PermissionError."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic_module.os, "open", refuse)
    with pytest.raises(OutputError) as info:
        with atomic_output(tmp_path / "x.png") as tmp:  # pragma: no cover - refused before
            tmp.write_text("x")
    one_line(info, "x.png", "not writable", "nothing was written")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_or_device_is_never_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError) as info:
        with atomic_output(fifo, force=True) as tmp:  # pragma: no cover - refused before
            tmp.write_text("x")
    one_line(info, fifo, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # /dev/null is only *checked*, never written, here: force=True used to let it be replaced.
    with pytest.raises(OutputError, match="not a regular file"):
        check_writable(os.devnull, force=True)


def test_invalid_names(tmp_path):
    with pytest.raises(OutputError, match="valid file name"):  # used to pass the check, then ValueError
        check_writable(tmp_path / "bad\0name.png")
    with pytest.raises(OutputError) as info:  # used to escape as OSError(ENAMETOOLONG)
        check_writable(tmp_path / ("a" * 300 + ".png"))
    assert "too long" in str(info.value).lower()


# --------------------------------------------------------------------------- failures while writing


def test_full_disk_in_the_writer(tmp_path):
    out = tmp_path / "figure.png"
    with pytest.raises(OutputError) as info:
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    one_line(info, out, "disk is full", "nothing was written")
    assert listing(tmp_path) == []  # neither the target nor the temporary file


def test_full_disk_keeps_an_existing_file(tmp_path):
    out = tmp_path / "figure.png"
    out.write_bytes(b"original")
    with pytest.raises(OutputError, match="disk is full"):
        with atomic_output(out, force=True) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert out.read_bytes() == b"original" and listing(tmp_path) == ["figure.png"]


def test_full_disk_in_fsync_or_rename(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for name in ("fsync", "replace"):
        monkeypatch.setattr(atomic_module.os, name, no_space)
        with pytest.raises(OutputError, match="disk is full"):
            with atomic_output(tmp_path / "x.npy") as tmp:
                np.save(tmp, np.zeros(3))
        monkeypatch.undo()
        assert listing(tmp_path) == []


def test_other_write_errors(tmp_path):
    for code, words in ((errno.EROFS, "read-only"), (errno.EIO, "cannot be written"), (errno.EACCES, "not writable")):
        with pytest.raises(OutputError) as info:
            with atomic_output(tmp_path / "x.png") as tmp:
                tmp.write_bytes(b"x")
                raise OSError(code, os.strerror(code))
        one_line(info, "x.png", words)
        assert listing(tmp_path) == []


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_in_body_propagates_and_cleans_up(tmp_path, exc_type):
    out = tmp_path / "keep.txt"
    out.write_text("original")
    with pytest.raises(exc_type):
        with atomic_output(out, force=True) as tmp:
            tmp.write_text("half")
            raise exc_type("stop")
    assert out.read_text() == "original" and listing(tmp_path) == ["keep.txt"]


def test_writer_that_adds_a_suffix_is_caught(tmp_path):
    """numpy.save adds '.npy' to a name without it: the empty temp file must not be published."""
    out = tmp_path / "heatmap"
    with pytest.raises(RuntimeError, match="saved to"):
        with atomic_output(out) as tmp:
            np.save(tmp, np.zeros(3))
    assert listing(tmp_path) == []


def test_writer_that_removes_its_temp_file_is_caught(tmp_path):
    with pytest.raises(RuntimeError, match="removed or renamed"):
        with atomic_output(tmp_path / "x.txt") as tmp:
            tmp.unlink()
    assert listing(tmp_path) == []


def test_killed_mid_write_leaves_the_original_intact(tmp_path):
    """SIGKILL cannot be cleaned up after; the original must still be whole (the rename never ran)."""
    out = tmp_path / "result.bin"
    out.write_bytes(b"original content")
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from viewer.atomic import atomic_output
        with atomic_output({str(out)!r}, force=True) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half of the new cont")
                fh.flush()
                Path({str(ready)!r}).write_text("1")
                time.sleep(60)
                fh.write(b"ent")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, "the writer exited early"
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.read_bytes() == b"original content"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".result.bin.")]
    assert len(leftovers) == 1  # a hidden temp file may remain after SIGKILL; the target is intact


def test_ctrl_c_mid_write_cleans_up(tmp_path):
    out = tmp_path / "result.bin"
    out.write_bytes(b"original content")
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from viewer.atomic import atomic_output
        with atomic_output({str(out)!r}, force=True) as tmp:
            tmp.write_bytes(b"half")
            Path({str(ready)!r}).write_text("1")
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.read_bytes() == b"original content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "result.bin"]


def test_temp_names_do_not_collide(tmp_path):
    out = tmp_path / "x.txt"
    with atomic_output(out) as first, atomic_output(tmp_path / "y.txt") as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "x.txt").read_text() == "1" and (tmp_path / "y.txt").read_text() == "2"


def test_ctrl_c_right_after_the_temporary_file_appears_leaves_nothing(tmp_path, monkeypatch):
    """The window between creating the temporary file and guarding it: the batch's CI run once
    left a '.summary.csv.*.csv' behind when Ctrl+C landed there."""
    create = atomic_module._create_exclusive

    def create_then_interrupted(tmp):
        create(tmp)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_module, "_create_exclusive", create_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "x.csv") as tmp:  # pragma: no cover - interrupted before
            tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_deferred_holds_ctrl_c_until_the_block_is_over(tmp_path):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with atomic_module.interrupt_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here: it must only record
            done.append("block finished")
    assert done == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with atomic_module.interrupt_deferred():  # no signal: nothing raised
        done.append("again")
    assert done == ["block finished", "again"]

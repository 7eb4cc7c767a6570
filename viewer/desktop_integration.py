"""``histoviewer --install-desktop`` / ``--uninstall-desktop``: the Linux menu entry, for one user.

Puts the desktop entry, the icon, the AppStream metainfo and a MIME type for Aperio SVS slides
under ``$XDG_DATA_HOME`` (``~/.local/share``), so HistoViewer appears in the application menu and
in "Open with" for TIFF and SVS files. The entry starts exactly the program that installed it
(the bundle's executable, or this environment's ``histoviewer`` script), so a pip install in a
virtual environment works without being on ``PATH``. Nothing outside the user's data folder is
touched; uninstalling removes these files again. The files themselves ship in ``viewer.resources``
and are validated in the tests (``desktop-file-validate``, ``appstreamcli validate``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from viewer.atomic import atomic_output
from viewer.errors import OutputError, os_reason
from viewer.model import bundled_model_path

OPTIONS = ("--install-desktop", "--uninstall-desktop")

DESKTOP_FILE = "histoviewer.desktop"
ICON_FILE = "histoviewer.png"
ICON_SIZE = 256
METAINFO_FILE = "io.github.histoviewer.HistoViewer.metainfo.xml"
MIME_FILE = "histoviewer-mime.xml"
MIME_TYPES = ("image/tiff", "image/x-aperio-svs")
"""The slide types the entry is registered for; SVS is defined by :data:`MIME_FILE`."""

_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two top-level options of ``histoviewer``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--install-desktop", dest="desktop", action="store_const", const="install",
                       help="add HistoViewer to your application menu and to 'Open with' for TIFF and SVS "
                       "files (files under ~/.local/share), then exit")
    group.add_argument("--uninstall-desktop", dest="desktop", action="store_const", const="uninstall",
                       help="remove what --install-desktop added, then exit")


def data_home(env: dict[str, str] | os._Environ | None = None) -> Path:
    """``$XDG_DATA_HOME``, or ``~/.local/share`` (the XDG base directory rule)."""
    env = os.environ if env is None else env
    value = env.get("XDG_DATA_HOME", "")
    return Path(value) if value and Path(value).is_absolute() else Path.home() / ".local" / "share"


def resource(name: str) -> Path:
    """A file of ``viewer.resources``: beside this module in a wheel or the bundle, in ``resources/``
    of a checkout, else wherever importlib finds the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "resources" / name, here.parent / "resources" / name):
        if candidate.is_file():
            return candidate
    return bundled_model_path().with_name(name)


def launch_command() -> list[str]:
    """The command that starts this very program: what the entry's ``Exec`` runs."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).absolute())]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name.startswith("histoviewer") and script.is_file():
        return [str(script.absolute())]  # the console script of this environment
    return [str(Path(sys.executable).absolute()), "-m", "viewer"]


def exec_value(command: Sequence[str]) -> str:
    """``command`` quoted for a desktop entry's ``Exec`` key (Desktop Entry spec, "The Exec key")."""
    words = []
    for word in command:
        word = word.replace("%", "%%")
        if any(ch in _EXEC_RESERVED for ch in word):
            escaped = "".join("\\" + ch if ch in '"`$\\' else ch for ch in word)
            word = f'"{escaped}"'
        words.append(word.replace("\\", "\\\\"))  # the string-value escape comes on top
    return " ".join(words)


def desktop_entry(command: Sequence[str]) -> str:
    """The shipped entry with ``Exec``/``TryExec`` pointing at ``command``."""
    lines = []
    for line in resource(DESKTOP_FILE).read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = f"Exec={exec_value(command)} %f"
        elif line.startswith("TryExec="):
            line = f"TryExec={command[0]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def installed_paths(home: Path) -> dict[str, Path]:
    """Where each file goes under the data folder ``home``."""
    return {
        "desktop entry": home / "applications" / DESKTOP_FILE,
        "icon": home / "icons" / "hicolor" / f"{ICON_SIZE}x{ICON_SIZE}" / "apps" / ICON_FILE,
        "AppStream metainfo": home / "metainfo" / METAINFO_FILE,
        "MIME type for SVS": home / "mime" / "packages" / "histoviewer.xml",
    }


def install(home: Path | None = None, command: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the four files (replacing older ones) and refresh the desktop databases."""
    home = data_home() if home is None else home
    command = launch_command() if command is None else list(command)
    contents = {
        "desktop entry": desktop_entry(command).encode("utf-8"),
        "icon": resource(ICON_FILE).read_bytes(),
        "AppStream metainfo": resource(METAINFO_FILE).read_bytes(),
        "MIME type for SVS": resource(MIME_FILE).read_bytes(),
    }
    paths = installed_paths(home)
    for kind, path in paths.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder for the {kind} ({os_reason(exc)})", path.parent) from exc
        with atomic_output(path, force=True) as tmp:
            tmp.write_bytes(contents[kind])
    refresh_databases(home)
    return paths


def uninstall(home: Path | None = None) -> list[Path]:
    """Remove what :func:`install` wrote; returns the files that were there."""
    home = data_home() if home is None else home
    removed = []
    for path in installed_paths(home).values():
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot remove ({os_reason(exc)})", path) from exc
        removed.append(path)
    refresh_databases(home)
    return removed


def refresh_databases(home: Path) -> list[str]:
    """Run the freedesktop cache updaters that exist here; returns the ones missing.

    ``update-mime-database`` compiles the SVS type (without it, SVS files keep their TIFF type);
    ``update-desktop-database`` refreshes the "Open with" cache (desktops also rescan by themselves).
    """
    missing = []
    for tool, folder in (("update-mime-database", home / "mime"), ("update-desktop-database", home / "applications")):
        exe = shutil.which(tool)
        if exe is None:
            missing.append(tool)
            continue
        if folder.is_dir():
            subprocess.run([exe, str(folder)], capture_output=True, timeout=120, check=False)
    return missing


def run(action: str) -> int:
    """``histoviewer --install-desktop`` / ``--uninstall-desktop``: do it and say what was done."""
    if not sys.platform.startswith("linux"):
        print(f"histoviewer: desktop integration is for Linux desktops; nothing to do on {sys.platform}")
        return 0
    home = data_home()
    if action == "install":
        command = launch_command()
        paths = install(home, command)
        print(f"Installed HistoViewer's menu entry, starting {' '.join(command)}:")
        for kind, path in paths.items():
            print(f"  {kind}: {path}")
        if not shutil.which("update-mime-database"):
            print("  note: update-mime-database is missing (package shared-mime-info): .svs files "
                  "are offered HistoViewer only once it has run")
        return 0
    removed = uninstall(home)
    if removed:
        print("Removed HistoViewer's menu entry:")
        for path in removed:
            print(f"  {path}")
    else:
        print(f"HistoViewer's menu entry was not installed under {home}; nothing removed")
    return 0

"""``histoviewer --install-desktop`` / ``--uninstall-desktop`` in a temporary HOME, and the shipped
desktop entry and AppStream metainfo checked by the freedesktop validators."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from viewer import desktop_integration as di

REPO = Path(__file__).resolve().parents[2]
RESOURCES = REPO / "resources"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux desktop integration")


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install {'desktop-file-utils' if 'desktop' in name else 'appstream'})")
    return exe


def _histoviewer(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "viewer", *argv], capture_output=True, text=True, env=env,
                          cwd=home, timeout=120)


def _entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


def test_shipped_desktop_entry_is_valid():
    result = subprocess.run([_tool("desktop-file-validate"), str(RESOURCES / di.DESKTOP_FILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    entry = _entry(RESOURCES / di.DESKTOP_FILE)
    assert set(di.MIME_TYPES) <= set(entry["MimeType"].strip(";").split(";"))


def test_shipped_xml_files_parse():
    import xml.etree.ElementTree as ET

    mime = ET.parse(RESOURCES / di.MIME_FILE).getroot()
    types = [t.get("type") for t in mime.iter("{http://www.freedesktop.org/standards/shared-mime-info}mime-type")]
    assert types == ["image/x-aperio-svs"]
    assert ET.parse(RESOURCES / di.METAINFO_FILE).getroot().findtext("id") == "io.github.histoviewer.HistoViewer"


def test_shipped_metainfo_is_valid():
    result = subprocess.run([_tool("appstreamcli"), "validate", "--no-net", str(RESOURCES / di.METAINFO_FILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@linux_only
def test_install_and_uninstall_in_a_temporary_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = _histoviewer(home, "--install-desktop")
    assert result.returncode == 0, result.stderr
    share = home / ".local" / "share"
    paths = di.installed_paths(share)
    for path in paths.values():
        assert path.is_file(), path
        assert str(path) in result.stdout
    entry = _entry(paths["desktop entry"])
    # The entry starts this very environment's program, also when it is not on PATH.
    assert entry["Exec"] == f"{sys.executable} -m viewer %f" and entry["TryExec"] == sys.executable
    assert entry["Icon"] == "histoviewer"
    assert paths["icon"].read_bytes() == (RESOURCES / di.ICON_FILE).read_bytes()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(paths["desktop entry"])], capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout
    if shutil.which("update-mime-database"):
        # The SVS type was compiled into the user's MIME database, as a kind of TIFF.
        compiled = share / "mime" / "image" / "x-aperio-svs.xml"
        assert compiled.is_file()
        assert "*.svs" in (share / "mime" / "globs2").read_text(encoding="utf-8")
    assert not list(tmp_path.rglob(".*.tmp*")), "no temporary files left behind"

    again = _histoviewer(home, "--install-desktop")  # installing twice replaces, never fails
    assert again.returncode == 0, again.stderr

    removed = _histoviewer(home, "--uninstall-desktop")
    assert removed.returncode == 0, removed.stderr
    assert not any(p.exists() for p in paths.values())
    if shutil.which("update-mime-database"):
        assert not (share / "mime" / "image" / "x-aperio-svs.xml").exists()
    nothing = _histoviewer(home, "--uninstall-desktop")
    assert nothing.returncode == 0 and "nothing removed" in nothing.stdout


@linux_only
def test_xdg_data_home_is_respected(tmp_path):
    target = tmp_path / "data"
    paths = di.install(target, ["/opt/HistoViewer/histoviewer"])
    assert all(str(p).startswith(str(target)) for p in paths.values())
    assert _entry(paths["desktop entry"])["Exec"] == "/opt/HistoViewer/histoviewer %f"
    assert di.data_home({"XDG_DATA_HOME": str(target)}) == target
    assert di.data_home({"XDG_DATA_HOME": "relative/ignored"}) == Path.home() / ".local" / "share"


def test_exec_quoting_follows_the_desktop_entry_spec():
    assert di.exec_value(["/opt/hv/histoviewer"]) == "/opt/hv/histoviewer"
    assert di.exec_value(["/home/a b/.venv/bin/python", "-m", "viewer"]) == '"/home/a b/.venv/bin/python" -m viewer'
    assert di.exec_value(["/x/100%/hv"]) == "/x/100%%/hv"
    # A '$' is escaped for the Exec quoting, then the backslash once more for the string value.
    assert di.exec_value(["/x/$HOME/hv"]) == '"/x/\\\\$HOME/hv"'


@linux_only
def test_install_into_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {k: v for k, v in os.environ.items()}
    env["XDG_DATA_HOME"] = str(blocker / "share")  # a folder inside a file: cannot exist
    result = subprocess.run([sys.executable, "-m", "viewer", "--install-desktop"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_options_are_in_the_help_and_never_open_the_window():
    from viewer import cli

    assert not cli._wants_gui(["--install-desktop"]) and not cli._wants_gui(["--uninstall-desktop"])
    text = cli.build_parser().format_help()
    assert "--install-desktop" in text and "--uninstall-desktop" in text

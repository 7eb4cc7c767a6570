"""Third-party components and their licences, read from the installed distributions' metadata.

One source for two readers: the About dialog lists every component with its licence, and
``packaging/build.py`` writes ``THIRD_PARTY_NOTICES.txt`` into the bundle (the list, what the
LGPL asks of us for OpenSlide and Qt, and each distribution's licence files in full). The
components are HistoViewer's requirements and theirs, as installed (pip install or bundle: the
bundle carries the same metadata), so the list cannot drift from what is shipped.

``python -m viewer.notices --out FILE [--licence-text NAME=FILE ...]`` writes the file.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from viewer import __version__

ROOT = "histoviewer"

LGPL_COMPONENTS = {
    # distribution -> what the LGPL asks of a program that ships it, said for this program.
    "openslide-bin": (
        "OpenSlide and the libraries built into it (glib, cairo, pixman, libdicom, OpenJPEG, "
        "libtiff, libxml2, ...) form one shared library, libopenslide, licensed under the GNU "
        "Lesser General Public License 2.1 (its bundled parts under the licences listed below). "
        "HistoViewer does not link it: openslide-python loads it at run time with ctypes, from "
        "openslide_bin/libopenslide.so.1 (libopenslide-1.dll on Windows, libopenslide.1.dylib on "
        "macOS) in the bundle's _internal folder or in the openslide-bin package of a pip install. "
        "You may replace that file with your own, modified build of OpenSlide with the same "
        "interface. Source code of OpenSlide and of the openslide-bin build: "
        "https://github.com/openslide/openslide and https://github.com/openslide/openslide-bin "
        "(each openslide-bin release publishes the exact source archive it was built from)."
    ),
    "pyside6-essentials": (
        "The Qt 6 libraries (libQt6Core, libQt6Gui, libQt6Widgets, ... and the Qt plugins) and their "
        "Python binding PySide6 are used under the GNU Lesser General Public License 3.0 (the full "
        "text and the GNU GPL 3.0 it builds on are at the end of THIRD_PARTY_NOTICES.txt). They are "
        "shipped unmodified as separate shared libraries, dynamically linked (in the bundle: "
        "_internal/PySide6/Qt/lib and _internal/PySide6/Qt/plugins), so you may replace them with "
        "a modified build of the same Qt version. Source code: https://download.qt.io/official_releases/qt/ "
        "(Qt) and https://code.qt.io/cgit/pyside/pyside-setup.git (PySide6, shiboken6); the version is "
        "given in the list below."
    ),
}
LGPL_COMPONENTS["shiboken6"] = "Part of PySide6: see PySide6-Essentials above."
LGPL_COMPONENTS["openslide-python"] = (
    "The Python binding of OpenSlide (LGPL 2.1) is shipped as its unmodified source files (in the "
    "bundle: _internal/openslide/*.py, outside the compressed archive), which you may replace with a "
    "modified version. Source: https://github.com/openslide/openslide-python."
)


@dataclass(frozen=True)
class Component:
    """One installed distribution: name, version, licence (short form), project address."""

    name: str
    version: str
    licence: str
    url: str


def canonical(name: str) -> str:
    """The normalised distribution name (PEP 503): 'PySide6_Essentials' -> 'pyside6-essentials'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: Iterable[str]) -> list[str]:
    """Names of the requirements that apply here (markers evaluated, extras left out)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with TensorFlow, matplotlib...
        Requirement = None
    names = []
    for text in requirements:
        if Requirement is None:
            head, _, marker = text.partition(";")
            if "extra" in marker:
                continue
            names.append(re.split(r"[\s<>=!~\[(;]", head.strip(), maxsplit=1)[0])
            continue
        requirement = Requirement(text)
        if requirement.marker is not None:
            try:
                if not requirement.marker.evaluate({"extra": ""}):
                    continue
            except Exception:  # a marker this packaging version cannot evaluate: keep it
                pass
        names.append(requirement.name)
    return names


def _root_requirements(root: str) -> list[str]:
    try:
        return list(metadata.requires(root) or [])
    except metadata.PackageNotFoundError:
        # A checkout used without installing it: the dependencies of its pyproject.toml.
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if not pyproject.is_file():
            return []
        return list(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"])


def distribution_closure(root: str = ROOT) -> set[str]:
    """Installed distributions ``root`` needs, directly or not (canonical names, ``root`` excluded)."""
    seen: set[str] = set()
    todo = _requirement_names(_root_requirements(root))
    while todo:
        name = canonical(todo.pop())
        if name in seen or name == canonical(root):
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (an optional or other-platform requirement)
        seen.add(name)
        todo.extend(_requirement_names(requires))
    return seen


def licence_of(dist: metadata.Distribution) -> str:
    """The licence in short form: License-Expression, else a short License field, else the classifiers."""
    meta = dist.metadata
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    field = " ".join((meta.get("License") or "").split())
    if field and len(field) <= 80 and field.upper() != "UNKNOWN":
        return field
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return " / ".join(classifiers)
    return "see its licence file" if meta.get_all("License-File") else "not stated in its metadata"


def _url_of(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    if meta.get("Home-page"):
        return meta["Home-page"]
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "home", "source", "source code", "repository"):
            return url.strip()
    entries = meta.get_all("Project-URL") or []
    return entries[0].partition(",")[2].strip() if entries else ""


def components(root: str = ROOT) -> list[Component]:
    """Every third-party distribution shipped with HistoViewer, sorted by name."""
    out = []
    for name in distribution_closure(root):
        dist = metadata.distribution(name)
        out.append(Component(dist.metadata["Name"], dist.version, licence_of(dist), _url_of(dist)))
    return sorted(out, key=lambda c: c.name.lower())


def licence_files(name: str) -> list[tuple[str, str]]:
    """(file name, text) of the licence files a distribution ships in its metadata folder."""
    dist = metadata.distribution(name)
    found = []
    for file in dist.files or []:
        parts = file.parts
        if not parts or not parts[0].endswith(".dist-info"):
            continue
        leaf = parts[-1].upper()
        if "licenses" in parts or any(key in leaf for key in ("LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS")):
            try:
                text = Path(str(file.locate())).read_bytes().decode("utf-8", errors="replace")
            except OSError:
                continue
            if text:
                found.append(("/".join(parts[1:]), text))
    return sorted(found)


def notices_text(root: str = ROOT, extra_texts: Sequence[tuple[str, str]] = ()) -> str:
    """THIRD_PARTY_NOTICES.txt: the list, the LGPL obligations, then every licence text."""
    items = components(root)
    rule = "=" * 78
    lines = [
        f"HistoViewer {__version__}: third-party components and their licences",
        rule,
        "",
        "HistoViewer itself is MIT-licensed (LICENSE). It ships the components below, each under its",
        "own licence. This file is generated from the installed distributions' metadata",
        "(python -m viewer.notices); the licence texts follow the list.",
        "",
        f"Python {platform.python_version()} (the interpreter inside the bundle): PSF License Agreement,",
        "  https://docs.python.org/3/license.html",
        "The bundle's launcher: PyInstaller's bootloader, GPL-2.0-or-later with the PyInstaller",
        "  bootloader exception (which allows it to be shipped with any program), https://pyinstaller.org",
        "The bundled model was trained on BreCaHAD (Aksac et al. 2019, BMC Research Notes 12:82,",
        "  doi:10.6084/m9.figshare.7379186.v3), licensed CC BY 4.0; the dataset itself is not shipped.",
        "",
        f"{'Component':<28} {'Version':<14} Licence",
        f"{'-' * 28} {'-' * 14} {'-' * 34}",
    ]
    for c in items:
        lines.append(f"{c.name:<28} {c.version:<14} {c.licence}")
    lines += ["", rule, "LGPL components: what you may do, and where the source is", rule, ""]
    present = {canonical(c.name): c for c in items}
    for name, text in LGPL_COMPONENTS.items():
        if name in present:
            c = present[name]
            lines += [f"{c.name} {c.version} ({c.licence})", *_wrap(text), ""]
    for c in items:
        texts = licence_files(c.name)
        lines += [rule, f"{c.name} {c.version}: {c.licence}", f"{c.url}" if c.url else "", rule, ""]
        if not texts:
            lines += ["(The distribution ships no licence file; its licence is named above.)", ""]
        for file_name, text in texts:
            lines += [f"--- {file_name} ---", text.rstrip(), ""]
    for title, text in extra_texts:
        lines += [rule, title, rule, "", text.rstrip(), ""]
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 94) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)  # addresses stay whole


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer.notices", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="file to write (THIRD_PARTY_NOTICES.txt)")
    parser.add_argument("--licence-text", action="append", default=[], metavar="TITLE=FILE",
                        help="append a licence text that no distribution ships (e.g. the LGPL 3.0 for Qt)")
    args = parser.parse_args(argv)
    extra = []
    for item in args.licence_text:
        title, _, file = item.partition("=")
        extra.append((title, Path(file).read_text(encoding="utf-8")))
    from viewer.atomic import atomic_output

    with atomic_output(args.out, force=True) as tmp:
        tmp.write_text(notices_text(extra_texts=extra), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

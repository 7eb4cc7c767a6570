"""Build the one-folder HistoViewer application: ``python packaging/build.py`` -> dist/HistoViewer/.

Run it with the Python of a separate build environment (never the one you develop in: the
checkout is installed into it, not in editable mode):

    python3 -m venv build-venv
    build-venv/bin/pip install -r packaging/requirements-build.txt .
    build-venv/bin/python packaging/build.py
    build-venv/bin/python packaging/smoke_test.py

Steps: install this checkout into the running environment (``pip install --no-deps``, so the bundle
has exactly this code and its metadata), write THIRD_PARTY_NOTICES.txt from the installed
distributions, run PyInstaller on packaging/histoviewer.spec, then copy the notices, the licence,
the README and packaging/README.md (as PACKAGING.md) beside the executable and print the size.

``--no-trim`` builds without leaving out the unused Qt modules, TensorFlow parts and test suites
(see bundle_config.py), to measure what trimming saves. Linux is built and tested here; the spec
also names the Windows (.exe) and macOS (.app) outputs, untested.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bundle_config import APP_NAME, executable, folder_size  # noqa: E402

LICENCE_TEXTS = {
    # Texts that no installed distribution ships, for the Qt obligations (PySide6 names the
    # licence but carries no text).
    "GNU Lesser General Public License 3.0 (Qt, PySide6, shiboken6)": HERE / "licenses" / "LGPL-3.0.txt",
    "GNU General Public License 3.0 (the LGPL 3.0 builds on it)": HERE / "licenses" / "GPL-3.0.txt",
}


def run(command: list[str], **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(REPO / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--work", default=str(REPO / "build" / "pyinstaller"), help="PyInstaller's work folder")
    parser.add_argument("--no-trim", action="store_true", help="keep everything PyInstaller collects")
    parser.add_argument("--no-install", action="store_true",
                        help="do not (re)install this checkout into the build environment first")
    args = parser.parse_args(argv)

    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        print(
            "build.py: PyInstaller is not installed in this Python. Make a build environment:\n"
            "  python3 -m venv build-venv && build-venv/bin/pip install -r packaging/requirements-build.txt .\n"
            "  build-venv/bin/python packaging/build.py",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    if not args.no_install:
        run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet", str(REPO)])

    notices = REPO / "build" / "THIRD_PARTY_NOTICES.txt"
    notices.parent.mkdir(parents=True, exist_ok=True)
    extra = [f"--licence-text={title}={path}" for title, path in LICENCE_TEXTS.items()]
    # Run from outside the checkout so the installed package (not ./viewer) is the one read.
    run([sys.executable, "-m", "viewer.notices", "--out", str(notices), *extra], cwd=str(REPO / "build"))

    dist = Path(args.dist)
    env = dict(os.environ, HISTOVIEWER_TRIM="0" if args.no_trim else "1")
    run([sys.executable, "-m", "PyInstaller", str(HERE / "histoviewer.spec"), "--noconfirm", "--clean",
         "--distpath", str(dist), "--workpath", args.work], env=env, cwd=str(REPO / "build"))

    bundle = dist / APP_NAME
    # README.md is the project's (the launcher's xcb message points to its section);
    # PACKAGING.md says how the bundle was made.
    for source, name in ((notices, "THIRD_PARTY_NOTICES.txt"), (REPO / "LICENSE", "LICENSE.txt"),
                         (REPO / "README.md", "README.md"), (HERE / "README.md", "PACKAGING.md")):
        shutil.copyfile(source, bundle / name)
    exe = executable(dist)
    size = folder_size(bundle)
    print(f"\nbuilt {exe} ({'untrimmed' if args.no_trim else 'trimmed'}): {size / 2**20:.0f} MiB in "
          f"{sum(1 for p in bundle.rglob('*') if p.is_file())} files, {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke test of the built bundle: ``python packaging/smoke_test.py [--dist dist]``.

Run it with the Python of the environment the bundle was built from (it is the reference: the
"pip install" that every result of the bundle is compared with). Also collected by
``pytest -m packaging`` (tests/test_bundle.py), never by the default test run.

Checks, each against the pip install in the same run:
  - ``--version`` prints the same version;
  - the bundle carries OpenSlide's library, TIFF codecs, the model and THIRD_PARTY_NOTICES.txt;
  - ``info`` on a JPEG-tiled TIFF (decoded by imagecodecs) and on a Hamamatsu VMS (OpenSlide only)
    gives the same answer;
  - ``heatmap`` gives the same array (max |diff| <= 1e-6) and ``export`` the same figure;
  - ``batch`` runs its Dask worker processes from the frozen program, with the same summary;
  - the window starts offscreen, shows, lists the same third-party licences in Help › About,
    loads the model, computes the heatmap and quits with 0;
and prints the bundle's size, its start-up time to window and to model ready, beside the pip
install's. Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bundle_config import APP_NAME, executable, folder_size  # noqa: E402

MAX_HEATMAP_DIFF = 1e-6
TIMEOUT = 600
WINDOW_TIMEOUT = 300


class Bundle:
    """The two programs under comparison: the bundle's executable and ``python -m viewer``."""

    def __init__(self, dist: Path, python: str = sys.executable) -> None:
        self.exe = executable(dist)
        self.folder = dist / APP_NAME
        self.reference = [python, "-m", "viewer"]
        if not self.exe.is_file():
            raise SystemExit(f"smoke_test: no bundle at {self.exe}; build it first: python packaging/build.py")

    def run(self, which: str, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        command = [str(self.exe)] if which == "bundle" else list(self.reference)
        return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=TIMEOUT,
                              env=env, cwd=cwd)

    def both(self, *argv: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        bundle, pip = self.run("bundle", *argv, cwd=cwd), self.run("pip", *argv, cwd=cwd)
        for name, result in (("bundle", bundle), ("pip install", pip)):
            assert result.returncode == 0, f"{name}: {' '.join(argv)} exited {result.returncode}: {result.stderr[-800:]}"
        return bundle, pip


# --------------------------------------------------------------------------- inputs


def write_tiff(path: Path) -> Path:
    """A 480 x 360 JPEG-tiled TIFF, pink 'tissue' with dark 'nuclei' (JPEG needs imagecodecs)."""
    import tifffile

    rng = np.random.default_rng(14)
    image = np.empty((360, 480, 3), np.uint8)
    image[...] = (232, 178, 204)
    image += rng.integers(0, 14, image.shape, dtype=np.uint8)
    yy, xx = np.mgrid[0:360, 0:480]
    for x, y in rng.uniform(40, 320, (12, 2)):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 49] = (90, 40, 120)
    tifffile.imwrite(path, image, photometric="rgb", compression="jpeg", tile=(128, 128))
    return path


def write_vms(folder: Path) -> Path:
    """A Hamamatsu VMS (an index and JPEGs with restart markers): a format only OpenSlide reads."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:128, 0:512].astype(np.float64)
    pixels = np.stack([128 + 100 * np.sin(x / 41), 128 + 100 * np.cos(y / 53), 128 + 60 * np.sin((x + y) / 71)],
                      axis=-1).round().astype(np.uint8)

    def jpeg(name: str, data: np.ndarray) -> None:
        Image.fromarray(data).save(folder / name, quality=95, subsampling=0, restart_marker_blocks=data.shape[1] // 16)

    jpeg("slide(0,0).jpg", pixels[:, :256])
    jpeg("slide(1,0).jpg", pixels[:, 256:])
    jpeg("slide_map.jpg", pixels[::4, ::4])
    Image.fromarray(pixels[:64, :96]).save(folder / "slide_macro.jpg", quality=95)
    index = folder / "slide.vms"
    index.write_text("\n".join([
        "[Virtual Microscope Specimen]", "NoLayers=1", "NoJpegColumns=2", "NoJpegRows=1",
        "MapFile=slide_map.jpg", "MacroImage=slide_macro.jpg", "SourceLens=20",
        "PhysicalWidth=128000", "PhysicalHeight=32000",
        "ImageFile(0,0)=slide(0,0).jpg", "ImageFile(1,0)=slide(1,0).jpg",
    ]) + "\n", encoding="utf-8")
    return index


# --------------------------------------------------------------------------- checks


def check_version(b: Bundle, work: Path) -> str:
    bundle, pip = b.both("--version")
    assert bundle.stdout.strip() == pip.stdout.strip(), (bundle.stdout, pip.stdout)
    return bundle.stdout.strip()


def check_contents(b: Bundle, work: Path) -> str:
    internal = b.folder / "_internal"
    libs = sorted(internal.glob("openslide_bin/libopenslide*"))
    assert libs, "openslide-bin's shared library was not collected"
    codecs = sorted(internal.glob("imagecodecs/_jpeg8*")) + sorted(internal.glob("imagecodecs/_zlib*"))
    assert len(codecs) >= 2, "imagecodecs' JPEG and zlib codecs were not collected"
    assert (internal / "viewer" / "resources" / "convnet_brecahad.keras").is_file(), "model missing"
    from viewer.display_check import README_SECTION

    section = README_SECTION.split("'")[1]  # the launcher's xcb message points there
    assert section in (b.folder / "README.md").read_text(encoding="utf-8"), f"README.md lacks {section!r}"
    notices = (b.folder / "THIRD_PARTY_NOTICES.txt").read_text(encoding="utf-8")
    for needle in ("openslide-bin", "PySide6", "GNU LESSER GENERAL PUBLIC LICENSE", "download.qt.io"):
        assert needle in notices, f"THIRD_PARTY_NOTICES.txt lacks {needle!r}"
    return f"{libs[0].name}, {len(list(internal.glob('imagecodecs/_*.so')))} imagecodecs modules, notices"


def check_info(b: Bundle, work: Path) -> str:
    tiff, vms = write_tiff(work / "field.tif"), write_vms(work / "vms")
    answers = []
    for path in (tiff, vms):
        bundle, pip = b.both("info", str(path), "--json")
        got, want = json.loads(bundle.stdout), json.loads(pip.stdout)
        assert got == want, f"info {path.name}: bundle {got} != pip {want}"
        answers.append(f"{path.suffix[1:]}: {got.get('backend')}")
    assert answers[1].endswith("openslide"), answers
    return ", ".join(answers)


def check_heatmap_and_export(b: Bundle, work: Path) -> str:
    from PIL import Image

    tiff = work / "field.tif" if (work / "field.tif").exists() else write_tiff(work / "field.tif")
    for which in ("bundle", "pip"):
        result = b.run(which, "heatmap", str(tiff), "--out", str(work / f"{which}.npy"), "--quiet")
        assert result.returncode == 0, f"{which} heatmap: {result.stderr[-800:]}"
        result = b.run(which, "export", str(tiff), "--out", str(work / f"{which}.png"), "--legend", "--quiet")
        assert result.returncode == 0, f"{which} export: {result.stderr[-800:]}"
    models = {w: json.loads((work / f"{w}.json").read_text(encoding="utf-8"))["model"]["sha256"] for w in ("bundle", "pip")}
    assert models["bundle"] == models["pip"], (
        f"the bundle and the reference carry different bundled models ({models}): run the smoke test with the "
        "Python of the environment the bundle was built from, or rebuild")
    got, want = np.load(work / "bundle.npy"), np.load(work / "pip.npy")
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert diff <= MAX_HEATMAP_DIFF, f"heatmap max |diff| {diff:.2e} > {MAX_HEATMAP_DIFF}"
    png_got, png_want = (np.asarray(Image.open(work / f"{w}.png")) for w in ("bundle", "pip"))
    png_diff = int(np.max(np.abs(png_got.astype(int) - png_want))) if png_got.shape == png_want.shape else -1
    assert png_diff in (0, 1), f"export differs: shapes {png_got.shape}/{png_want.shape}, max diff {png_diff}"
    return f"heatmap {got.shape} max |diff| {diff:.1e}; export max diff {png_diff}"


def check_batch(b: Bundle, work: Path) -> str:
    """``batch`` starts Dask worker processes: from a frozen program that needs freeze_support."""
    import csv

    folder = work / "cohort"
    folder.mkdir()
    write_tiff(folder / "one.tif")
    write_tiff(folder / "two.tif")
    rows = {}
    for which in ("bundle", "pip"):
        result = b.run(which, "batch", str(folder), "--out", str(work / f"batch-{which}"), "--workers", "1")
        assert result.returncode == 0, f"{which} batch: {result.stderr[-800:]}"
        with open(work / f"batch-{which}" / "summary.csv", newline="", encoding="utf-8") as fh:
            rows[which] = {r["output"]: (r["status"], r["tumour_fraction"], r["mean_probability"]) for r in csv.DictReader(fh)}
    assert rows["bundle"] == rows["pip"], rows
    assert all(status == "done" for status, _, _ in rows["bundle"].values()), rows["bundle"]
    return f"{len(rows['bundle'])} slides on 1 Dask worker process, summaries equal"


def timed_window(command: list[str], image: Path, work: Path, screenshot: Path | None) -> dict[str, float]:
    """Start the window offscreen on ``image``; seconds from spawn to each milestone line.

    Output and errors share one pipe (read as they come, so a chatty child never blocks on a
    full pipe), and a watchdog kills a window that hangs, e.g. behind an error message box."""
    home = work / f"home-{len(list(work.glob('home-*')))}"
    home.mkdir()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               HISTOVIEWER_CACHE_DIR=str(home / "cache"),
               HISTOVIEWER_STARTUP_PROBE=str(screenshot) if screenshot else "1")
    start = time.perf_counter()
    proc = subprocess.Popen([*command, str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=work)
    watchdog = threading.Timer(WINDOW_TIMEOUT, proc.kill)
    watchdog.start()
    seen: dict[str, float] = {}
    tail: list[str] = []
    try:
        for line in proc.stdout:
            word = line.split()[0] if line.split() else ""
            if word in ("window", "components", "model", "heatmap", "failed"):
                seen.setdefault(word, time.perf_counter() - start)
                seen.setdefault("_" + word, line.strip())
            tail = (tail + [line.strip()])[-12:]
        code = proc.wait()
    finally:
        watchdog.cancel()
    output = " | ".join(tail)
    assert code == 0, f"{command[0]}: window exited {code} (killed after {WINDOW_TIMEOUT} s if -9): {output[-800:]}"
    assert {"window", "model", "heatmap"} <= set(seen), f"milestones {sorted(seen)}: {output[-800:]}"
    assert seen["_heatmap"] == "heatmap True", seen["_heatmap"]
    return seen


def check_gui(b: Bundle, work: Path, screenshot: Path | None = None) -> str:
    tiff = work / "field.tif" if (work / "field.tif").exists() else write_tiff(work / "field.tif")
    bundle = timed_window([str(b.exe)], tiff, work, screenshot)
    pip = timed_window(b.reference, tiff, work, None)
    # Help › About lists the same third-party components (the bundle carries their metadata).
    assert bundle["_components"] == pip["_components"], (bundle["_components"], pip["_components"])
    assert int(bundle["_components"].split()[1]) >= 30, bundle["_components"]
    FIGURES["window"] = (bundle["window"], pip["window"])
    FIGURES["model"] = (bundle["model"], pip["model"])
    done = f"window, {bundle['_components']} in About, model, heatmap, clean exit"
    return f"{done} (screenshot {screenshot})" if screenshot else done


FIGURES: dict[str, tuple[float, float]] = {}

PIP_SIZE = r"""
import json, sys
from importlib import metadata
from pathlib import Path
from viewer.notices import distribution_closure
total = 0
for name in sorted(distribution_closure()) + ["histoviewer"]:
    dist = metadata.distribution(name)
    for f in dist.files or []:
        p = Path(str(f.locate()))
        if p.is_file():
            total += p.stat().st_size
print(json.dumps(total))
"""


def pip_install_size(python: str) -> int:
    """Bytes of HistoViewer's installed distributions (its closure) in the reference environment."""
    result = subprocess.run([python, "-c", PIP_SIZE], capture_output=True, text=True, timeout=TIMEOUT, cwd=HERE)
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout))


CHECKS = {
    "version": check_version,
    "contents": check_contents,
    "info": check_info,
    "heatmap": check_heatmap_and_export,
    "batch": check_batch,
    "gui": check_gui,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(REPO / "dist"), help="folder holding HistoViewer/ (default dist/)")
    parser.add_argument("--screenshot", help="save the bundle's window (after its heatmap) to this PNG, or, "
                        "given a folder, the window and the About and Keyboard Shortcuts dialogs")
    args = parser.parse_args(argv)
    b = Bundle(Path(args.dist))
    failures = 0
    with tempfile.TemporaryDirectory(prefix="histoviewer-smoke-") as tmp:
        work = Path(tmp)
        for name, check in CHECKS.items():
            started = time.perf_counter()
            try:
                if name == "gui":
                    detail = check(b, work, Path(args.screenshot).resolve() if args.screenshot else None)
                else:
                    detail = check(b, work)
                print(f"ok    {name:<9} {detail} ({time.perf_counter() - started:.1f} s)", flush=True)
            except (AssertionError, subprocess.TimeoutExpired, OSError) as exc:
                failures += 1
                print(f"FAIL  {name:<9} {' '.join(str(exc).split())[:600]}", flush=True)
    size, pip = folder_size(b.folder), pip_install_size(sys.executable)
    print(f"\n{'':<26}{'bundle':>10}{'pip install':>14}")
    print(f"{'size (MiB)':<26}{size / 2**20:>10.0f}{pip / 2**20:>14.0f}   (pip: installed files of its distributions)")
    for key, label in (("window", "start-up to window (s)"), ("model", "start-up to model ready (s)")):
        if key in FIGURES:
            print(f"{label:<26}{FIGURES[key][0]:>10.2f}{FIGURES[key][1]:>14.2f}")
    print(f"\n{len(CHECKS) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-slide goals on a 50,000 x 50,000 px slide, each next to its goal and a baseline measured
in the same run (the machine is shared, so absolute times drift; the baselines drift with them).

  first view      `histoviewer SLIDE` launched as a user launches it (fresh process, fresh
                  settings) until the coarsest tiles are painted; goal 1.5 s.
                  Baselines: a bare Qt window; the old whole-image path (plain reader decoding a
                  15k x 15k TIFF whole) against the tiled reader on that same file.
  stalls          worst gap of a 1 ms QTimer while a script pans and zooms with a cold tile
                  cache; goal <= 50 ms. Baseline: the idle loop's worst gap.
  sharp           view stopped -> every visible tile of the right level painted, warm cache
                  (back to places visited before); goal <= 300 ms. Cold stops shown too.
  peak RSS        VmHWM while browsing, and while the GUI's whole-slide heatmap runs (until
                  25 s after its first tissue cells, browsing meanwhile); goal <= 1.5 GB.
                  Baseline: RSS before the slide was opened (Qt + TensorFlow + model).
  throughput      tissue Mpx/s of the slide engine on a region against compute_heatmap on the
                  same pixels in RAM.

The slide is a JPEG-tiled pyramidal TIFF (256 px tiles, levels down to ~1k px, 0.25 um/px, ~40 %
tissue) written from a few pre-encoded tiles by ``tests/slide_factory.write_jpeg_tile_slide`` and
cached in benchmarks/results/ (gitignored; rewritten when its record does not match).
Measurements that need a clean process run in a child (``--child NAME``) that prints one
``RESULT {json}`` line. Linux only (peak RSS comes from /proc).

Usage: python benchmarks/wsi.py [--size 50000] [--repeat 3] [--heatmap-seconds 25]
(WSI_GAPS=1 also prints each event-loop gap over 40 ms during the heatmap phase with its time
since Run: planning, the first cells and the steady state stall for different reasons.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests"))  # slide_factory: the synthetic slide writer

GOAL_FIRST_VIEW_S = 1.5
GOAL_STALL_MS = 50.0
GOAL_SHARP_MS = 300.0
GOAL_RSS_MB = 1.5 * 1024

SLIDE_PARAMS = {"tile": 256, "mpp": 0.25, "tissue_fraction": 0.4, "block": 4096, "quality": 80, "seed": 0}
GENERATOR_VERSION = 1
"""Bump when write_jpeg_tile_slide changes what it writes: cached slides are then rewritten."""
HEATMAP_CAP_S = 100.0
"""The GUI heatmap phase ends at most this long after Run, tissue cells or not."""
BASELINE_SIDE = 15_000
"""The whole-image baseline: the largest slide the plain reader still decodes comfortably."""

BARE_QT = r"""
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
w = QMainWindow(); w.resize(1280, 860); w.show()
QTimer.singleShot(0, lambda: (print("window", flush=True), app.quit()))
app.exec()
"""

DEFERRED_MODEL = r"""
import sys
from PySide6.QtCore import QTimer
from viewer.gui import app as gui_app
from viewer.gui.main_window import MainWindow
load = MainWindow.load_model
MainWindow.load_model = lambda self, path: QTimer.singleShot(20000, lambda: load(self, path))
sys.exit(gui_app.run_gui(sys.argv[1]))
"""
"""Diagnostic: the same launch with the model load (TensorFlow import) held back 20 s."""


# --------------------------------------------------------------------------- process memory


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak_rss() -> None:
    """Start a new VmHWM from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


# --------------------------------------------------------------------------- the slides


def cached_slide(side: int) -> tuple[Path, str]:
    """A side x side slide in benchmarks/results/, written unless a valid one is there."""
    import tifffile
    from slide_factory import level_sizes, write_jpeg_tile_slide

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"wsi_{side}.tif"
    record = path.with_suffix(".json")
    wanted = {"version": GENERATOR_VERSION, "width": side, "height": side, **SLIDE_PARAMS}
    levels = len(level_sizes(side, side, "auto", stop_at=1024))
    try:
        saved = json.loads(record.read_text())
        if saved.pop("size_bytes") == path.stat().st_size and saved == wanted:  # cheap checks first
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                if series.shape[:2] == (side, side) and len(series.levels) == levels:
                    return path, "cached"
    except (OSError, ValueError, KeyError, tifffile.TiffFileError):
        pass
    started = time.perf_counter()
    partial = path.with_name(path.name + ".partial")
    write_jpeg_tile_slide(partial, side, side, **SLIDE_PARAMS)
    os.replace(partial, path)
    record.write_text(json.dumps(wanted | {"size_bytes": path.stat().st_size}))
    return path, f"written in {time.perf_counter() - started:.1f} s"


def tissue_places(side: int) -> dict:
    """Level-0 points and regions on tissue (from the same pattern the writer used)."""
    from slide_factory import tissue_blocks

    b = SLIDE_PARAMS["block"]
    blocks = tissue_blocks(side, side, block=b, fraction=SLIDE_PARAMS["tissue_fraction"], seed=SLIDE_PARAMS["seed"])
    rows, cols = blocks.shape
    inner = [(r, c) for r in range(rows) for c in range(cols) if blocks[r, c] and (r + 1) * b <= side and (c + 1) * b <= side]
    # Three places far apart: the first, then each next one farthest from those chosen.
    chosen = [inner[0]]
    while len(chosen) < 3 and len(chosen) < len(inner):
        chosen.append(max(inner, key=lambda rc: min((rc[0] - r) ** 2 + (rc[1] - c) ** 2 for r, c in chosen)))
    points = [((c + 0.5) * b, (r + 0.5) * b) for r, c in chosen]
    r, c = chosen[0]
    tissue_region = (c * b + b // 8, r * b + b // 8, b * 3 // 4, b * 3 // 4)  # margins >> the 24 px halo
    # A region across a tissue edge: a block corner with 1 to 3 of its 4 blocks tissue.
    mixed = None
    for r in range(1, rows):
        for c in range(1, cols):
            if r * b + b // 2 <= side and c * b + b // 2 <= side and 1 <= blocks[r - 1 : r + 1, c - 1 : c + 1].sum() <= 3:
                mixed = (c * b - b // 2, r * b - b // 2, b, b)
                break
        if mixed:
            break
    return {"points": points, "tissue_region": tissue_region, "mixed_region": mixed}


# --------------------------------------------------------------------------- children


def log(message: str) -> None:
    """Progress of a child on stderr (shown when it fails)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_child(name: str, *args: str, env: dict[str, str], timeout: float = 900) -> dict:
    """Run ``wsi.py --child name args`` in a fresh interpreter; its RESULT line as a dict."""
    proc = subprocess.run([sys.executable, __file__, "--child", name, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {name} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def child_reader(backend: str, path: str) -> dict:
    """Open a slide with ``backend`` ('plain': decoded whole; 'tiff': by tiles) and read what
    the first view shows (its coarsest level); seconds and peak RSS added."""
    from viewer.slide import open_slide

    reset_peak_rss()
    before = rss_mb()
    started = time.perf_counter()
    slide = open_slide(path, backend=backend)
    opened = time.perf_counter() - started
    coarsest = slide.levels[-1]
    slide.read_region(len(slide.levels) - 1, 0, 0, coarsest.width, coarsest.height)
    return {"open_s": opened, "first_view_s": time.perf_counter() - started, "peak_added_mb": peak_rss_mb() - before,
            "peak_mb": peak_rss_mb()}


def child_throughput(path: str, places: str, pairs: str) -> dict:
    """Slide engine (tissue cells only, read from the slide) vs compute_heatmap on the same
    pixels in RAM, alternated so load from other processes hits both."""
    import numpy as np

    from viewer import DEFAULT_STRIDE
    from viewer.heatmap import compute_heatmap, warm_up
    from viewer.heatmap.slide_run import SlideHeatmapOptions, compute_slide_array, plan_slide_heatmap
    from viewer.model import bundled_model_path, load_model
    from viewer.slide import open_slide

    stride = DEFAULT_STRIDE
    model_path = bundled_model_path()
    model = load_model(model_path)
    warm_up(model, stride)
    slide = open_slide(path)
    out = {}
    for name in ("tissue_region", "mixed_region"):
        region = json.loads(places)[name]
        if region is None:
            continue
        plan = plan_slide_heatmap(slide, model_path, SlideHeatmapOptions(stride=stride, region=tuple(region)))
        pixels = slide.read_region(0, *region)
        slide_map = compute_slide_array(plan, model)  # untimed: kernels for these tile shapes
        ram_map = compute_heatmap(pixels, model, stride)
        both = np.isfinite(slide_map)
        diff = float(np.abs(slide_map[both] - ram_map[both]).max()) if both.any() else 0.0
        slide_s, ram_s = [], []
        for _ in range(int(pairs)):
            started = time.perf_counter()
            compute_slide_array(plan, model)
            slide_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            compute_heatmap(pixels, model, stride)
            ram_s.append(time.perf_counter() - started)
        rows, cols = plan.shape
        out[name] = {
            "region": region, "slide_s": slide_s, "ram_s": ram_s, "max_diff": diff,
            "tissue_mpx": plan.tissue_cells * plan.cell_area_px / 1e6, "all_mpx": rows * cols * plan.cell_area_px / 1e6,
            "tissue_share": plan.tissue_cells / max(1, rows * cols),
        }
    return out


def child_gui(path: str, places: str, heatmap_seconds: str) -> dict:
    """The viewer in this process: idle loop, scripted browsing (cold then warm), then a
    heatmap run while browsing goes on."""
    os.environ["HISTOVIEWER_CACHE_DIR"] = tempfile.mkdtemp(prefix="histoviewer-bench-cache-")
    from PySide6.QtCore import QEvent, QEventLoop, QObject, QSettings, Qt, QTimer

    from viewer.gui.app import create_application
    from viewer.gui.wait import wait_for

    app = create_application()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      tempfile.mkdtemp(prefix="histoviewer-bench-settings-"))
    import numpy as np

    from viewer.gui.canvas import ZOOM_STEP
    from viewer.gui.main_window import MainWindow
    from viewer.gui.settings import Settings

    Settings().set_auto_run_heatmap(False)
    points = [tuple(p) for p in json.loads(places)["points"]]
    window = MainWindow()
    window.resize(1280, 860)
    window.show()
    window.start()
    wait_for(window.model_ready)
    app.processEvents()
    log("model ready")
    floor = rss_mb()
    window.open_image(path)
    wait_for(window.image_opened)
    canvas = window.canvas
    log("slide opened")

    class Monitor(QObject):
        """Gaps between ticks of a 1 ms timer, and 'sharp' times: from the view stopping to the
        first moment every visible tile of the right level is drawn (canvas.is_drawn()) and a
        paint has happened since the last tile was added (so it is on screen). Ticks run after
        a paint has finished, so a tick sees the picture the user sees."""

        def __init__(self) -> None:
            super().__init__()
            self.timer = QTimer(interval=1, timerType=Qt.TimerType.PreciseTimer)
            self.timer.timeout.connect(self._tick)
            self.gaps: list[float] = []
            self.big: list[tuple[float, float]] = []
            self.sharp: list[tuple[str, str, float]] = []
            self._last = 0.0
            self._watch: tuple[str, str, float] | None = None
            self._painted = False
            canvas.viewport().installEventFilter(self)
            canvas.tile_layer.tiles_changed.connect(self._tiles_changed)

        def start(self) -> None:
            self.gaps = []
            self._last = time.perf_counter()
            self.timer.start()

        def stop(self) -> np.ndarray:
            self.timer.stop()
            return np.array(self.gaps) * 1000

        def _tick(self) -> None:
            now = time.perf_counter()
            self.gaps.append(now - self._last)
            if now - self._last > 0.04:
                self.big.append((now, now - self._last))
            self._last = now
            if self._watch is not None and self._painted and canvas.is_drawn():
                kind, label, t0 = self._watch
                self._watch = None
                self.sharp.append((kind, label, (now - t0) * 1000))

        def watch(self, kind: str, label: str) -> None:
            """The view just stopped: time it until sharp (the view change itself is not painted yet)."""
            self._watch = (kind, label, time.perf_counter())
            self._painted = False
            # The view change has scheduled a paint anyway; asking for one makes sure a paint
            # follows even when Qt merged it into one that ran already.
            canvas.viewport().update()

        def resolved(self) -> bool:
            return self._watch is None

        def _tiles_changed(self) -> None:
            self._painted = False

        def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
            if event.type() == QEvent.Type.Paint:
                self._painted = True
            return False

    monitor = Monitor()

    def run_script(steps) -> None:
        """Drive a generator of waits (ms) from the event loop, as a user's input would come."""
        loop, failure = QEventLoop(), []

        def step() -> None:
            try:
                delay = next(steps)
            except StopIteration:
                loop.quit()
                return
            except BaseException as exc:  # an exception in a slot would only be printed
                failure.append(exc)
                loop.quit()
                return
            QTimer.singleShot(max(0, int(delay)), step)  # precise below 2 s

        QTimer.singleShot(0, step)
        loop.exec()
        if failure:
            raise failure[0]

    def settle(kind: str, label: str, limit_s: float = 5.0):
        monitor.watch(kind, label)
        log(f"{kind}: {label}")
        waited = 0
        while not monitor.resolved() and waited < limit_s * 1000:
            yield 20
            waited += 20
        if not monitor.resolved():
            layer = canvas.tile_layer
            log(f"  not sharp after {limit_s} s: drawn={canvas.is_drawn()} view_timer={canvas._view_timer.isActive()} "
                f"pending={len(layer._pending)} in_flight={len(layer._in_flight)} redraw={layer._redraw_timer.isActive()} "
                f"complete={layer.is_complete()} missing={[k for k in layer._visible + layer._coarse if k not in layer._items][:5]} "
                f"level={layer.level} cache={len(layer.cache)}")
            monitor.sharp.append((kind, label, float("nan")))
            monitor._watch = None
        yield 150  # a user looks before moving on

    # Movements end on their last view change, never on a wait: settle() must start the clock
    # before the canvas has had a chance to react.
    def zoom_to_100(place):
        canvas.centre_on(*place)
        while canvas.zoom_level() * ZOOM_STEP < 1.0:
            yield 80  # one wheel click every 80 ms
            canvas.zoom_by(ZOOM_STEP)
        yield 80
        canvas.zoom_to(1.0)

    def drag(dx: float, dy: float, seconds: float):
        """A mouse drag: ``(dx, dy)`` screen px per 16 ms frame."""
        for frame in range(int(seconds * 1000 / 16)):
            if frame:
                yield 16
            zoom = canvas.zoom_level()
            canvas.view.translateBy(x=dx / zoom, y=dy / zoom)

    def zoom_clicks(count: int):
        for click in range(abs(count)):
            if click:
                yield 80
            canvas.zoom_by(ZOOM_STEP if count > 0 else 1 / ZOOM_STEP)

    p1, p2, p3 = (points + points * 2)[:3]
    marks: dict[str, tuple[float, float, float]] = {}

    def remember(name: str) -> None:
        centre = canvas.view.viewRect().center()
        marks[name] = (centre.x(), centre.y(), canvas.zoom_level())

    def cold():
        yield from zoom_to_100(p1)
        remember("first")
        yield from settle("cold", "wheel zoom from the whole slide to 100 %")
        yield from drag(24, 0, 1.5)
        remember("dragged")
        yield from settle("cold", "drag right at 100 %, 1500 px/s")
        yield from drag(0, 24, 1.5)
        yield from settle("cold", "drag down at 100 %")
        yield from zoom_clicks(-8)
        remember("zoomed out")
        yield from settle("cold", "zoom out 8 clicks (17 %)")
        yield from drag(-40, -24, 1.5)
        yield from settle("cold", "fast drag at 17 %")
        canvas.centre_on(*p2)
        yield from settle("cold", "jump elsewhere (overview click)")
        yield from zoom_to_100(p2)
        remember("second")
        yield from settle("cold", "wheel zoom to 100 % there")
        canvas.fit()
        yield from settle("cold", "fit the whole slide")
        canvas.zoom_to(1.0)
        canvas.centre_on(*p3)
        yield from settle("cold", "jump at 100 % to a third place")

    def go_back(name: str):
        x, y, zoom = marks[name]
        canvas.zoom_to(zoom)
        canvas.centre_on(x, y)
        yield from ()

    def warm():
        for name, label in (("first", "back to the first place, 100 %"), ("dragged", "back to the end of the drag"),
                            ("zoomed out", "back to the 17 % view"), ("second", "back to the second place, 100 %")):
            yield from go_back(name)
            yield from settle("warm", label)

    def summary(gaps: np.ndarray) -> dict:
        return {"max": float(gaps.max()), "top3": sorted(gaps.tolist())[-3:][::-1],
                "p99": float(np.percentile(gaps, 99)), "median": float(np.median(gaps)),
                "over_50": int((gaps > GOAL_STALL_MS).sum()), "ticks": len(gaps)}

    deadline = time.perf_counter() + 30
    while not canvas.is_drawn() and time.perf_counter() < deadline:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
    monitor.start()
    loop = QEventLoop()
    QTimer.singleShot(2000, loop.quit)
    loop.exec()
    idle = monitor.stop()
    log("idle done")

    reset_peak_rss()
    monitor.start()
    run_script(cold())
    cold_gaps = monitor.stop()
    log("cold browsing done")
    monitor.start()
    run_script(warm())
    warm_gaps = monitor.stop()
    log("warm browsing done")
    browse_peak = peak_rss_mb()
    browse_end = rss_mb()
    requested = dict(canvas.tile_layer.requested)

    # Analysis > Run Heatmap on the whole slide, stopped heatmap_seconds after its first tissue
    # cells (empty chunks come first), while browsing goes on.
    cells = {"done": 0, "chunks": 0, "cell_px": 1.0, "tissue": None, "planned_at": None, "first_tissue_at": None}

    def planned(_request, run) -> None:
        cells["cell_px"] = run.plan.cell_area_px
        cells["tissue"] = None if run.plan.tissue is None else run.plan.tissue.fraction
        cells["planned_at"] = time.perf_counter()

    def tile(_request, _rows, _cols, probabilities) -> None:
        computed = int(np.isfinite(probabilities).sum())
        cells["done"] += computed
        cells["chunks"] += 1
        if computed and cells["first_tissue_at"] is None:
            cells["first_tissue_at"] = time.perf_counter()

    window.runner.planned.connect(planned)
    window.runner.tile_ready.connect(tile)
    reset_peak_rss()
    canvas.zoom_to(1.0)
    canvas.centre_on(*p1)
    monitor.start()
    started = time.perf_counter()
    window.run_heatmap()

    def during_heatmap():
        def end() -> float:
            """heatmap_seconds after the first tissue cells arrive (what memory is measured
            for), at most HEATMAP_CAP_S after Run."""
            first = cells["first_tissue_at"]
            cap = started + HEATMAP_CAP_S
            return cap if first is None else min(first + float(heatmap_seconds), cap)

        places = [p1, p2, p3]
        i = 0
        while time.perf_counter() < end():
            yield from drag(24, 8, 1.0)
            yield from settle("heatmap", "drag at 100 % while the heatmap runs")
            yield from zoom_clicks(-6)
            yield from settle("heatmap", "zoom out while the heatmap runs")
            yield from zoom_clicks(6)
            i += 1
            canvas.centre_on(*places[i % 3])
            yield from settle("heatmap", "jump while the heatmap runs")

    run_script(during_heatmap())
    log("browsing during the heatmap done")
    finished: list[bool] = []
    window.heatmap_finished.connect(finished.append)  # cancel() may report at once
    window.heatmap_controller.cancel()
    deadline = time.perf_counter() + 120
    while not finished and time.perf_counter() < deadline:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
    completed = bool(finished and finished[0])
    heatmap_gaps = monitor.stop()
    if os.environ.get("WSI_GAPS"):
        for t, g in monitor.big:
            if t >= started:
                print(f"GAP at +{t - started:6.2f} s: {g * 1000:5.0f} ms", flush=True)
    log("heatmap stopped")
    stopped_at = time.perf_counter()
    run_seconds = stopped_at - (cells["planned_at"] or started)
    tissue_seconds = None if cells["first_tissue_at"] is None else stopped_at - cells["first_tissue_at"]
    heatmap_peak = peak_rss_mb()
    window.close()
    return {
        "floor_mb": floor, "browse_peak_mb": browse_peak, "browse_end_mb": browse_end, "heatmap_peak_mb": heatmap_peak,
        "idle": summary(idle), "cold": summary(cold_gaps), "warm": summary(warm_gaps), "heatmap": summary(heatmap_gaps),
        "sharp": monitor.sharp, "requested": requested,
        "heatmap_run": {"seconds": run_seconds, "cells": cells["done"], "mpx": cells["done"] * cells["cell_px"] / 1e6,
                        "tissue_fraction": cells["tissue"], "completed": bool(completed),
                        "planning_s": (cells["planned_at"] or started) - started, "chunks": cells["chunks"], "tissue_seconds": tissue_seconds,
                        "first_tissue_s": None if cells["first_tissue_at"] is None else cells["first_tissue_at"] - started},
    }


CHILDREN = {"reader": child_reader, "throughput": child_throughput, "gui": child_gui}


# --------------------------------------------------------------------------- first view


def timed_line(command: list[str], word: str, env: dict[str, str], timeout: float = 120) -> float:
    """Seconds from spawning ``command`` to its first stdout line starting with ``word``; the
    process is then terminated (the measurement is over)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        for line in proc.stdout:
            if line.startswith(word):
                return time.perf_counter() - started
        raise RuntimeError(f"{' '.join(command)} exited ({proc.wait()}) without printing {word!r}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_env(base: dict[str, str]) -> dict[str, str]:
    """Empty settings (auto-run heatmap on, as for a new user) and an empty heatmap cache."""
    env = dict(base)
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="histoviewer-bench-config-")
    env["HISTOVIEWER_CACHE_DIR"] = tempfile.mkdtemp(prefix="histoviewer-bench-cache-")
    return env


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="side of the square slide in px (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="launches per first-view figure (median)")
    parser.add_argument("--heatmap-seconds", type=float, default=25.0,
                        help="GUI heatmap phase: seconds of computing after the first tissue cells")
    parser.add_argument("--pairs", type=int, default=3, help="alternating slide/RAM runs per throughput region")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args, _unknown = parser.parse_known_args()  # run_all.py passes its arguments to every benchmark
    if args.child:
        name, *rest = args.child
        print("RESULT " + json.dumps(CHILDREN[name](*rest)), flush=True)
        return 0

    env = dict(os.environ)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.setdefault("PYTHONPATH", str(REPO))
    histoviewer = Path(sys.executable).with_name("histoviewer")
    launch = [str(histoviewer)] if histoviewer.is_file() else [sys.executable, "-m", "viewer"]

    t_all = time.perf_counter()
    slide, how = cached_slide(args.size)
    small, small_how = cached_slide(BASELINE_SIDE)
    places = tissue_places(args.size)
    side_gb = args.size * args.size * 3 / 1e9
    print(f"slide: {slide.relative_to(REPO)} ({args.size}x{args.size} px, {side_gb:.1f} GB decoded, "
          f"{slide.stat().st_size / 1e6:.0f} MB JPEG tiles; {how}); baseline slide {BASELINE_SIDE}x{BASELINE_SIDE} ({small_how})")
    print(f"Qt platform: {env.get('QT_QPA_PLATFORM', 'default')}; launcher: {' '.join(Path(p).name for p in launch)}", flush=True)

    # 1. First view ------------------------------------------------------------------------
    first = {"bare": [], "big": [], "small": [], "deferred": []}
    view_env = dict(env, HISTOVIEWER_PRINT_FIRST_VIEW="1")
    for _ in range(args.repeat):
        first["bare"].append(timed_line([sys.executable, "-c", BARE_QT], "window", fresh_env(env)))
        first["big"].append(timed_line([*launch, str(slide)], "first-view", fresh_env(view_env)))
        first["small"].append(timed_line([*launch, str(small)], "first-view", fresh_env(view_env)))
        first["deferred"].append(timed_line([sys.executable, "-c", DEFERRED_MODEL, str(slide)], "first-view",
                                            fresh_env(view_env)))
    med = {k: statistics.median(v) for k, v in first.items()}
    print(f"\n1. first view: `histoviewer SLIDE` launch -> coarsest tiles painted (median of {args.repeat}; fresh settings, "
          "so the model loads at once and the heatmap auto-runs)")
    print(f"   bare Qt window                      {med['bare']:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in first['bare'])})")
    print(f"   histoviewer {args.size}x{args.size}        {med['big']:6.2f} s   {med['big'] / med['bare']:4.1f}x bare Qt; "
          f"goal {GOAL_FIRST_VIEW_S} s: {verdict(med['big'] <= GOAL_FIRST_VIEW_S)}   (runs: {', '.join(f'{t:.2f}' for t in first['big'])})")
    print(f"   histoviewer {BASELINE_SIDE}x{BASELINE_SIDE}        {med['small']:6.2f} s   {med['small'] / med['bare']:4.1f}x bare Qt")
    print(f"   same {args.size} px, model load held back  {med['deferred']:6.2f} s   (diagnostic: what the TensorFlow "
          "import started at launch costs the first view)", flush=True)

    # 2. Whole-image path vs tiled reader ---------------------------------------------------
    plain = run_child("reader", "plain", str(small), env=env)
    tiled = run_child("reader", "tiff", str(small), env=env)
    print(f"\n2. old whole-image path vs tiled reader, same {BASELINE_SIDE}x{BASELINE_SIDE} JPEG-tiled TIFF "
          "(fresh process each; open + read the coarsest level)")
    print(f"   plain reader (decode whole)  open {plain['open_s']:6.2f} s  first view {plain['first_view_s']:6.2f} s  "
          f"peak RSS added {plain['peak_added_mb']:6.0f} MB")
    print(f"   tiled reader                 open {tiled['open_s']:6.2f} s  first view {tiled['first_view_s']:6.2f} s  "
          f"peak RSS added {tiled['peak_added_mb']:6.0f} MB")
    print(f"   ratio plain / tiled          time {plain['first_view_s'] / tiled['first_view_s']:5.0f}x        memory "
          f"{plain['peak_added_mb'] / max(tiled['peak_added_mb'], 1):5.0f}x   "
          f"(a {args.size} px slide whole would need {side_gb:.1f} GB)", flush=True)

    # 3-5. The viewer: stalls, sharpness, memory ----------------------------------------------
    gui = run_child("gui", str(slide), json.dumps(places), str(args.heatmap_seconds), env=env)
    idle, cold, warm, during = gui["idle"], gui["cold"], gui["warm"], gui["heatmap"]

    def gaps_line(name: str, s: dict) -> str:
        return (f"   {name:30s} max {s['max']:6.1f} ms  p99 {s['p99']:5.1f} ms  median {s['median']:4.1f} ms  "
                f"gaps>50ms {s['over_50']:3d}  ({s['ticks']} ticks)")

    print("\n3. event-loop stalls (gaps of a 1 ms timer; 1280x860 window, scripted wheel zooms, drags and jumps)")
    print(gaps_line("idle (baseline)", idle))
    print(gaps_line("browsing, cold tile cache", cold))
    print(gaps_line("browsing, warm (places seen)", warm))
    print(gaps_line("browsing while heatmap runs", during))
    print(f"   worst gaps while the heatmap runs: {', '.join(f'{g:.0f}' for g in during['top3'])} ms")
    print(f"   worst stall browsing cold {cold['max']:.1f} ms = {cold['max'] / max(idle['max'], 1e-9):.1f}x idle; "
          f"goal <= {GOAL_STALL_MS:.0f} ms: {verdict(cold['max'] <= GOAL_STALL_MS)}")
    print(f"   tiles requested per level: {gui['requested']}")

    print("\n4. view stopped -> all visible tiles of the right level painted")
    for kind, label, ms in gui["sharp"]:
        if kind != "heatmap":
            print(f"   {kind:8s} {label:45s} {ms:7.0f} ms")
    busy = sorted(((ms, label) for kind, label, ms in gui["sharp"] if kind == "heatmap"), reverse=True)
    if busy:
        print(f"   while the heatmap runs: {len(busy)} stops (drags, zoom-outs, jumps), median "
              f"{statistics.median(ms for ms, _ in busy):.0f} ms, worst {busy[0][0]:.0f} ms ({busy[0][1].split(' while')[0]})")
    warm_ms = [ms for kind, _, ms in gui["sharp"] if kind == "warm"]
    cold_ms = [ms for kind, _, ms in gui["sharp"] if kind == "cold"]
    worst_warm = max(warm_ms) if warm_ms else float("nan")
    print(f"   worst warm {worst_warm:.0f} ms (cold median {statistics.median(cold_ms):.0f} ms); goal <= "
          f"{GOAL_SHARP_MS:.0f} ms warm: {verdict(worst_warm <= GOAL_SHARP_MS)}")

    run = gui["heatmap_run"]
    print("\n5. peak RSS (VmHWM) of the viewer process")
    print(f"   before opening the slide (Qt + TensorFlow + model)   {gui['floor_mb']:6.0f} MB   (baseline)")
    print(f"   browsing (cold, then warm)                           {gui['browse_peak_mb']:6.0f} MB   "
          f"+{gui['browse_peak_mb'] - gui['floor_mb']:.0f} MB; goal <= {GOAL_RSS_MB:.0f} MB: "
          f"{verdict(gui['browse_peak_mb'] <= GOAL_RSS_MB)}")
    print(f"   whole-slide heatmap running, browsing meanwhile     {gui['heatmap_peak_mb']:6.0f} MB   "
          f"+{gui['heatmap_peak_mb'] - gui['floor_mb']:.0f} MB; goal <= {GOAL_RSS_MB:.0f} MB: "
          f"{verdict(gui['heatmap_peak_mb'] <= GOAL_RSS_MB)}")
    tissue = run["tissue_fraction"]
    rate = "" if not run["tissue_seconds"] else f" = {run['mpx'] / run['tissue_seconds']:.1f} Mpx/s from the first tissue chunk on"
    first_tissue = "none" if run["first_tissue_s"] is None else f"{run['first_tissue_s']:.1f} s after Run"
    print(f"   heatmap in the GUI: planning {run['planning_s']:.1f} s (tissue "
          f"{'?' if tissue is None else f'{100 * tissue:.0f} %'}), then {run['chunks']} chunks in {run['seconds']:.0f} s; "
          f"first tissue cells {first_tissue}; {run['mpx']:.0f} tissue Mpx{rate}, while browsing", flush=True)

    # 6. Throughput ---------------------------------------------------------------------------
    thr = run_child("throughput", str(slide), json.dumps(places), str(args.pairs), env=env)
    print("\n6. heatmap throughput: slide engine (reads the slide, tissue cells only) vs compute_heatmap on the same "
          f"pixels in RAM, stride 8, {args.pairs} alternating pairs after one untimed pair")
    ratios = {}
    for name, r in thr.items():
        s, m = statistics.median(r["slide_s"]), statistics.median(r["ram_s"])
        slide_rate, ram_rate = r["tissue_mpx"] / s, r["all_mpx"] / m
        ratios[name] = (slide_rate / ram_rate, m / s)
        x, y, w, h = r["region"]
        print(f"   {name.replace('_', ' '):14s} {w}x{h} at ({x}, {y}), tissue {100 * r['tissue_share']:3.0f} %: "
              f"slide {s:5.2f} s = {slide_rate:5.2f} tissue Mpx/s; RAM {m:5.2f} s = {ram_rate:5.2f} Mpx/s; "
              f"Mpx/s ratio {slide_rate / ram_rate:4.2f}x, wall-time speed-up {m / s:4.2f}x; max |diff| {r['max_diff']:.1e}")

    # Table ---------------------------------------------------------------------------------
    rows = [
        ("first view, histoviewer SLIDE", f"{med['big']:.2f} s", f"<= {GOAL_FIRST_VIEW_S} s",
         f"bare Qt {med['bare']:.2f} s", f"{med['big'] / med['bare']:.1f}x", verdict(med['big'] <= GOAL_FIRST_VIEW_S)),
        (f"first view data, {BASELINE_SIDE // 1000}k TIFF tiled", f"{tiled['first_view_s']:.2f} s", "",
         f"plain {plain['first_view_s']:.2f} s", f"{plain['first_view_s'] / tiled['first_view_s']:.0f}x faster", ""),
        (f"  peak RSS added, {BASELINE_SIDE // 1000}k TIFF tiled", f"{tiled['peak_added_mb']:.0f} MB", "",
         f"plain {plain['peak_added_mb']:.0f} MB", f"{plain['peak_added_mb'] / max(tiled['peak_added_mb'], 1):.0f}x less", ""),
        ("worst stall, browsing cold", f"{cold['max']:.0f} ms", f"<= {GOAL_STALL_MS:.0f} ms",
         f"idle {idle['max']:.0f} ms", f"{cold['max'] / max(idle['max'], 1e-9):.1f}x", verdict(cold['max'] <= GOAL_STALL_MS)),
        ("worst stall, browsing + heatmap", f"{during['max']:.0f} ms", f"<= {GOAL_STALL_MS:.0f} ms",
         f"idle {idle['max']:.0f} ms", f"{during['max'] / max(idle['max'], 1e-9):.1f}x", verdict(during['max'] <= GOAL_STALL_MS)),
        ("sharp after stop, warm (worst)", f"{worst_warm:.0f} ms", f"<= {GOAL_SHARP_MS:.0f} ms",
         f"cold median {statistics.median(cold_ms):.0f} ms", "", verdict(worst_warm <= GOAL_SHARP_MS)),
        ("peak RSS browsing", f"{gui['browse_peak_mb']:.0f} MB", f"<= {GOAL_RSS_MB:.0f} MB",
         f"before slide {gui['floor_mb']:.0f} MB", f"{gui['browse_peak_mb'] / gui['floor_mb']:.2f}x",
         verdict(gui['browse_peak_mb'] <= GOAL_RSS_MB)),
        ("peak RSS browsing + heatmap", f"{gui['heatmap_peak_mb']:.0f} MB", f"<= {GOAL_RSS_MB:.0f} MB",
         f"before slide {gui['floor_mb']:.0f} MB", f"{gui['heatmap_peak_mb'] / gui['floor_mb']:.2f}x",
         verdict(gui['heatmap_peak_mb'] <= GOAL_RSS_MB)),
    ]
    for name, (rate_ratio, speed_up) in ratios.items():
        rows.append((f"heatmap tissue Mpx/s, {name.split('_')[0]} region", f"{rate_ratio:.2f}x RAM", "", "compute_heatmap in RAM",
                     f"wall {speed_up:.2f}x", ""))
    print(f"\nsummary ({args.size}x{args.size} px slide, {time.perf_counter() - t_all:.0f} s in all)")
    widths = [max(len(str(r[i])) for r in rows + [("figure", "measured", "goal", "baseline (same run)", "ratio", "")])
              for i in range(6)]
    header = ("figure", "measured", "goal", "baseline (same run)", "ratio", "")
    for r in [header] + rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

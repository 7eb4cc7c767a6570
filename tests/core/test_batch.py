"""``histoviewer batch`` on a real Dask cluster: a LocalCluster of 2 worker processes (and, once,
a scheduler and a worker started as separate processes), on small synthetic slides.

What must hold: every store equals the one ``histoviewer heatmap`` writes for the same slide
(array by array); a slide that cannot be opened or decoded is a ``failed`` row while the others
finish; a worker killed mid-run, or the command killed (SIGINT, SIGKILL) and run again, still gives
the same stores, with finished slides skipped; equal file names in different folders get different
output folders. Every test stops the processes it starts.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from slide_factory import copy, corrupt_tile, truncated_copy, write_jpeg_tile_slide, write_pyramidal_tiff
from viewer.batch.inputs import expand_inputs, folder_names, slide_stem
from viewer.batch.run import chunk_groups
from viewer.batch.summary import COLUMNS, SlideRow, read_summary, write_summary
from viewer.cli import main
from viewer.errors import InputError

REPO = Path(__file__).resolve().parents[2]
ARRAYS = ("probability", "tissue", "done", "overview_mean", "overview_max")
SAME_ATTRS = ("shape", "chunk", "patch", "stride", "scale", "origin", "model_sha256", "precision", "tissue_mask",
              "tissue_threshold", "tissue_fraction", "slide", "complete")


# --------------------------------------------------------------------------- helpers


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "HISTOVIEWER_DEBUG"}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def start_batch(*argv: str) -> subprocess.Popen:
    """The command in a process group of its own, so a test can press Ctrl+C the way a terminal
    does: SIGINT to every process of the group, the workers included."""
    return subprocess.Popen([sys.executable, "-m", "viewer", "batch", *argv], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_batch_cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "viewer", "batch", *argv], env=env(), capture_output=True,
                          text=True, timeout=timeout)


def reference_store(slide: Path, out: Path, *extra: str) -> Path:
    """What ``histoviewer heatmap SLIDE --out OUT.zarr`` writes (the single-process command)."""
    assert main(["heatmap", str(slide), "--out", str(out), "--quiet", *extra]) == 0
    return out


def assert_same_store(batch: Path, reference: Path) -> None:
    a, b = zarr.open_group(str(batch), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=f"{batch}: {name}")
    for key in SAME_ATTRS:
        assert a.attrs.get(key) == b.attrs.get(key), (batch, key)
    assert a.attrs["complete"] is True
    leftovers = [p for p in batch.rglob("*") if p.name.endswith((".partial", ".creating", ".replaced"))]
    assert not leftovers, leftovers


def summary_rows(outdir: Path) -> dict[str, dict]:
    with open(outdir / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(COLUMNS)
    return {row["slide"]: row for row in rows}


def finished_slides(outdir: Path) -> set[str]:
    """Inputs whose slide.json says finished (written right after the store is marked complete)."""
    out = set()
    for record in outdir.glob("*/slide.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if data.get("finished"):
            out.add(data["input"])
    return out


def children_of(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(processes: list[psutil.Process], timeout: float = 30) -> None:
    _gone, alive = psutil.wait_procs(processes, timeout=timeout)
    for p in alive:  # leave nothing behind even when the assertion fails
        p.kill()
    assert not alive, f"processes left running: {alive}"


def wait_until(condition, process: subprocess.Popen | None = None, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the batch ended before {what}: rc={process.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def chunk_files(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in (store / "probability").rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- inputs and names (no cluster)


def test_equal_stems_get_distinct_folders_named_by_their_parents():
    paths = ["/data/case1/slide.svs", "/data/case2/slide.svs", "/data/case3/other.svs", "/x/a/scan/s.tif",
             "/y/b/scan/s.tif", "/data/case1/Slide.ndpi"]
    names = folder_names(paths)
    assert names == ["slide-case1-svs", "slide-case2", "other", "s-a-scan", "s-b-scan", "Slide-case1-ndpi"]
    assert len({n.casefold() for n in names}) == len(names)  # also on case-insensitive file systems
    assert names == folder_names(paths)  # deterministic
    # an input keeps the folder an earlier run gave it; a new input never takes a claimed one
    claimed = {"slide": "/data/case1/slide.svs"}
    again = folder_names(["/data/case1/slide.svs", "/data/case2/slide.svs"], claimed)
    assert again == ["slide", "slide-case2"]
    assert folder_names(["/new/slide.svs"], claimed) == ["slide-2"]
    assert slide_stem("/a/b.ome.tiff") == "b" and slide_stem("/a/we ird#name.svs") == "we_ird_name"


def test_inputs_folders_and_lists_expand_in_order_each_once(tmp_path):
    (tmp_path / "cohort" / "case1").mkdir(parents=True)
    (tmp_path / "cohort" / ".hidden").mkdir()
    (tmp_path / "cohort" / "old.zarr").mkdir()
    for name in ("cohort/case1/b.svs", "cohort/a.tif", "cohort/notes.txt", "cohort/.hidden/x.tif", "cohort/old.zarr/y.png"):
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "cohort" / "results"
    out.mkdir()
    (out / "overlay.png").write_bytes(b"x")  # the batch's own output is never an input
    listing = tmp_path / "list.txt"
    listing.write_text("# cohort\n\ncohort/a.tif\n  cohort/case1/b.svs  \nmissing.svs\n")
    found = expand_inputs([tmp_path / "cohort", listing], exclude=out)
    assert found == [str(tmp_path / "cohort/a.tif"), str(tmp_path / "cohort/case1/b.svs"), str(tmp_path / "missing.svs")]
    with pytest.raises(InputError, match="not found"):
        expand_inputs([tmp_path / "nowhere"])
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="neither a slide"):
        expand_inputs([tmp_path / "data.bin"])


def test_chunk_groups_cover_each_chunk_once_in_whole_engine_blocks():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4097, size=(21, 30)) * (rng.random((21, 30)) < 0.6)
    todo = rng.random((21, 30)) < 0.9
    wanted = sorted(zip(*(a.tolist() for a in np.nonzero(todo))))
    for threads in (1, 2, 16):
        for block in ((1, 1), (2, 2), (1, 3), (3, 2)):
            groups = chunk_groups(counts, todo, 64, threads, block)
            flat = [ij for g in groups for ij in g]
            assert sorted(flat) == wanted and len(flat) == len(set(flat))
            # every engine block's chunks go to one task, so the engine tiles them as a whole run does
            owner = {ij: k for k, g in enumerate(groups) for ij in g}
            place = lambda ij: (ij[0] // block[0], ij[1] // block[1])  # noqa: E731
            for ij in flat:
                assert {owner[m] for m in flat if place(m) == place(ij)} == {owner[ij]}
            work = [sum(counts[ij] or 409.6 for ij in g) for g in groups]
            assert max(work[:-1]) <= 16 * 4096 + block[0] * block[1] * 4096  # stops at the first block over the target
    assert len(chunk_groups(counts, todo, 64, 16, (2, 2))) > len(chunk_groups(counts, todo, 64, 1, (2, 2)))
    assert chunk_groups(counts, np.zeros_like(todo), 64, 2, (1, 3)) == []


def test_summary_is_written_atomically_and_reads_back(tmp_path):
    rows = [SlideRow("/a/s.svs", "s", "done", "", 10, 20, 0.5, 0.25, 0.125, 1.5, "abc"),
            SlideRow("/a/t.svs", "t", "failed", "is corrupt")]
    write_summary(tmp_path, rows, {"threshold": 0.5})
    assert read_summary(tmp_path) == rows
    table = summary_rows(tmp_path)
    assert table["/a/s.svs"]["tumour_fraction"] == "0.25" and table["/a/t.svs"]["width"] == ""
    assert json.loads((tmp_path / "summary.json").read_text())["counts"] == {"done": 1, "skipped": 0, "failed": 1, "pending": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json"]  # no temporary files


# --------------------------------------------------------------------------- a cohort on a LocalCluster


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two pyramids named slide.tif in case1/ and case2/, a plain PNG microscope field, a slide
    with a corrupt tile (fails while computing), a truncated one (fails when opened), and a list
    naming a missing file. First run: 2 workers, overlay and GeoJSON."""
    from PIL import Image

    from slide_factory import synthetic_tissue

    root = tmp_path_factory.mktemp("cohort")
    slides = root / "slides"
    (slides / "case1").mkdir(parents=True)
    (slides / "case2").mkdir()
    good = {
        "case1": write_pyramidal_tiff(slides / "case1" / "slide.tif", 2000, 1500, tile=256, levels=3, compression="jpeg", mpp=0.25),
        "case2": write_pyramidal_tiff(slides / "case2" / "slide.tif", 1600, 1300, tile=256, levels=3, compression="jpeg",
                                      mpp=0.25, seed=3),
    }
    good["field"] = slides / "field.png"
    Image.fromarray(synthetic_tissue(0, 0, 420, 360, seed=5)).save(good["field"])
    corrupt = copy(good["case2"], slides / "corrupt.tif")
    corrupt_tile(corrupt, level=0, index=12)
    truncated = truncated_copy(good["case1"], slides / "truncated.tif", keep=0.5)
    listing = root / "more.txt"
    listing.write_text(f"{slides / 'field.png'}\nmissing.tif\n")
    out = root / "out"
    result = run_batch_cli(str(slides), str(listing), "--out", str(out), "--workers", "2", "--overlay", "--max-size", "300",
                           "--geojson")
    refs = {name: reference_store(path, root / f"ref-{name}.zarr") for name, path in good.items()}
    return {"root": root, "out": out, "good": good, "refs": refs, "corrupt": corrupt, "truncated": truncated,
            "missing": root / "missing.tif", "result": result}


@pytest.mark.slow
def test_batch_stores_equal_the_heatmap_command(cohort):
    result, out = cohort["result"], cohort["out"]
    assert result.returncode == 3, result.stderr  # some slides failed
    rows = summary_rows(out)
    for name, slide in cohort["good"].items():
        row = rows[str(slide)]
        assert row["status"] == "done" and row["error"] == ""
        folder = out / row["output"]
        assert_same_store(folder / "heatmap.zarr", cohort["refs"][name])
        probability = zarr.open_group(str(folder / "heatmap.zarr"), mode="r")["probability"][...]
        known = probability[np.isfinite(probability)]
        assert float(row["mean_probability"]) == pytest.approx(known.mean(), abs=1e-6)
        assert float(row["tumour_fraction"]) == pytest.approx((known >= 0.5).mean(), abs=1e-6)
        assert int(row["width"]) > 0 and len(row["model_sha256"]) == 64 and row["version"]
    # a whole slide has tissue detection, a microscope field none
    assert rows[str(cohort["good"]["case1"])]["tissue_fraction"] != ""
    assert rows[str(cohort["good"]["field"])]["tissue_fraction"] == ""


@pytest.mark.slow
def test_batch_overlay_and_geojson_are_the_export_commands_outputs(cohort, tmp_path):
    from PIL import Image

    out = cohort["out"]
    rows = summary_rows(out)
    slide, ref = cohort["good"]["case1"], cohort["refs"]["case1"]
    folder = out / rows[str(slide)]["output"]
    with Image.open(folder / "overlay.png") as image:
        assert max(image.size) == 300
        batch_pixels = np.asarray(image)
    assert main(["export", str(slide), "--heatmap", str(ref), "--out", str(tmp_path / "o.png"), "--max-size", "300",
                 "--no-annotations", "--quiet"]) == 0
    with Image.open(tmp_path / "o.png") as image:
        np.testing.assert_array_equal(batch_pixels, np.asarray(image))
    assert main(["export-geojson", str(slide), "--heatmap", str(ref), "--out", str(tmp_path / "t.geojson"), "--quiet"]) == 0
    assert (folder / "tumour.geojson").read_bytes() == (tmp_path / "t.geojson").read_bytes()
    assert json.loads((folder / "tumour.geojson").read_text())["type"] == "FeatureCollection"


@pytest.mark.slow
def test_unreadable_slides_are_failed_rows_and_the_rest_finish(cohort):
    result, out = cohort["result"], cohort["out"]
    rows = summary_rows(out)
    assert len(rows) == 6
    for bad, words in ((cohort["corrupt"], "corrupt"), (cohort["truncated"], "truncated"), (cohort["missing"], "not found")):
        row = rows[str(bad)]
        assert row["status"] == "failed" and words in row["error"] and "\n" not in row["error"], row
    assert sum(r["status"] == "done" for r in rows.values()) == 3
    assert result.stdout.strip().splitlines()[-1].startswith("batch: 6 slides: 3 done, 0 skipped, 3 failed")
    assert "Traceback" not in result.stderr
    document = json.loads((out / "summary.json").read_text())
    assert [r["slide"] for r in document["slides"]] == list(rows) and document["counts"]["failed"] == 3


@pytest.mark.slow
def test_equal_names_get_their_own_folders_recorded_in_the_summary(cohort):
    out = cohort["out"]
    rows = summary_rows(out)
    one, two = rows[str(cohort["good"]["case1"])], rows[str(cohort["good"]["case2"])]
    assert {one["output"], two["output"]} == {"slide-case1", "slide-case2"}
    for row in (one, two):
        assert json.loads((out / row["output"] / "slide.json").read_text())["input"] == row["slide"]
        attrs = zarr.open_group(str(out / row["output"] / "heatmap.zarr"), mode="r").attrs
        assert attrs["slide"]["width"] == int(row["width"])


@pytest.mark.slow
def test_a_finished_batch_store_opens_as_a_heatmap(cohort):
    from viewer.heatmap.data import open_heatmap

    out = cohort["out"]
    row = summary_rows(out)[str(cohort["good"]["case1"])]
    heatmap = open_heatmap(out / row["output"] / "heatmap.zarr")
    assert heatmap.shape == zarr.open_group(str(cohort["refs"]["case1"]), mode="r")["probability"].shape
    assert heatmap.grid.scale == 1.0 and np.isfinite(heatmap.read(slice(0, 10), slice(0, 10))).any()


@pytest.mark.slow
def test_a_second_run_skips_finished_slides_and_keeps_their_results(cohort):
    out = cohort["out"]
    before = summary_rows(out)
    stores = {slide: chunk_files(out / row["output"] / "heatmap.zarr") for slide, row in before.items() if row["status"] == "done"}
    result = run_batch_cli(str(cohort["root"] / "slides"), str(cohort["root"] / "more.txt"), "--out", str(out),
                           "--workers", "2", "--overlay", "--max-size", "300", "--geojson")
    assert result.returncode == 3, result.stderr
    after = summary_rows(out)
    for slide, files in stores.items():
        assert after[slide]["status"] == "skipped"
        for column in ("output", "width", "tissue_fraction", "tumour_fraction", "mean_probability", "seconds"):
            assert after[slide][column] == before[slide][column]
        assert chunk_files(out / after[slide]["output"] / "heatmap.zarr") == files  # not rewritten
    assert after[str(cohort["corrupt"])]["status"] == "failed"


@pytest.mark.slow
def test_a_new_threshold_refinalises_without_recomputing(cohort):
    out = cohort["out"]
    before = summary_rows(out)
    good = [str(p) for p in cohort["good"].values()]
    stores = {slide: chunk_files(out / before[slide]["output"] / "heatmap.zarr") for slide in good}
    result = run_batch_cli(*good, "--out", str(out), "--workers", "2", "--threshold", "0.02", "--geojson")
    assert result.returncode == 0, result.stderr
    after = summary_rows(out)
    for slide in good:
        assert after[slide]["status"] == "done"  # figures and GeoJSON made again from the store
        assert float(after[slide]["tumour_fraction"]) >= float(before[slide]["tumour_fraction"])
        assert after[slide]["mean_probability"] == before[slide]["mean_probability"]
        assert chunk_files(out / after[slide]["output"] / "heatmap.zarr") == stores[slide]
    assert json.loads((out / after[good[0]]["output"] / "slide.json").read_text())["threshold"] == 0.02


# --------------------------------------------------------------------------- workers and the command killed


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Three 6144 x 4096 JPEG-tiled slides (60 % tissue, a few seconds of compute each) and the
    stores the heatmap command writes for them."""
    root = tmp_path_factory.mktemp("big")
    (root / "slides").mkdir()
    slides = [write_jpeg_tile_slide(root / "slides" / f"s{k}.tif", 6144, 4096, block=1024, tissue_fraction=0.6, seed=k)
              for k in range(3)]
    refs = [reference_store(s, root / f"ref{k}.zarr") for k, s in enumerate(slides)]
    return {"root": root, "slides": slides, "refs": refs}


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_the_stores_are_complete_and_identical(big, tmp_path):
    from viewer.batch.cluster import batch_client
    from viewer.batch.inputs import assign_folders
    from viewer.batch.run import BatchSettings, run_batch
    from viewer.model import bundled_model_path, file_sha256

    model = bundled_model_path()
    slides = [str(s) for s in big["slides"][:2]]
    settings = BatchSettings(assign_folders(slides), tmp_path, model)
    stores = [tmp_path / f"s{k}" / "heatmap.zarr" for k in range(2)]
    outcome: dict = {}
    with batch_client(None, workers=2, model=model, model_sha256=file_sha256(model)) as (client, info):
        pids = client.run(os.getpid)
        runner = threading.Thread(target=lambda: outcome.update(result=run_batch(settings, client, threads=info.threads)))
        runner.start()
        busy: list[str] = []

        def computing() -> bool:
            done = sum(1 for s in stores for p in (s / "done" / "c").rglob("*") if p.is_file())
            if done == 0:
                return False
            busy[:] = [w for w, keys in client.processing().items() if any(str(k).startswith("chunks-") for k in keys)]
            return bool(busy)

        wait_until(lambda: computing() or not runner.is_alive(), timeout=240, what="chunk tasks")
        assert runner.is_alive(), "the batch finished before a worker could be killed"
        victim = pids[busy[0]]
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive()
        client.wait_for_workers(2, timeout=60)
        after = client.run(os.getpid)
    assert victim not in after.values() and len(after) == 2  # the nanny started a new worker
    result = outcome["result"]
    assert [row.status for row in result.rows] == ["done", "done"], [row.error for row in result.rows]
    for store, ref in zip(stores, big["refs"]):
        assert_same_store(store, ref)


@pytest.mark.slow
def test_the_command_stopped_by_ctrl_c_then_killed_resumes_to_identical_stores(big, tmp_path):
    out = tmp_path / "out"
    argv = (str(big["root"] / "slides"), "--out", str(out), "--workers", "2")
    slides = [str(s) for s in big["slides"]]

    # 1. Ctrl+C once the first slide is finished: exit 130 with one line, workers gone, summary readable.
    process = start_batch(*argv)
    workers = []
    wait_until(lambda: bool(workers.extend(children_of(process)) or finished_slides(out)), process, what="a finished slide")
    os.killpg(process.pid, signal.SIGINT)  # the process group this test started
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert_all_gone(workers)
    first = finished_slides(out)
    assert first and len(first) < 3
    rows = summary_rows(out)
    assert {r["status"] for r in rows.values()} <= {"done", "pending"}
    assert not [p for p in out.glob(".*")], "temporary summary files left"

    # 2. kill -9 while the next slide computes: nothing to clean up by hand.
    process = start_batch(*argv)
    workers = []
    wait_until(lambda: bool(workers.extend(children_of(process)) or len(finished_slides(out)) > len(first)), process,
               what="another finished slide")
    process.kill()
    process.communicate(timeout=60)
    assert_all_gone(workers)
    second = finished_slides(out)

    # 3. run to the end: earlier slides skipped, every store as the heatmap command writes it.
    result = run_batch_cli(*argv)
    assert result.returncode == 0, result.stderr
    rows = summary_rows(out)
    for slide, ref in zip(slides, big["refs"]):
        assert rows[slide]["status"] == ("skipped" if slide in second else "done")
        assert_same_store(out / rows[slide]["output"] / "heatmap.zarr", ref)
    assert result.stdout.strip().splitlines()[-1].startswith(f"batch: 3 slides: {3 - len(second)} done, {len(second)} skipped")


# --------------------------------------------------------------------------- a separately started cluster


@pytest.mark.slow
def test_a_scheduler_and_worker_started_by_hand_run_the_batch(cohort, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)], env=env(), cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = [scheduler]
    try:
        wait_until(scheduler_file.exists, scheduler, timeout=120, what="the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([*dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                   "--local-directory", str(tmp_path / "dask")], env=env(), cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.insert(0, worker)
        slide = cohort["good"]["case1"]
        result = run_batch_cli(str(slide), "--out", str(tmp_path / "out"), "--scheduler", address)
        assert result.returncode == 0, result.stderr
        assert f"cluster at {address}" in result.stderr
        row = summary_rows(tmp_path / "out")[str(slide)]
        assert row["status"] == "done"
        assert_same_store(tmp_path / "out" / row["output"] / "heatmap.zarr", cohort["refs"]["case1"])
    finally:
        descendants = [c for p in started for c in children_of(p)]
        for process in started:  # the worker first: its nanny then stops its worker process
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert_all_gone(descendants)


def test_bad_arguments_exit_2_before_any_cluster_starts(tmp_path, capsys):
    slide = tmp_path / "s.png"
    slide.write_bytes(b"x")
    for argv, words in (
        (["batch", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "not found"),
        (["batch", str(slide), "--out", str(tmp_path / "o"), "--workers", "0"], "--workers"),
        (["batch", str(slide), "--out", str(tmp_path / "o"), "--threshold", "2"], "--threshold"),
        (["batch", str(slide), "--out", str(slide)], "is a file"),
        (["batch", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no slides found"),
    ):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_slide_keeps_the_chunk_size_of_a_store_left_by_an_earlier_version(tmp_path):
    """The batch plans a slide whose folder holds a store made with 64-cell chunks (the default
    before 128) in that store's chunk size, so it resumes it; --force starts over in the default."""
    from dataclasses import replace

    from viewer.batch.tasks import STORE_NAME, SlideJob, prepare_slide
    from viewer.heatmap.slide_run import DEFAULT_CHUNK, SlideHeatmapOptions, open_store_for, plan_slide_heatmap
    from viewer.model import bundled_model_path, file_sha256
    from viewer.slide import open_slide

    slide_path = write_pyramidal_tiff(tmp_path / "case.tif", 3000, 2200, tile=256, levels=3, compression="jpeg", mpp=0.25)
    folder = tmp_path / "slide-case"
    folder.mkdir()
    model = str(bundled_model_path())
    with open_slide(slide_path) as slide:
        open_store_for(plan_slide_heatmap(slide, model, SlideHeatmapOptions(chunk=64)), folder / STORE_NAME)
    job = SlideJob(0, str(slide_path), str(folder), model, file_sha256(model), SlideHeatmapOptions(), 0.5, None, False)
    assert DEFAULT_CHUNK != 64 and prepare_slide(job).chunk == 64
    assert job.options.chunk is None  # the options the slide's record compares stay the user's
    assert prepare_slide(replace(job, force=True)).chunk == DEFAULT_CHUNK

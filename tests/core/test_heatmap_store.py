"""viewer.heatmap.store: a zarr v3 heatmap store that plain zarr reads, that resumes, and that a
kill -9 at any moment leaves consistent (the final arrays equal those of an uninterrupted run).

No TensorFlow here: "probabilities" are deterministic numpy noise.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import viewer.heatmap.store as store_module
from viewer import __version__
from viewer.errors import InputError, OutputError
from viewer.heatmap.store import HeatmapStore, file_fingerprint, reduce_overview

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE = (75, 83)
"""Cells: not a multiple of the chunk (16) nor of the overview factor (8), so edges are partial."""
CHUNK = 16
ARRAYS = ("probability", "tissue", "done", "overview_mean", "overview_max")


def make_attrs(**changes) -> dict:
    attrs = {
        "patch": 32, "stride": 8, "scale": 2.0, "origin": [1024, 512], "analysis_mpp": 0.25,
        "model_sha256": "ab" * 32,
        "slide": {"file": "case.svs", "width": 40000, "height": 30000, "size_bytes": 123456, "fingerprint": "f0" * 32},
        "analysis_size": [700, 620], "note": "an extra attribute the caller adds",
    }
    for key, value in changes.items():
        if key == "fingerprint":
            attrs["slide"] = dict(attrs["slide"], fingerprint=value)
        else:
            attrs[key] = value
    return attrs


def fake_probabilities(store: HeatmapStore, i: int, j: int) -> np.ndarray:
    """Deterministic per chunk; about a fifth NaN (background), and chunk (0, 1) wholly NaN."""
    rows, cols = store.chunk_slices(i, j)
    rng = np.random.default_rng(1000 * i + j)
    p = rng.random((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
    p[rng.random(p.shape) < 0.2] = np.nan
    if (i, j) == (0, 1):
        p[:] = np.nan
    return p


def fill(store: HeatmapStore, chunks=None) -> dict[tuple[int, int], np.ndarray]:
    written = {}
    gi, gj = store.chunk_grid
    for i, j in chunks if chunks is not None else [(i, j) for i in range(gi) for j in range(gj)]:
        p = fake_probabilities(store, i, j)
        store.write_tissue_chunk(i, j, ~np.isnan(p))
        store.write_chunk(i, j, p)
        written[(i, j)] = p
    return written


def assemble(store: HeatmapStore, written: dict) -> np.ndarray:
    full = np.full(store.shape, np.nan, np.float32)
    for (i, j), p in written.items():
        rows, cols = store.chunk_slices(i, j)
        full[rows, cols] = p
    return full


@pytest.fixture
def store(tmp_path) -> HeatmapStore:
    return HeatmapStore.create(tmp_path / "case.heatmap.zarr", shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)


# --------------------------------------------------------------------------- layout


def test_layout_is_readable_with_plain_zarr(store):
    written = fill(store, [(0, 0), (4, 5)])
    group = zarr.open_group(store.path, mode="r")
    assert sorted(group.array_keys()) == sorted(ARRAYS)

    probability = group["probability"]
    assert probability.shape == SHAPE and probability.chunks == (CHUNK, CHUNK)
    assert probability.dtype == np.float32 and np.isnan(probability.fill_value)
    assert group["tissue"].shape == SHAPE and group["tissue"].chunks == (CHUNK, CHUNK) and group["tissue"].dtype == np.uint8
    assert group["done"].shape == (5, 6) and group["done"].chunks == (1, 1)
    for kind in ("mean", "max"):
        overview = group[f"overview_{kind}"]
        assert overview.shape == (10, 11) and overview.chunks == (2, 2) and overview.dtype == np.float32

    assert np.array_equal(probability[0:16, 0:16], written[(0, 0)], equal_nan=True)
    assert np.array_equal(probability[64:75, 80:83], written[(4, 5)], equal_nan=True)
    assert np.isnan(probability[16:64, :]).all()  # never written: NaN = not computed
    assert np.array_equal(group["tissue"][0:16, 0:16], (~np.isnan(written[(0, 0)])).astype(np.uint8))
    done = np.zeros((5, 6), np.uint8)
    done[0, 0] = done[4, 5] = 1
    assert np.array_equal(group["done"][:], done)

    attrs = dict(group.attrs)
    assert attrs["format"] == "histoviewer-heatmap-store" and attrs["format_version"] == 1
    assert attrs["patch"] == 32 and attrs["stride"] == 8 and attrs["scale"] == 2.0
    assert attrs["origin"] == [1024, 512] and attrs["shape"] == list(SHAPE) and attrs["chunk"] == CHUNK
    assert attrs["model_sha256"] == "ab" * 32 and attrs["version"] == __version__
    assert attrs["precision"] == "float32" and attrs["analysis_mpp"] == 0.25 and attrs["tissue_threshold"] == 0.5
    assert attrs["slide"] == make_attrs()["slide"]
    assert attrs["complete"] is False and isinstance(attrs["created"], str)
    assert attrs["note"] == "an extra attribute the caller adds"


def test_done_is_one_file_per_chunk(store):
    """Two different probability chunks never share a file (concurrent writers cannot race)."""
    fill(store)
    chunk_files = {}
    for name in ARRAYS:
        files = sorted(p.relative_to(store.path / name) for p in (store.path / name).rglob("*") if p.is_file() and p.name != "zarr.json")
        chunk_files[name] = files
    gi, gj = store.chunk_grid
    assert len(chunk_files["done"]) == gi * gj
    # every overview chunk sits at the same chunk index as the probability chunk it summarises
    # (zarr stores no file for a chunk that is all fill value: chunk (0, 1) is all NaN)
    assert set(chunk_files["overview_max"]) == set(chunk_files["done"]) - {Path("c/0/1")}
    assert set(chunk_files["probability"]) == set(chunk_files["done"]) - {Path("c/0/1")}


def test_done_mask_agrees_with_zarr(store):
    fill(store, [(0, 0), (1, 3), (4, 5), (2, 0)])
    mask = store.done_mask()
    assert mask.dtype == bool and mask.shape == store.chunk_grid
    assert np.array_equal(mask, zarr.open_group(store.path, mode="r")["done"][:] == 1)
    assert store.progress() == (4, 30)


def test_writes_go_through_the_durable_writer(store, monkeypatch):
    events = []
    put, sync = store_module._durable_put, store_module._sync_files

    def spy_put(path, data, exclusive=False, *, sync=True):
        events.append(("put", Path(path).relative_to(store.path).as_posix(), sync))
        return put(path, data, exclusive, sync=sync)

    def spy_sync(paths):
        events.append(("sync", sorted(Path(p).relative_to(store.path).as_posix() for p in paths), None))
        return sync(paths)

    monkeypatch.setattr(store_module, "_durable_put", spy_put)
    monkeypatch.setattr(store_module, "_sync_files", spy_sync)
    p = fake_probabilities(store, 1, 1)
    store.write_chunk(1, 1, p, tissue=~np.isnan(p))
    data = ["overview_max/c/1/1", "overview_mean/c/1/1", "probability/c/1/1", "tissue/c/1/1"]
    assert sorted(key for kind, key, _ in events[:-2] if kind == "put") == data
    # the data files are made durable together, and only then the flag is written (durably)
    assert events[-2] == ("sync", data, None)
    assert events[-1] == ("put", "done/c/1/1", True)
    assert not list(store.path.rglob("*.partial"))
    assert np.array_equal(store.read_tissue(*store.chunk_slices(1, 1)), ~np.isnan(p))


def chunk_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != "zarr.json"}


def test_chunk_files_are_byte_for_byte_what_zarr_writes(store, tmp_path):
    """The store writes chunk files itself (zarr's per-write overhead was half a slide run's
    time); what it writes must be exactly what zarr would: same files, same bytes, no file for
    a chunk of fill values, edge chunks padded, and plain zarr reads the values back."""
    fill(store)
    reference = HeatmapStore.create(tmp_path / "zarr.heatmap.zarr", shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    group = zarr.open_group(reference.path, mode="r+")
    gi, gj = reference.chunk_grid
    for i in range(gi):
        for j in range(gj):
            p = fake_probabilities(reference, i, j)
            rows, cols = reference.chunk_slices(i, j)
            mean, peak = reduce_overview(p)
            small = (slice(rows.start // 8, rows.start // 8 + mean.shape[0]),
                     slice(cols.start // 8, cols.start // 8 + mean.shape[1]))
            group["tissue"][rows, cols] = (~np.isnan(p)).astype(np.uint8)
            group["probability"][rows, cols] = p
            group["overview_mean"][small] = mean
            group["overview_max"][small] = peak
            group["done"][i, j] = 1
    ours, zarrs = chunk_files(store.path), chunk_files(reference.path)
    assert sorted(ours) == sorted(zarrs) and "probability/c/0/1" not in ours  # all NaN: no file
    assert "probability/c/4/5" in ours  # an edge chunk (11 x 3 cells of 16 x 16)
    assert all(ours[name] == zarrs[name] for name in ours)
    assert np.array_equal(zarr.open_group(store.path, mode="r")["probability"][:],
                          group["probability"][:], equal_nan=True)


def test_a_chunk_rewritten_as_all_fill_value_loses_its_file(store):
    rows, cols = store.chunk_slices(2, 2)
    store.write_chunk(2, 2, np.full((rows.stop - rows.start, cols.stop - cols.start), 0.5, np.float32))
    assert (store.path / "probability/c/2/2").is_file()
    store.write_chunk(2, 2, np.full((rows.stop - rows.start, cols.stop - cols.start), np.nan, np.float32))
    assert not (store.path / "probability/c/2/2").exists()
    assert np.isnan(store.read(rows, cols)).all()


def test_arrays_with_other_codecs_are_written_through_zarr(tmp_path):
    """A layout the direct writer does not know (here: gzip) is left to zarr itself."""
    group = zarr.open_group(tmp_path / "other.zarr", mode="w")
    array = group.create_array("a", shape=(8, 8), chunks=(4, 4), dtype="float32",
                               compressors=zarr.codecs.GzipCodec())
    assert store_module._ChunkFiles.of(tmp_path / "other.zarr", array) is None
    plain = group.create_array("b", shape=(8, 8), chunks=(4, 4), dtype="float32")
    assert store_module._ChunkFiles.of(tmp_path / "other.zarr", plain) is not None


# --------------------------------------------------------------------------- round trip


def test_write_read_round_trip(store):
    written = fill(store)
    expected = assemble(store, written)
    assert np.array_equal(store.read(slice(0, SHAPE[0]), slice(0, SHAPE[1])), expected, equal_nan=True)
    block = store.read(slice(10, 40), slice(33, 70))
    assert block.dtype == np.float32 and np.array_equal(block, expected[10:40, 33:70], equal_nan=True)
    assert np.array_equal(store.read_tissue(slice(5, 50), slice(0, 83)), ~np.isnan(expected[5:50]))
    assert store.progress() == (30, 30) and store.done_mask().all()

    reopened = HeatmapStore.open(store.path)
    assert reopened.shape == SHAPE and reopened.chunk == CHUNK and reopened.chunk_grid == (5, 6)
    assert np.array_equal(reopened.read(slice(0, 75), slice(0, 83)), expected, equal_nan=True)
    assert reopened.attrs["complete"] is False
    store.mark_complete()
    assert HeatmapStore.open(store.path).attrs["complete"] is True
    assert zarr.open_group(store.path, mode="r").attrs["complete"] is True


def test_chunk_geometry_and_bad_blocks(store):
    assert store.chunk_slices(0, 0) == (slice(0, 16), slice(0, 16))
    assert store.chunk_slices(4, 5) == (slice(64, 75), slice(80, 83))
    with pytest.raises(IndexError):
        store.chunk_slices(5, 0)
    with pytest.raises(ValueError, match="shape"):
        store.write_chunk(4, 5, np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="shape"):
        store.write_tissue_chunk(0, 0, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="not done"):
        store.mark_complete()
    assert store.progress() == (0, 30)


def test_read_only_store_refuses_writes(store):
    fill(store, [(0, 0)])
    reader = HeatmapStore.open(store.path, mode="r")
    with pytest.raises(Exception):
        reader.write_chunk(1, 1, fake_probabilities(reader, 1, 1))
    assert not reader.done_mask()[1, 1]


# --------------------------------------------------------------------------- overview


def test_overview_is_nanmean_and_nanmax_of_8x8_blocks(store):
    written = fill(store)
    full = assemble(store, written)
    full[0:8, 16:24] = np.nan  # (inside the all-NaN chunk anyway)
    expected_mean = np.full((10, 11), np.nan, np.float32)
    expected_max = np.full((10, 11), np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        for r in range(10):
            for c in range(11):
                block = full[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
                expected_mean[r, c] = np.nanmean(block.astype(np.float64))
                expected_max[r, c] = np.nanmax(block)
    mean, peak = store.read_overview("mean"), store.read_overview("max")
    assert mean.dtype == np.float32 and mean.shape == (10, 11)
    assert np.array_equal(np.isnan(mean), np.isnan(expected_mean))
    assert np.isnan(mean[0, 2:4]).all()  # the all-NaN chunk stays NaN, not 0
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6, equal_nan=True)
    assert np.array_equal(peak, expected_max, equal_nan=True)
    with pytest.raises(ValueError):
        store.read_overview("median")


def test_reduce_overview_edge_blocks():
    p = np.arange(20, dtype=np.float32).reshape(4, 5)
    p[0, 0] = np.nan
    mean, peak = reduce_overview(p, factor=3)
    assert mean.shape == (2, 2)
    assert mean[0, 0] == pytest.approx(np.nanmean(p[:3, :3])) and peak[1, 1] == p[3, 4]
    assert peak[0, 0] == np.nanmax(p[:3, :3])


# --------------------------------------------------------------------------- resume


def test_open_or_create_resumes_and_skips_done_chunks(tmp_path):
    path = tmp_path / "run.zarr"
    first, resumed = HeatmapStore.open_or_create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    assert not resumed
    fill(first, [(0, 0), (2, 3), (4, 5)])

    again, resumed = HeatmapStore.open_or_create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    assert resumed and again.progress() == (3, 30)
    todo = [(i, j) for i in range(5) for j in range(6) if not again.done_mask()[i, j]]
    assert len(todo) == 27 and (2, 3) not in todo
    fill(again, todo)
    again.mark_complete()

    reference = HeatmapStore.create(tmp_path / "reference.zarr", shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    fill(reference)
    reference.mark_complete()
    assert_same_arrays(path, reference.path)


def test_chunk_interrupted_before_its_done_flag_is_redone(store, monkeypatch):
    def crash(self, i, j):
        raise KeyboardInterrupt("killed between the data and the flag")

    monkeypatch.setattr(HeatmapStore, "_mark_done", crash)
    with pytest.raises(KeyboardInterrupt):
        fill(store, [(1, 2)])
    monkeypatch.undo()
    rows, cols = store.chunk_slices(1, 2)
    assert not np.isnan(store.read(rows, cols)).all()  # the data reached the disk ...
    resumed, was_resumed = HeatmapStore.open_or_create(store.path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    assert was_resumed and not resumed.done_mask()[1, 2]  # ... but the chunk is not final
    fill(resumed, [(1, 2)])
    assert resumed.done_mask()[1, 2]


def test_resume_removes_leftovers_of_a_killed_run(store, tmp_path):
    fill(store, [(0, 0)])
    partial = store.path / "probability" / "c" / "0" / f".0.{'a' * 32}.partial"
    partial.write_bytes(b"half a chunk")
    stray = tmp_path / f".{store.path.name}.{'b' * 32}.creating"
    (stray / "probability").mkdir(parents=True)
    unrelated = tmp_path / "notes.partial"
    unrelated.write_text("not ours")

    resumed, was_resumed = HeatmapStore.open_or_create(store.path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    assert was_resumed and not partial.exists() and not stray.exists() and unrelated.exists()
    assert resumed.progress() == (1, 30)
    assert np.array_equal(zarr.open_group(store.path, mode="r")["probability"][0:16, 0:16], fake_probabilities(store, 0, 0), equal_nan=True)


@pytest.mark.parametrize(
    "change",
    [
        {"stride": 16}, {"scale": 1.0}, {"origin": [0, 512]}, {"model_sha256": "cd" * 32},
        {"fingerprint": "0f" * 32}, {"tissue_threshold": None}, {"precision": "bfloat16"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_incompatible_store_is_refused_and_force_replaces_it(tmp_path, change):
    path = tmp_path / "run.zarr"
    old = HeatmapStore.create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    fill(old, [(0, 0)])
    with pytest.raises(OutputError) as info:
        HeatmapStore.open_or_create(path, shape=SHAPE, attrs=make_attrs(**change), chunk=CHUNK)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "was made for another slide/model/settings" in message and "use --force to replace it" in message
    assert HeatmapStore.open(path).progress() == (1, 30)  # refused: left untouched

    new, resumed = HeatmapStore.open_or_create(path, shape=SHAPE, attrs=make_attrs(**change), chunk=CHUNK, force=True)
    assert not resumed and new.progress() == (0, 30)
    key = next(iter(change))
    if key == "fingerprint":
        assert new.attrs["slide"]["fingerprint"] == change[key]
    else:
        assert new.attrs[key] == change[key]
    assert [p.name for p in tmp_path.iterdir()] == ["run.zarr"]  # no hidden leftovers


@pytest.mark.parametrize("shape, chunk", [((75, 84), CHUNK), (SHAPE, 32)])
def test_other_grid_is_refused(tmp_path, shape, chunk):
    path = tmp_path / "run.zarr"
    HeatmapStore.create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    with pytest.raises(OutputError, match="use --force"):
        HeatmapStore.open_or_create(path, shape=shape, attrs=make_attrs(), chunk=chunk)


def test_create_refuses_existing_paths(tmp_path):
    path = tmp_path / "run.zarr"
    HeatmapStore.create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    with pytest.raises(OutputError, match="already exists; use --force"):
        HeatmapStore.create(path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)

    empty = tmp_path / "made-for-it.zarr"
    empty.mkdir()
    assert HeatmapStore.create(empty, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK).progress() == (0, 30)

    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="not a HistoViewer heatmap store; choose another name"):
        HeatmapStore.create(documents, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    with pytest.raises(OutputError, match="not a HistoViewer heatmap store"):
        HeatmapStore.create(documents, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK, force=True)
    with pytest.raises(OutputError, match="not a HistoViewer heatmap store"):
        HeatmapStore.open_or_create(documents, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK, force=True)
    assert (documents / "thesis.docx").read_text() == "precious"

    a_file = tmp_path / "old.zarr"
    a_file.write_text("x")
    with pytest.raises(OutputError):
        HeatmapStore.open_or_create(a_file, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    replaced, _ = HeatmapStore.open_or_create(a_file, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK, force=True)
    assert replaced.path.is_dir()

    with pytest.raises(OutputError, match="does not exist"):
        HeatmapStore.create(tmp_path / "missing" / "run.zarr", shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        HeatmapStore.create(tmp_path / "a.zarr", shape=SHAPE, attrs=make_attrs(), chunk=12)
    with pytest.raises(ValueError, match="model_sha256"):
        HeatmapStore.create(tmp_path / "a.zarr", shape=SHAPE, attrs={k: v for k, v in make_attrs().items() if k != "model_sha256"})
    with pytest.raises(ValueError, match="at least one cell"):
        HeatmapStore.create(tmp_path / "a.zarr", shape=(0, 5), attrs=make_attrs())
    assert not (tmp_path / "a.zarr").exists()


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(InputError, match="not found"):
        HeatmapStore.open(tmp_path / "nothing.zarr")
    plain = zarr.create_group(tmp_path / "plain.zarr", zarr_format=3)
    plain.create_array("x", shape=(2,), dtype="uint8")
    with pytest.raises(InputError, match="not a HistoViewer heatmap store"):
        HeatmapStore.open(tmp_path / "plain.zarr")


def test_file_fingerprint(tmp_path):
    a = tmp_path / "a.svs"
    a.write_bytes(os.urandom(3 << 20))
    b = tmp_path / "b.svs"
    b.write_bytes(a.read_bytes())
    assert file_fingerprint(a) == file_fingerprint(b)  # a copy keeps it
    data = bytearray(a.read_bytes())
    data[-5] ^= 0xFF
    b.write_bytes(bytes(data))
    assert file_fingerprint(a) != file_fingerprint(b)  # the tail counts


# --------------------------------------------------------------------------- kill -9


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from viewer.heatmap.store import HeatmapStore

    path, hang_after = sys.argv[1], int(sys.argv[2])
    shape, chunk = (75, 83), 16
    attrs = {
        "stride": 8, "scale": 2.0, "origin": [1024, 512], "model_sha256": "ab" * 32,
        "slide": {"file": "case.svs", "width": 40000, "height": 30000, "size_bytes": 1, "fingerprint": "f0" * 32},
    }
    written = 0
    if hang_after >= 0:
        write_flag = HeatmapStore._mark_done
        def flag_or_hang(self, i, j):
            if written == hang_after:  # stop in the gap between a chunk's data and its flag
                print("gap", i, j, flush=True)
                time.sleep(3600)
            write_flag(self, i, j)
        HeatmapStore._mark_done = flag_or_hang

    store, resumed = HeatmapStore.open_or_create(path, shape=shape, attrs=attrs, chunk=chunk)
    done = store.done_mask()
    print("resumed" if resumed else "created", int(done.sum()), flush=True)
    for i in range(store.chunk_grid[0]):
        for j in range(store.chunk_grid[1]):
            if done[i, j]:
                continue
            rows, cols = store.chunk_slices(i, j)
            rng = np.random.default_rng(1000 * i + j)
            p = rng.random((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
            p[rng.random(p.shape) < 0.2] = np.nan
            store.write_tissue_chunk(i, j, ~np.isnan(p))
            store.write_chunk(i, j, p)
            written += 1
            print("chunk", i, j, flush=True)
    store.mark_complete()
    print("complete", flush=True)
    """
)

DEADLINE_S = 120
"""Guard against a hung writer only; the test does not measure speed."""


def start_writer(path: Path, hang_after: int = -1) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(hang_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=path.parent,
    )


def read_line(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer exited early: {proc.wait()} {proc.stderr.read()}")
            return line.strip()
    proc.kill()
    raise AssertionError("writer hung")


def kill_writer(path: Path, chunks: int, *, in_gap: bool) -> tuple[int, tuple[int, int] | None]:
    """Run the writer and SIGKILL it after it reports ``chunks`` finished chunks: with
    ``in_gap``, while it sits between the next chunk's data and that chunk's done flag;
    otherwise at once, wherever it is. Returns the done count it started from and the chunk
    caught in the gap."""
    proc = start_writer(path, chunks if in_gap else -1)
    caught = None
    try:
        first = read_line(proc).split()
        for _ in range(chunks):
            assert read_line(proc).startswith("chunk")
        if in_gap:
            gap = read_line(proc).split()
            assert gap[0] == "gap"
            caught = (int(gap[1]), int(gap[2]))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=DEADLINE_S)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return int(first[1]), caught


def run_to_end(path: Path) -> tuple[str, int, int]:
    proc = start_writer(path)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    lines = out.split("\n")
    kind, started = lines[0].split()
    assert lines[-2] == "complete"
    return kind, int(started), sum(line.startswith("chunk") for line in lines)


def assert_same_arrays(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for name in ARRAYS:
        x, y = ga[name][...], gb[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert ga.attrs["complete"] is True and gb.attrs["complete"] is True


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    total = 5 * 6
    killed = tmp_path / "killed.zarr"

    # 1. Killed with a chunk's data on disk but its done flag not yet written.
    started, (i, j) = kill_writer(killed, 8, in_gap=True)
    assert started == 0
    store = HeatmapStore.open(killed)  # opens after a kill -9
    assert store.progress() == (8, total) and not store.done_mask()[i, j]
    rows, cols = store.chunk_slices(i, j)
    assert not np.isnan(store.read(rows, cols)).all()  # that chunk's data did reach the disk

    # 2. Resumed, and killed again at whatever point it is after 7 more chunks.
    started, _ = kill_writer(killed, 7, in_gap=False)
    assert started == 8  # resumes where the first run stopped; the half-done chunk is redone
    after_second = HeatmapStore.open(killed).progress()[0]
    assert 15 <= after_second < total

    # 3. Resumed to the end.
    kind, started, written = run_to_end(killed)
    assert (kind, started) == ("resumed", after_second)
    assert written == total - after_second  # done chunks were skipped, nothing else was

    reference = tmp_path / "reference.zarr"
    assert run_to_end(reference) == ("created", 0, total)
    assert_same_arrays(killed, reference)
    assert not list(killed.rglob("*.partial"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.zarr", "reference.zarr"]


def test_precision_is_recorded_checked_and_old_stores_count_as_float32(tmp_path):
    store = HeatmapStore.create(tmp_path / "b.zarr", shape=SHAPE, attrs=make_attrs(precision="bfloat16"), chunk=CHUNK)
    assert store.attrs["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        HeatmapStore.create(tmp_path / "x.zarr", shape=SHAPE, attrs=make_attrs(precision="float16"), chunk=CHUNK)
    # A store written before the attribute existed resumes in float32 and is refused in bfloat16.
    old = HeatmapStore.create(tmp_path / "old.zarr", shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    meta_path = old.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["precision"]
    meta_path.write_text(json.dumps(meta))
    _, resumed = HeatmapStore.open_or_create(old.path, shape=SHAPE, attrs=make_attrs(), chunk=CHUNK)
    assert resumed
    with pytest.raises(OutputError, match="precision differs: float32, this run bfloat16"):
        HeatmapStore.open_or_create(old.path, shape=SHAPE, attrs=make_attrs(precision="bfloat16"), chunk=CHUNK)


@pytest.mark.parametrize("chunks", [[], [(0, 0)], [(1, 2), (4, 0), (4, 5)]], ids=["fresh", "one", "partial"])
def test_overview_of_a_partly_done_store_equals_zarrs_own_read(store, chunks):
    """read_overview reads only finished chunks when few are: the same array as reading it all."""
    import zarr

    fill(store, chunks)
    for kind in ("mean", "max"):
        expected = np.asarray(zarr.open_group(str(store.path), mode="r")[f"overview_{kind}"][...], dtype=np.float32)
        got = store.read_overview(kind)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got, expected, equal_nan=True)
        if not chunks:
            assert np.isnan(got).all()

"""viewer.train / viewer.evaluate and the train/evaluate CLI on tiny synthetic datasets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from conftest import REPO_ROOT
from viewer.dataset import find_dataset, split_images, split_patches
from viewer.evaluate import choose_images
from viewer.model import read_model_metadata
from viewer.train import TrainConfig, run_training


def run_cli(argv):
    """Run the real ``histoviewer`` entry point in-process; returns the exit code."""
    from viewer import cli

    return cli.main(argv)


NAMES = [f"synth_{i:02d}" for i in range(10)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fresh-window training run shared by the tests below (2 epochs on 10 images:
    6 train, 2 val, 2 test), with a split seed other than the sampling seed."""
    from conftest import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_images=10, points_per_image=8)
    out = tmp_path_factory.mktemp("model") / "tiny.keras"
    lines: list[str] = []
    # Epoch 2 mines hard negatives with the epoch-1 model; off-centre negatives from the start.
    config = TrainConfig(epochs=2, batch_size=16, seed=0, split_seed=3, patience=0, plateau=0,
                         mined_fraction=0.25, offcentre_fraction=0.25)
    metrics = run_training(root, out, config, heatmap=False, command="test", progress=lines.append)
    return root, out, metrics, lines


def test_training_writes_model_metrics_and_curves(trained):
    root, out, metrics, lines = trained
    metrics_path, curves_path = out.with_suffix(".metrics.json"), out.with_suffix(".curves.png")
    assert out.is_file() and metrics_path.is_file() and curves_path.is_file()
    assert curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(metrics_path.read_text())
    assert saved["model_file"] == "tiny.keras"
    assert {k: saved["split"][k] for k in ("train", "val", "test")} == split_images(NAMES, 3)
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "learning_rate"):
        assert all(key in h for h in saved["history"])
    assert saved["config"]["epochs"] == 2 and saved["config"]["seed"] == 0 and saved["config"]["split_seed"] == 3
    assert saved["config"]["mined_fraction"] == 0.25 and saved["config"]["offcentre_fraction"] == 0.25
    assert saved["validation"]["n_positive"] == 8 * len(saved["split"]["val"])
    assert "held_out" not in saved and "test" not in json.dumps(saved["validation"])  # the test part is not measured
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one progress line per epoch
    assert not list(out.parent.glob(".tiny*"))  # no temporary files left


def test_the_model_file_records_split_data_config_and_program(trained):
    root, out, metrics, _ = trained
    record = read_model_metadata(out)
    assert record["resolution"] == {"mpp": 0.25, "objective_power": 40}
    assert record["split"]["kind"] == "images" and record["split"]["seed"] == 3
    assert {k: record["split"][k] for k in ("train", "val", "test")} == split_images(NAMES, 3)
    files = record["data"]["fingerprint"]["images"]
    assert [f["name"] for f in files] == NAMES
    assert files[0]["image_bytes"] == (root / "images" / "synth_00.tif").stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", record["data"]["fingerprint"]["sha256"])
    assert record["config"] == metrics["config"] and record["command"] == "test"
    from viewer import __version__

    assert record["program"]["version"] == __version__
    if (REPO_ROOT / ".git").exists():  # run from a checkout: the commit it ran at
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert record["program"]["git_commit"] == head and isinstance(record["program"]["git_dirty"], bool)
    with zipfile.ZipFile(out) as archive:  # weights only: no optimizer state in the file
        assert "optimizer" not in archive.read("model.weights.h5").decode("latin-1")


def test_trained_model_loads_and_keeps_table_1(trained):
    from viewer.model import load_model

    model = load_model(trained[1])
    assert model.count_params() == 171_105


def test_training_refuses_existing_outputs_without_force(trained):
    from viewer.errors import OutputError

    root, out, _metrics, _lines = trained
    with pytest.raises(OutputError, match="--force"):
        run_training(root, out, TrainConfig(epochs=1), progress=None)


# ------------------------------------------------------------------------------- no leak


def test_evaluate_uses_only_the_split_recorded_in_the_model(trained):
    root, out, metrics, _ = trained
    entries, source = choose_images(root, out, "test")
    assert [e.name for e in entries] == split_images(NAMES, 3)["test"] and "recorded in the model file" in source
    assert [e.name for e in choose_images(root, out, "val")[0]] == split_images(NAMES, 3)["val"]
    entries, source = choose_images(root, out, "all")
    assert len(entries) == 10 and "training images included" in source


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_evaluating_on_training_images_is_refused(trained, capsys):
    """The leak is impossible: the model's own training images cannot be scored as held out."""
    root, out, _metrics, _ = trained
    train_images = split_images(NAMES, 3)["train"]
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--images", f"{split_images(NAMES, 3)['test'][0]},{train_images[0]}"])
    err = _one_line_error(capsys)
    assert code == 2 and train_images[0] in err and "training image" in err
    # Any other sampling seed still measures the recorded test images, never a recomputed split.
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--seed", "1", "--no-heatmap", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["images"] == split_images(NAMES, 3)["test"] and report["held_out"]
    assert not set(report["images"]) & set(train_images)


def test_evaluate_refuses_a_model_without_a_split_record(tmp_path, synthetic_dataset, capsys):
    from viewer.model import build_convnet

    root = synthetic_dataset(n_images=3, points_per_image=2)
    bare = tmp_path / "bare.keras"
    build_convnet().save(bare)
    for split in ("test", "val"):
        code = run_cli(["evaluate", "--data", str(root), "--model", str(bare), "--split", split])
        err = _one_line_error(capsys)
        assert code == 2 and "bare.keras" in err and "records no training split" in err
    code = run_cli(["evaluate", "--data", str(root), "--model", str(bare), "--split", "all", "--no-heatmap", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and not report["held_out"] and "not a held-out measurement" in report["split_source"]


def test_evaluate_refuses_when_an_image_of_the_split_is_missing(trained, tmp_path, capsys):
    root, out, _metrics, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    missing = split_images(NAMES, 3)["test"][0]
    (copy / "images" / f"{missing}.tif").unlink()
    code = run_cli(["evaluate", "--data", str(copy), "--model", str(out)])
    err = _one_line_error(capsys)
    assert code == 2 and missing in err and "copy" in err


def test_evaluate_cli_json_has_per_image_figures_and_bootstrap_intervals(trained, capsys):
    root, out, metrics, _ = trained
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--split", "val", "--json", "--resamples", "300"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    val = split_images(NAMES, 3)["val"]
    assert report["images"] == val and len(val) >= 2
    assert report["counts"]["patches"] == 2 * report["counts"]["tumour_points"]
    assert report["heatmap_windows"]["positive"] > 0 and report["heatmap_windows"]["negative"] > 0
    assert report["model_sha256"] == metrics["model_sha256"]
    assert set(report["per_image"]) == set(val) and set(report["heatmap_auc_per_image"]) == set(val)
    intervals = report["intervals"]
    assert intervals["unit"] == "image" and intervals["resamples"] == 300 and intervals["units"] == len(val)
    for key in ("accuracy", "heatmap_auc"):
        lo, hi = intervals[key]
        assert lo <= report[key] <= hi


def test_evaluate_cli_bad_model_exits_2(trained, tmp_path, capsys):
    root = trained[0]
    code = run_cli(["evaluate", "--data", str(root), "--model", str(tmp_path / "missing.keras")])
    err = _one_line_error(capsys)
    assert code == 2 and "missing.keras" in err


# ------------------------------------------------------------------------------- learning


def test_training_learns_a_separable_synthetic_set(synthetic_dataset, tmp_path):
    """Not just files: on dark nuclei against pink background the loss falls and held-out
    images are classified far above chance (the paper's plain recipe, 6 epochs)."""
    from viewer.dataset import load_labelled
    from viewer.evaluate import evaluate_images
    from viewer.model import load_model

    root = synthetic_dataset(n_images=8, points_per_image=12)
    out = tmp_path / "learnt.keras"
    metrics = run_training(root, out, TrainConfig(epochs=6, plain=True, patience=0, plateau=0), heatmap=False, progress=None)
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["history"][-1]["accuracy"] > 0.9
    test = [e for e in find_dataset(root) if e.name in read_model_metadata(out)["split"]["test"]]
    result = evaluate_images(load_model(out), [load_labelled(e) for e in test], heatmap=True, resamples=0)
    assert result["accuracy"] > 0.9 and result["heatmap_auc"] > 0.9


def test_a_missing_monitored_quantity_is_an_error_not_a_fallback(synthetic_dataset, tmp_path):
    """With one class only in the validation patches val_auc cannot be computed; training
    must stop with that said, not quietly watch the training loss instead."""
    from viewer.dataset import PatchSet
    from viewer.errors import InputError
    from viewer.train import train_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    train = PatchSet(x, np.r_[np.ones(16), np.zeros(16)].astype(np.uint8), np.zeros(32, np.int32),
                     np.zeros((32, 2), np.int32), ["a"])
    only_negatives = PatchSet(x[:8], np.zeros(8, np.uint8), np.zeros(8, np.int32), np.zeros((8, 2), np.int32), ["b"])
    from viewer.dataset import FixedSampler

    config = TrainConfig(epochs=2, patience=1, plateau=0, monitor="val_auc")
    with pytest.raises(InputError, match="--monitor val_auc could not be computed at epoch 1"):
        train_model(FixedSampler(train, augment=False), only_negatives, config)
    with pytest.raises(InputError, match="needs validation data"):
        train_model(FixedSampler(train, augment=False), PatchSet.empty(), config)


def test_early_stopping_and_the_lr_plateau_are_keras_callbacks():
    from viewer.dataset import PatchSet
    from viewer.model import import_keras
    from viewer.train import _callbacks

    keras = import_keras()
    config = TrainConfig(patience=4, plateau=2, monitor="val_auc", ema=True)
    callbacks, early, _ = _callbacks(keras, None, PatchSet.empty(), None, config, None, [])
    kinds = [type(c) for c in callbacks]
    assert kinds.index(keras.callbacks.SwapEMAWeights) < kinds.index(keras.callbacks.ReduceLROnPlateau)
    assert isinstance(early, keras.callbacks.EarlyStopping) and early.patience == 4 and early.restore_best_weights
    plateau = callbacks[kinds.index(keras.callbacks.ReduceLROnPlateau)]
    assert plateau.patience == 2 and plateau.factor == 0.5 and plateau.monitor == "val_auc" and plateau.mode == "max"
    none, early, _ = _callbacks(keras, None, PatchSet.empty(), None, TrainConfig(patience=0, plateau=0), None, [])
    assert early is None and not any(isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)) for c in none)


# ------------------------------------------------------------------------------- the paper's protocol


def test_patch_split_is_random_over_patches_and_disjoint():
    parts = split_patches(1000, seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [700, 150, 150]
    together = np.concatenate([parts[p] for p in ("train", "val", "test")])
    assert np.array_equal(np.sort(together), np.arange(1000))  # disjoint and complete
    # Random over patches: the test part is scattered over the whole pooled list (patches are
    # pooled image after image), not a block of it, and another seed draws another one.
    assert parts["test"].min() < 100 and parts["test"].max() > 900 and np.diff(parts["test"]).max() < 100
    assert not np.array_equal(parts["test"], split_patches(1000, seed=1)["test"])
    assert all(np.array_equal(parts[p], split_patches(1000, seed=0)[p]) for p in parts)


def test_train_split_patches_reproduces_the_paper_protocol_and_evaluates_its_test_patches(synthetic_dataset, tmp_path, capsys):
    root = synthetic_dataset(n_images=6, points_per_image=10)
    out = tmp_path / "paper.keras"
    code = run_cli(["train", "--data", str(root), "--out", str(out), "--split", "patches", "--epochs", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    record = read_model_metadata(out)
    config = record["config"]
    assert config["split"] == "patches" and config["plain"] and not config["augment"]
    assert config["batch_size"] == 16 and config["patience"] == 0 and config["plateau"] == 0
    parts = {p: {(name, x0, y0) for name, rows in record["split"][p].items() for x0, y0, _ in rows} for p in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 6 * 10 * 2  # every pooled patch, once
    assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"]) and not (parts["val"] & parts["test"])
    images_on_both_sides = {n for n, *_ in parts["train"]} & {n for n, *_ in parts["test"]}
    assert images_on_both_sides  # the honest caveat of a patch split, visible in the record
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["split_kind"] == "patches" and report["n_patches"] == len(parts["test"])
    assert report["heatmap_auc"] is None and report["intervals"]["unit"] == "patch"
    # Its images all gave training patches: naming one is refused like any training image.
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--images", "synth_00"])
    assert code == 2 and "training image" in _one_line_error(capsys)
    # --split all stays available, labelled: whole images, training patches included.
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--split", "all", "--no-heatmap", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and not report["held_out"] and report["counts"]["images"] == 6


def test_train_cli_on_prepared_npz(synthetic_dataset, tmp_path, capsys):
    root = synthetic_dataset(n_images=4, points_per_image=4)
    npz = tmp_path / "p.npz"
    assert run_cli(["prepare", "--data", str(root), "--out", str(npz), "--quiet"]) == 0
    out = tmp_path / "from_npz.keras"
    code = run_cli(["train", "--data", str(npz), "--out", str(out), "--epochs", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads(out.with_suffix(".metrics.json").read_text())
    assert saved["validation"]["n_positive"] == 4
    # Mining and off-centre negatives need whole images: a clear one-line refusal.
    code = run_cli(["train", "--data", str(npz), "--out", str(tmp_path / "m.keras"), "--epochs", "1", "--quiet",
                    "--mined-fraction", "0.3"])
    err = _one_line_error(capsys)
    assert code == 2 and "p.npz" in err and "--mined-fraction" in err


def test_balanced_sample_weights_give_both_classes_equal_total_weight():
    from viewer.train import balanced_sample_weights

    y = np.array([1, 0, 0, 0, 1, 0], dtype=np.float32)
    w = balanced_sample_weights(y)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum()) and (w[y == 1] == 1).all()
    assert (balanced_sample_weights(np.array([1, 0, 1, 0])) == 1).all()  # a 1:1 draw is unchanged
    assert (balanced_sample_weights(np.zeros(3)) == 1).all()  # one class only: nothing to balance


@pytest.mark.parametrize("flags", [
    ["--mined-fraction", "1.5"],
    ["--offcentre-fraction", "-0.1"],
    ["--hard-fraction", "0.5", "--mined-fraction", "0.4", "--offcentre-fraction", "0.2"],
    ["--negatives-per-positive", "0"],
    ["--plain", "--stain-jitter", "0.1"],
    ["--split", "patches", "--monitor", "val_heatmap_auc"],
])
def test_train_cli_refuses_impossible_options(synthetic_dataset, tmp_path, capsys, flags):
    root = synthetic_dataset(n_images=3, points_per_image=2)
    out = tmp_path / "m.keras"
    code = run_cli(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--quiet", *flags])
    err = _one_line_error(capsys)
    assert code == 2 and flags[-2] in err
    assert not list(tmp_path.glob("m*"))  # nothing written


def test_training_on_an_npz_records_its_split_seed(synthetic_dataset, tmp_path):
    root = synthetic_dataset(n_images=5, points_per_image=3)
    npz = tmp_path / "p.npz"
    assert run_cli(["prepare", "--data", str(root), "--out", str(npz), "--quiet", "--split-seed", "2"]) == 0
    out = tmp_path / "m.keras"
    run_training(npz, out, TrainConfig(epochs=1, plain=True, patience=0, plateau=0), progress=None)
    record = read_model_metadata(out)["split"]
    assert record["seed"] == 2 and record["test"] == split_images([f"synth_{i:02d}" for i in range(5)], 2)["test"]

"""viewer.train / viewer.evaluate and the train/evaluate CLI on tiny synthetic datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from viewer.dataset import split_images
from viewer.evaluate import choose_images, sidecar_metrics_path
from viewer.train import TrainConfig, run_training


def run_cli(argv, monkeypatch):
    """Run the real ``histoviewer`` entry point in-process; returns the exit code."""
    from viewer import cli

    return cli.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below (2 epochs on 6 synthetic images)."""
    from conftest import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_images=6, points_per_image=8)
    out = tmp_path_factory.mktemp("model") / "tiny.keras"
    lines: list[str] = []
    # Epoch 2 mines hard negatives with the epoch-1 model; off-centre negatives from the start.
    config = TrainConfig(epochs=2, batch_size=16, seed=0, patience=0, mined_fraction=0.25, offcentre_fraction=0.25)
    metrics = run_training(root, out, config, heatmap=False, command="test", progress=lines.append)
    return root, out, metrics, lines


def test_training_writes_model_metrics_and_curves(trained):
    root, out, metrics, lines = trained
    metrics_path, curves_path = out.with_suffix(".metrics.json"), out.with_suffix(".curves.png")
    assert out.is_file() and metrics_path.is_file() and curves_path.is_file()
    assert curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(metrics_path.read_text())
    assert saved["model_file"] == "tiny.keras"
    assert saved["split"] == split_images([f"synth_{i:02d}" for i in range(6)], 0)
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert all(key in h for h in saved["history"])
    assert saved["config"]["epochs"] == 2 and saved["config"]["seed"] == 0
    assert saved["config"]["mined_fraction"] == 0.25 and saved["config"]["offcentre_fraction"] == 0.25
    for part in ("val", "test"):
        held = saved["held_out"][part]
        assert set(held["images"]) == set(saved["split"][part])
        assert 0.0 <= held["accuracy"] <= 1.0 and held["n_positive"] == 8 * len(saved["split"][part])
    # One progress line per epoch.
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert not list(out.parent.glob(".tiny*"))  # no temporary files left


def test_trained_model_loads_and_keeps_table_1(trained):
    from viewer.model import load_model

    model = load_model(trained[1])
    assert model.count_params() == 171_105


def test_training_refuses_existing_outputs_without_force(trained):
    from viewer.errors import OutputError

    root, out, _metrics, _lines = trained
    with pytest.raises(OutputError, match="--force"):
        run_training(root, out, TrainConfig(epochs=1), progress=None)


def test_evaluate_uses_the_split_recorded_beside_the_model(trained, tmp_path):
    root, out, metrics, _ = trained
    assert sidecar_metrics_path(out) == out.with_suffix(".metrics.json")
    entries, source = choose_images(root, out, "test", seed=123)  # seed ignored: split is recorded
    assert [e.name for e in entries] == metrics["split"]["test"] and "recorded" in source
    alone = tmp_path / "alone.keras"
    alone.write_bytes(out.read_bytes())
    entries, source = choose_images(root, alone, "test", seed=5)
    assert [e.name for e in entries] == split_images([f"synth_{i:02d}" for i in range(6)], 5)["test"]
    assert "recomputed" in source
    entries, _ = choose_images(root, alone, "all", seed=5)
    assert len(entries) == 6


def test_evaluate_cli_json(trained, heatmap_engine, monkeypatch, capsys):
    root, out, metrics, _ = trained
    code = run_cli(["evaluate", "--data", str(root), "--model", str(out), "--json"], monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    for key in ("accuracy", "auc", "heatmap_auc", "confusion", "counts", "images", "model_sha256"):
        assert key in report
    assert report["images"] == metrics["split"]["test"]
    assert report["counts"]["patches"] == 2 * report["counts"]["tumour_points"]
    assert report["heatmap_windows"]["positive"] > 0 and report["heatmap_windows"]["negative"] > 0
    assert report["model_sha256"] == metrics["model_sha256"]


def test_evaluate_cli_bad_model_exits_2(trained, tmp_path, monkeypatch, capsys):
    root = trained[0]
    code = run_cli(["evaluate", "--data", str(root), "--model", str(tmp_path / "missing.keras")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.keras" in err


def test_train_cli_on_prepared_npz(synthetic_dataset, tmp_path, monkeypatch, capsys):
    root = synthetic_dataset(n_images=4, points_per_image=4)
    npz = tmp_path / "p.npz"
    assert run_cli(["prepare", "--data", str(root), "--out", str(npz), "--quiet"], monkeypatch) == 0
    out = tmp_path / "from_npz.keras"
    code = run_cli(["train", "--data", str(npz), "--out", str(out), "--epochs", "1", "--quiet"], monkeypatch)
    assert code == 0, capsys.readouterr().err
    saved = json.loads(out.with_suffix(".metrics.json").read_text())
    assert saved["held_out"]["val"]["n_positive"] == 4
    # Mining and off-centre negatives need whole images: a clear one-line refusal.
    code = run_cli(["train", "--data", str(npz), "--out", str(tmp_path / "m.keras"), "--epochs", "1", "--quiet",
                    "--mined-fraction", "0.3"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "p.npz" in err and "--mined-fraction" in err


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
])
def test_train_cli_refuses_impossible_negative_shares(synthetic_dataset, tmp_path, monkeypatch, capsys, flags):
    root = synthetic_dataset(n_images=3, points_per_image=2)
    out = tmp_path / "m.keras"
    code = run_cli(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--quiet", *flags], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flags[0] in err
    assert not list(tmp_path.glob("m*"))  # nothing written

"""The ML pipeline on the real BreCaHAD subset (../shared/data/brecahad-subset).

Skips when the data is absent; fails when it is absent under CI=true (see tests/conftest.py).
Nothing derived from the data is written outside pytest's tmp_path.
"""

from __future__ import annotations

import json

import pytest

from viewer.dataset import find_dataset, load_patches_npz, split_images

pytestmark = pytest.mark.data


def run_cli(argv, monkeypatch):
    """Run the real ``histoviewer`` entry point in-process; returns the exit code."""
    from viewer import cli

    return cli.main(argv)


def test_prepare_on_real_data(shared_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "patches.npz"
    assert run_cli(["prepare", "--data", str(shared_data_dir), "--out", str(out), "--quiet"], monkeypatch) == 0
    patches, split, seed = load_patches_npz(out)
    names = [e.name for e in find_dataset(shared_data_dir)]
    assert len(names) == 25 and split == split_images(names, 0)
    assert [len(split[p]) for p in ("train", "val", "test")] == [17, 4, 4]
    total_tumour = sum(int(patches[p].y.sum()) for p in split)
    assert total_tumour == 2819  # one patch per annotated tumour point of the subset
    for part in split:
        assert int((patches[part].y == 0).sum()) == int(patches[part].y.sum())


@pytest.mark.slow
def test_smoke_training_one_epoch_two_images(shared_data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "smoke.keras"
    argv = ["train", "--data", str(shared_data_dir), "--out", str(out), "--epochs", "1", "--max-images", "2", "--no-heatmap"]
    code = run_cli(argv, monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch   1/1" in captured.err
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    split = metrics["split"]
    assert sorted(split["train"] + split["val"]) == ["brecahad_10011", "brecahad_10012"] and split["test"] == []
    assert metrics["validation"]["n_positive"] > 0
    assert out.with_suffix(".curves.png").is_file()


@pytest.mark.slow
def test_evaluate_bundled_model_on_real_test_images(shared_data_dir, monkeypatch, capsys):
    from viewer.model import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.fail(f"bundled model missing at {bundled_model_path()}")
    code = run_cli(["evaluate", "--data", str(shared_data_dir), "--json"], monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    print(json.dumps({k: report[k] for k in ("accuracy", "auc", "heatmap_auc", "confusion", "images")}))
    from viewer.model import read_model_metadata

    recorded = read_model_metadata(bundled_model_path())
    assert report["images"] == recorded["split"]["test"] and "recorded in the model file" in report["split_source"]
    assert not set(report["images"]) & set(recorded["split"]["train"])
    lo, hi = report["intervals"]["heatmap_auc"]
    assert lo <= report["heatmap_auc"] <= hi and report["intervals"]["resamples"] == 2000
    assert set(report["heatmap_auc_per_image"]) == set(report["images"])
    # Sanity floors well below the measured values (see resources/MODEL_CARD.md), not the goal.
    assert report["accuracy"] > 0.85 and report["auc"] > 0.93 and report["heatmap_auc"] > 0.93
    assert report["counts"]["images"] == 4

"""``histoviewer heatmap`` and ``histoviewer export`` through viewer.cli.main: files, sidecar,
exit codes, refusal to overwrite, option validation. Random-weight models saved to tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from viewer import __version__
from viewer.annotations import load_annotations
from viewer.cli import main
from viewer.heatmap import compute_heatmap, heatmap_shape
from viewer.model import build_convnet, file_sha256, load_model
from viewer.overlay import OverlayStyle, compose

H, W = 100, 120


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A BreCaHAD-layout folder with one textured image + ground truth, and a saved model."""
    root = tmp_path_factory.mktemp("cli")
    (root / "images").mkdir()
    (root / "groundTruth").mkdir()
    rng = np.random.default_rng(4)
    img = np.clip(np.kron(rng.integers(0, 256, (20, 24, 3)), np.ones((5, 5, 1))) + rng.normal(0, 10, (H, W, 3)), 0, 255).astype(np.uint8)
    tifffile.imwrite(root / "images" / "slide_01.tif", img, photometric="rgb")
    truth = {"tumor": [{"x": 0.5, "y": 0.4}, {"x": 0.2, "y": 0.7}], "non_tumor": [{"x": 0.8, "y": 0.2}]}
    (root / "groundTruth" / "slide_01.json").write_text(json.dumps(truth))
    model = build_convnet(seed=5)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 100, bias])
    model.save(root / "model.keras")
    return root


@pytest.fixture
def paths(workspace, tmp_path):
    return workspace / "images" / "slide_01.tif", workspace / "model.keras", tmp_path


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def test_heatmap_writes_array_and_sidecar(paths, capsys):
    image, model, out = paths
    assert main(["heatmap", str(image), "--out", str(out / "h.npy"), "--model", str(model), "--stride", "4"]) == 0
    heat = np.load(out / "h.npy")
    assert heat.dtype == np.float32 and heat.shape == heatmap_shape(H, W, 4)
    pixels = tifffile.imread(image)
    np.testing.assert_allclose(heat, compute_heatmap(pixels, load_model(model), 4), atol=1e-6)
    meta = json.loads((out / "h.json").read_text())
    assert meta["geometry"]["patch_size"] == 32 and meta["geometry"]["stride"] == 4
    assert meta["geometry"]["window_centre_offset"] == 16
    assert meta["image"]["width"] == W and meta["image"]["height"] == H and meta["image"]["file"] == "slide_01.tif"
    assert meta["shape"] == list(heat.shape) and meta["complete"] is True
    assert meta["model"]["sha256"] == file_sha256(model)
    assert meta["program_version"] == __version__
    assert meta["method"] == "fully-convolutional"
    captured = capsys.readouterr()
    assert "h.npy" in captured.out


def test_heatmap_refuses_to_overwrite_then_forces(paths, capsys):
    image, model, out = paths
    args = ["heatmap", str(image), "--out", str(out / "h.npy"), "--model", str(model), "--quiet"]
    assert main(args) == 0
    before = (out / "h.npy").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    one_line_error(capsys, "h.npy", "already exists", "--force")
    assert (out / "h.npy").read_bytes() == before
    assert main([*args, "--force", "--stride", "16"]) == 0
    assert np.load(out / "h.npy").shape == heatmap_shape(H, W, 16)
    assert json.loads((out / "h.json").read_text())["geometry"]["stride"] == 16


def test_heatmap_tiff_format_and_progress(paths, capsys):
    image, model, out = paths
    assert main(["heatmap", str(image), "--out", str(out / "h.tif"), "--model", str(model), "--stride", "4"]) == 0
    heat = tifffile.imread(out / "h.tif")
    assert heat.dtype == np.float32 and heat.shape == heatmap_shape(H, W, 4)
    assert (out / "h.json").is_file()
    captured = capsys.readouterr()
    assert "tiles" not in captured.err  # one tile only: no progress noise
    assert main(["heatmap", str(image), "--out", str(out / "x.npy"), "--format", "tiff", "--model", str(model)]) == 2
    one_line_error(capsys, "x.npy", "tiff")


def test_heatmap_checks_the_output_before_computing(paths, capsys):
    image, _, out = paths
    # The model does not exist: if the command computed first, the error would name the model.
    assert main(["heatmap", str(image), "--out", str(out / "no" / "h.npy"), "--model", str(out / "missing.keras")]) == 2
    one_line_error(capsys, "h.npy", "does not exist")
    (out / "h.json").write_text("{}")
    assert main(["heatmap", str(image), "--out", str(out / "h.npy"), "--model", str(out / "missing.keras")]) == 2
    one_line_error(capsys, "h.json", "already exists")
    assert not (out / "h.npy").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--stride", "0"], "--stride"),
        (["--model", "/nonexistent/model.keras"], "model.keras"),
    ],
)
def test_heatmap_bad_options_exit_2(paths, capsys, extra, needle):
    image, model, out = paths
    args = ["heatmap", str(image), "--out", str(out / "h.npy"), "--model", str(model), *extra]
    assert main(args) == 2
    one_line_error(capsys, needle)
    assert not (out / "h.npy").exists()


def test_heatmap_missing_image_exit_2(paths, capsys):
    _, model, out = paths
    assert main(["heatmap", str(out / "nope.tif"), "--out", str(out / "h.npy"), "--model", str(model)]) == 2
    one_line_error(capsys, "nope.tif")


def test_export_matches_compose_exactly(paths, capsys):
    image, model, out = paths
    args = ["export", str(image), "--out", str(out / "o.png"), "--model", str(model), "--opacity", "0.6", "--colormap", "viridis", "--threshold", "0.2"]
    assert main(args) == 0
    got = np.asarray(Image.open(out / "o.png"))
    pixels = tifffile.imread(image)
    ann = load_annotations(image.parent.parent / "groundTruth" / "slide_01.json")
    heat = compute_heatmap(pixels, load_model(model), 8)
    expected = compose(pixels, heat, ann, OverlayStyle(opacity=0.6, colormap="viridis", threshold=0.2))
    np.testing.assert_array_equal(got, expected)
    assert "o.png" in capsys.readouterr().out


def test_export_legend_tiff_and_layer_switches(paths, capsys):
    image, model, out = paths
    assert main(["export", str(image), "--out", str(out / "o.png"), "--model", str(model), "--legend", "--quiet"]) == 0
    fig = np.asarray(Image.open(out / "o.png"))
    assert fig.shape[1] > W and fig.shape[0] >= H and fig.dtype == np.uint8  # the legend widens it
    # A .tif is a tiled pyramid of the image area only (no legend), here exact with deflate.
    assert main(["export", str(image), "--out", str(out / "o.tif"), "--model", str(model), "--legend",
                 "--compression", "deflate"]) == 0
    assert "legend is not added" in capsys.readouterr().err
    with tifffile.TiffFile(out / "o.tif") as tif:
        assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), fig[:H, :W])
    # No heatmap: the model is never loaded (a missing model is fine); no annotations: plain image.
    assert main(["export", str(image), "--out", str(out / "plain.png"), "--no-heatmap", "--no-annotations", "--model", str(out / "missing.keras")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "plain.png")), tifffile.imread(image))


def test_export_computes_into_a_temporary_store_or_reads_one(paths, capsys, monkeypatch):
    """Large heatmaps are computed into a temporary .zarr store (removed afterwards); the
    pixels equal an export from the in-memory array and one from a store written by `heatmap`."""
    import viewer.commands.export as export_command

    image, model, out = paths
    base = ["export", str(image), "--model", str(model), "--threshold", "0.1"]
    assert main([*base, "--quiet", "--out", str(out / "array.png")]) == 0
    monkeypatch.setattr(export_command, "ARRAY_CELLS", 0)
    assert main([*base, "--out", str(out / "store.png")]) == 0
    assert "then --heatmap H.zarr" in capsys.readouterr().err  # how to avoid recomputing next time
    assert sorted(p.name for p in out.iterdir()) == ["array.png", "store.png"]  # temporary store removed
    assert main(["heatmap", str(image), "--out", str(out / "h.zarr"), "--model", str(model), "--quiet"]) == 0
    assert main(["export", str(image), "--heatmap", str(out / "h.zarr"), "--quiet", "--threshold", "0.1",
                 "--out", str(out / "given.png")]) == 0
    array = np.asarray(Image.open(out / "array.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "store.png")), array)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "given.png")), array)


def test_export_explicit_annotations(paths, capsys, tmp_path):
    image, model, out = paths
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mitosis": [{"x": 0.5, "y": 0.5}]}))
    assert main(["export", str(image), "--out", str(out / "a.png"), "--no-heatmap", "--annotations", str(other)]) == 0
    expected = compose(tifffile.imread(image), None, load_annotations(other), OverlayStyle())
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), expected)
    assert main(["export", str(image), "--out", str(out / "b.png"), "--no-heatmap", "--annotations", str(tmp_path / "missing.json")]) == 2
    one_line_error(capsys, "missing.json")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--opacity", "1.5"], "--opacity"),
        (["--opacity", "nan"], "--opacity"),
        (["--threshold", "-0.1"], "--threshold"),
        (["--colormap", "rainbowz"], "rainbowz"),
        (["--stride", "0"], "--stride"),
        (["--marker-radius", "0"], "--marker-radius"),
    ],
)
def test_export_bad_options_exit_2(paths, capsys, extra, needle):
    image, model, out = paths
    assert main(["export", str(image), "--out", str(out / "o.png"), "--model", str(model), *extra]) == 2
    one_line_error(capsys, needle)
    assert not (out / "o.png").exists()


def test_export_refuses_overwrite_and_bad_suffix(paths, capsys):
    image, model, out = paths
    (out / "o.png").write_bytes(b"keep me")
    assert main(["export", str(image), "--out", str(out / "o.png"), "--no-heatmap"]) == 2
    one_line_error(capsys, "o.png", "already exists")
    assert (out / "o.png").read_bytes() == b"keep me"
    assert main(["export", str(image), "--out", str(out / "o.png"), "--no-heatmap", "--force"]) == 0
    assert main(["export", str(image), "--out", str(out / "o.bmp"), "--no-heatmap"]) == 2
    one_line_error(capsys, "o.bmp", "unsupported")


def test_heatmap_progress_on_stderr_unless_quiet(paths, capsys):
    _, model, out = paths
    big = out / "big.tif"
    tifffile.imwrite(big, np.random.default_rng(0).integers(0, 256, (600, 620, 3), dtype=np.uint8), photometric="rgb")
    assert main(["heatmap", str(big), "--out", str(out / "b.npy"), "--model", str(model)]) == 0
    err = capsys.readouterr().err
    assert "heatmap: started" in err and "heatmap: done in" in err and "Mpx/s" in err
    assert main(["heatmap", str(big), "--out", str(out / "b.npy"), "--model", str(model), "--force", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_export_notes_missing_annotations_only_after_success(paths, capsys):
    _, model, out = paths
    lone = out / "lone.tif"
    tifffile.imwrite(lone, np.full((40, 50, 3), 128, np.uint8), photometric="rgb")
    (out / "corrupt.keras").write_bytes(b"not a zip")
    assert main(["export", str(lone), "--out", str(out / "l.png"), "--model", str(out / "corrupt.keras")]) == 2
    one_line_error(capsys, "corrupt.keras")  # the error alone, no 'no annotations' note before it
    assert main(["export", str(lone), "--out", str(out / "l.png"), "--model", str(model)]) == 0
    assert "no annotations found for lone.tif" in capsys.readouterr().err


def test_export_classes_option_draws_only_those_classes(paths, capsys):
    image, model, out = paths
    assert main(["export", str(image), "--out", str(out / "t.png"), "--no-heatmap", "--classes", "tumor"]) == 0
    ann = load_annotations(image.parent.parent / "groundTruth" / "slide_01.json")
    pixels = tifffile.imread(image)
    expected = compose(pixels, None, ann, OverlayStyle(visible_classes=("tumor",)))
    got = np.asarray(Image.open(out / "t.png"))
    np.testing.assert_array_equal(got, expected)
    # the non-tumour marker is really left out
    assert not np.array_equal(got, compose(pixels, None, ann, OverlayStyle()))
    assert main(["export", str(image), "--out", str(out / "e.png"), "--no-heatmap", "--classes", " , "]) == 2
    one_line_error(capsys, "--classes")

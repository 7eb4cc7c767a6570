"""Fine-tuning (``train --init``) and ignore regions in training and evaluation, on tiny synthetic data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import write_synthetic_dataset
from viewer.annotations import Region, load_annotations, save_annotations
from viewer.dataset import ImageSampler, SamplerConfig, evaluation_patches, find_dataset, load_labelled
from viewer.errors import InputError
from viewer.finetune import FINETUNE_EPOCHS, FINETUNE_LEARNING_RATE, finetune_split
from viewer.model import file_sha256, read_model_metadata
from viewer.train import TrainConfig, run_training

W, H = 160, 128


def run_cli(argv):
    from viewer import cli

    return cli.main(argv)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base model trained 2 epochs on 10 synthetic images (6 train, 2 val, 2 test)."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_images=10, points_per_image=8)
    out = tmp_path_factory.mktemp("model") / "base.keras"
    run_training(root, out, TrainConfig(epochs=2, patience=0, plateau=0, plain=True), heatmap=False, command="test",
                 progress=None)
    return root, out


def _draw_green_nuclei(root, name, points):
    """Draw dark green-blue disks (a look the base model never saw as tumour) into an image."""
    import tifffile

    path = root / "images" / f"{name}.tif"
    img = tifffile.imread(path).astype(np.float64)
    yy, xx = np.mgrid[0:H, 0:W]
    for x, y in points:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 49] = (40, 90, 110)
    tifffile.imwrite(path, img.astype(np.uint8), photometric="rgb")


def test_finetune_changes_weights_keeps_architecture_and_moves_corrected_points(base, tmp_path):
    from viewer.agreement import sample_at_points
    from viewer.heatmap import compute_heatmap
    from viewer.model import load_model

    root, base_path = base
    edited = tmp_path / "edited"
    shutil.copytree(root, edited)
    name = read_model_metadata(base_path)["split"]["train"][0]
    # The user's corrections: nuclei nobody annotated, now marked as tumour.
    entry = next(e for e in find_dataset(edited) if e.name == name)
    ann = load_annotations(entry.annotation_path)
    tumour = ann.pixel_points("tumor", W, H)
    added = []
    rng = np.random.default_rng(5)
    while len(added) < 6:
        p = rng.uniform(20, [W - 20, H - 20])
        if np.min(np.hypot(*(tumour - p).T)) > 24 and all(np.hypot(*(np.array(added) - p).T).min() > 18
                                                           for _ in [0] if added):
            added.append(p)
    added = np.array(added)
    _draw_green_nuclei(edited, name, added)
    control = tmp_path / "control"  # the same pixels, the corrections not annotated
    shutil.copytree(edited, control)
    save_annotations(ann.with_points({"tumor": np.concatenate([ann.points["tumor"], added / [W, H]])}),
                     entry.annotation_path)

    out = tmp_path / "tuned.keras"
    # A higher rate than the default so a few epochs on one tiny image show the direction clearly.
    for data, target in ((edited, out), (control, tmp_path / "control.keras")):
        assert run_cli(["train", "--init", str(base_path), "--data", str(data), "--out", str(target), "--images",
                        name, "--epochs", "4", "--learning-rate", "1e-3", "--no-heatmap", "--quiet"]) == 0
    before, after = load_model(base_path), load_model(out)
    assert [w.shape for w in before.get_weights()] == [w.shape for w in after.get_weights()]
    assert [type(layer).__name__ for layer in before.layers] == [type(layer).__name__ for layer in after.layers]
    assert after.count_params() == 171_105
    assert any(not np.array_equal(a, b) for a, b in zip(before.get_weights(), after.get_weights()))
    pixels = load_labelled(entry).pixels
    p_before = sample_at_points(compute_heatmap(pixels, before), added)
    p_after = sample_at_points(compute_heatmap(pixels, after), added)
    p_control = sample_at_points(compute_heatmap(pixels, load_model(tmp_path / "control.keras")), added)
    # Up from the base model, and because of the corrections: more than the same training without them.
    assert np.nanmean(p_after) > np.nanmean(p_before) + 0.02, (p_before, p_after)
    assert np.nanmean(p_after) > np.nanmean(p_control) + 0.02, (p_control, p_after)

    record = read_model_metadata(out)
    base_record = read_model_metadata(base_path)
    assert record["finetuned_from"]["sha256"] == file_sha256(base_path)
    assert record["finetuned_from"]["file"] == "base.keras"
    assert record["split"]["val"] == base_record["split"]["val"]
    assert record["split"]["test"] == base_record["split"]["test"]
    assert record["split"]["train"] == base_record["split"]["train"]  # the image trained here was already one
    assert record["split"]["trained_here"] == [name]
    assert record["config"]["epochs"] == 4 and record["config"]["learning_rate"] == 1e-3
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["finetuned_from"]["sha256"] == file_sha256(base_path)
    assert "Fine-tuned from base.keras" in metrics["description"]
    assert file_sha256(base_path) in metrics["model_card"] and f"on 1 image(s): {name}" in metrics["model_card"]


def test_finetune_defaults_are_lower_rate_and_fewer_epochs(base, tmp_path):
    root, base_path = base
    out = tmp_path / "default.keras"
    assert run_cli(["train", "--init", str(base_path), "--data", str(root), "--out", str(out), "--epochs", "1",
                    "--no-heatmap", "--quiet"]) == 0
    config = read_model_metadata(out)["config"]
    assert config["learning_rate"] == FINETUNE_LEARNING_RATE < 1e-3
    assert config["patience"] == 0 and config["plateau"] == 0
    assert FINETUNE_EPOCHS < 30
    from viewer.commands.train import register  # the --epochs default is resolved per mode
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["train", "--data", "d", "--out", "o.keras"]).epochs is None
    # By default every image but the base model's held-out ones is trained on.
    split = read_model_metadata(out)["split"]
    assert set(split["trained_here"]) == set(split["train"]) and not set(split["train"]) & set(split["val"] + split["test"])


def test_finetune_split_inherits_and_refuses_leaks():
    record = {"split": {"kind": "images", "seed": 0, "train": ["a", "b"], "val": ["v"], "test": ["t"]}}
    split, chosen, notes = finetune_split(record, ["a", "b", "v", "t", "new"])
    assert chosen == ["a", "b", "new"] and split["val"] == ["v"] and split["test"] == ["t"]
    assert split["train"] == ["a", "b", "new"] and notes  # says that v and t stay held out
    split, chosen, _ = finetune_split(record, ["a", "new"], ["new"])
    assert chosen == ["new"] and split["train"] == ["a", "b", "new"]  # the base's training images stay refused too
    with pytest.raises(InputError, match="t is a test image of the base model.*--allow-held-out"):
        finetune_split(record, ["a", "t"], ["t"])
    split, chosen, notes = finetune_split(record, ["a", "t"], ["t"], allow_held_out=True)
    assert chosen == ["t"] and split["test"] == [] and "t" in split["train"] and "--allow-held-out" in notes[0]
    with pytest.raises(InputError, match="no image to fine-tune on"):
        finetune_split(record, ["v", "t"])
    with pytest.raises(InputError, match="not an annotated image"):
        finetune_split(record, ["a"], ["zz"])
    with pytest.raises(InputError, match="patch split"):
        finetune_split({"split": {"kind": "patches", "train": {}, "val": {}, "test": {}}}, ["a"])
    split, chosen, notes = finetune_split({}, ["a", "b"])
    assert chosen == ["a", "b"] and split["test"] == [] and "records no split" in notes[0]


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a valid .keras file"),
    (None, "model file not found"),
])
def test_bad_init_model_is_one_line_and_exit_2(base, tmp_path, capsys, content, message):
    root, _ = base
    bad = tmp_path / "bad.keras"
    if content is not None:
        bad.write_bytes(content)
    code = run_cli(["train", "--init", str(bad), "--data", str(root), "--out", str(tmp_path / "o.keras")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and "bad.keras" in err
    assert not (tmp_path / "o.keras").exists()


def test_init_model_of_another_architecture_is_refused(base, tmp_path, capsys):
    from viewer.model import import_keras

    keras = import_keras()
    root, _ = base
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    path = tmp_path / "other.keras"
    other.save(path)
    code = run_cli(["train", "--init", str(path), "--data", str(root), "--out", str(tmp_path / "o.keras")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not the Table-1 ConvNet" in err and len(err.splitlines()) == 1


def test_finetune_refuses_to_overwrite_its_own_init_and_options_without_init(base, tmp_path, capsys):
    root, base_path = base
    assert run_cli(["train", "--init", str(base_path), "--data", str(root), "--out", str(base_path), "--force"]) == 2
    assert "is the --init model itself" in capsys.readouterr().err
    assert run_cli(["train", "--data", str(root), "--out", str(tmp_path / "o.keras"), "--images", "x"]) == 2
    assert "need --init" in capsys.readouterr().err
    assert run_cli(["train", "--data", str(root), "--out", str(tmp_path / "o.keras"), "--recipe", "fresh"]) == 2
    assert "need --init" in capsys.readouterr().err


# --------------------------------------------------------------------------- ignore regions

def _with_ignore_square(root, name, x0, y0, side):
    """Save the image's annotations with one ignore square, as the viewer does (sidecar)."""
    entry = next(e for e in find_dataset(root) if e.name == name)
    ann = load_annotations(entry.annotation_path)
    square = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]
    save_annotations(ann.with_regions([Region.polygon("ignore", square)]), entry.annotation_path)
    return entry


def _inside(xy, x0, y0, side):
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return (xy[:, 0] > x0) & (xy[:, 0] < x0 + side) & (xy[:, 1] > y0) & (xy[:, 1] < y0 + side)


def test_ignore_regions_are_excluded_from_training_windows(synthetic_dataset):
    root = synthetic_dataset(n_images=1, points_per_image=10, width=200, height=160)
    plain = load_labelled(find_dataset(root)[0])
    side = 90.0
    x0, y0 = plain.tumour_points[0] - side / 2  # a square around a tumour point
    entry = _with_ignore_square(root, "synth_00", x0, y0, side)
    image = load_labelled(entry)
    assert len(image.ignore_regions) == 1
    dropped = _inside(plain.tumour_points, x0, y0, side)
    assert dropped.any() and len(image.tumour_points) == len(plain.tumour_points) - dropped.sum()
    # Non-tumour windows: none centred inside; every clear window outside is still a candidate.
    cols = image.width - 31
    centres = lambda flat: np.stack([flat % cols + 16, flat // cols + 16], axis=1)  # noqa: E731
    assert not _inside(centres(image.clear_top_lefts), x0, y0, side).any()
    outside = ~_inside(centres(plain.clear_top_lefts), x0, y0, side)
    assert np.array_equal(np.sort(image.clear_top_lefts), np.sort(plain.clear_top_lefts[outside]))
    # Every kind of sampled window, over several epochs: no centre inside (jitter 0 so tumour
    # windows sit on their points; off-centre and hard negatives too).
    sampler = ImageSampler([image], SamplerConfig(jitter=0.0, hard_fraction=0.3, offcentre_fraction=0.3,
                                                  augment=False))
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(5):
        x, y = sampler.epoch(rng)
        seen += len(y)
        assert int(y.sum()) == len(image.tumour_points)
    # The windows themselves: recompute their positions through the sampler's building blocks.
    from viewer.dataset import negative_top_lefts, offcentre_top_lefts

    for tl in (negative_top_lefts(image, 500, rng), offcentre_top_lefts(image, 200, rng)):
        assert len(tl) and not _inside(tl + 16, x0, y0, side).any()
    assert seen > 0


def test_ignore_regions_are_excluded_from_evaluation_counts(base, tmp_path):
    from viewer.evaluate import evaluate_images
    from viewer.model import load_model

    root, base_path = base
    data = tmp_path / "data"
    shutil.copytree(root, data)
    name = "synth_00"
    model = load_model(base_path)
    plain = load_labelled(next(e for e in find_dataset(data) if e.name == name))
    before = evaluate_images(model, [plain], resamples=0)
    side = 80.0
    x0, y0 = np.clip(plain.tumour_points[0] - side / 2, 0, None)
    image = load_labelled(_with_ignore_square(data, name, x0, y0, side))
    after = evaluate_images(model, [image], resamples=0)
    dropped = int(_inside(plain.tumour_points, x0, y0, side).sum())
    assert dropped > 0
    assert after["n_positive"] == before["n_positive"] - dropped  # no patch for an ignored tumour point
    patches = evaluation_patches(image)
    assert not _inside(patches.top_left + 16, x0, y0, side).any()
    # Heatmap windows: exactly those centred inside leave the counts, from both classes.
    from viewer.dataset.ignore import ignored_window_mask
    from viewer.heatmap import compute_heatmap
    from viewer.metrics import heatmap_window_labels

    hm = compute_heatmap(plain.pixels, model)
    labels = heatmap_window_labels(plain.tumour_points, plain.all_points, hm.shape)
    inside = ignored_window_mask(image.ignore_regions, hm.shape, 8)
    assert inside.sum() > 0
    b, a = before["heatmap_windows"], after["heatmap_windows"]
    assert a["negative"] == b["negative"] - int(((labels == 0) & inside).sum())
    assert a["positive"] <= b["positive"] - int(((labels == 1) & inside).sum())
    assert a["negative"] < b["negative"] and a["in_ignore_regions"] == int(inside.sum())


def test_agreement_leaves_ignore_regions_out_of_the_auc_windows():
    from viewer.agreement import agreement
    from viewer.annotations import Annotations

    rng = np.random.default_rng(1)
    heat = rng.random(((H - 32) // 8 + 1, (W - 32) // 8 + 1))
    ann = Annotations.from_pixels({"tumor": [[50, 50], [120, 90]]}, W, H)
    plain = agreement(heat, ann, W, H)
    square = Region.polygon("ignore", [[0, 0], [80, 0], [80, 80], [0, 80]])
    ignored = agreement(heat, ann.with_regions([square]), W, H)
    assert ignored.negative_windows < plain.negative_windows
    assert ignored.positive_windows < plain.positive_windows  # the point at (50, 50) is inside
    assert ignored.by_class()["tumor"].points == 2  # the points themselves stay the user's


def test_another_copy_of_an_image_is_noted_not_refused(base, tmp_path):
    from viewer.finetune import image_size_notes

    root, base_path = base
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    record = read_model_metadata(base_path)
    assert image_size_notes(record, find_dataset(copy)) == []
    (copy / "groundTruth" / "synth_01.json").write_text('{"tumor": []}')  # edited annotations: expected
    assert image_size_notes(record, find_dataset(copy)) == []
    import tifffile

    tifffile.imwrite(copy / "images" / "synth_02.tif", tifffile.imread(copy / "images" / "synth_02.tif"),
                     photometric="rgb", compression="zlib")
    notes = image_size_notes(record, find_dataset(copy))
    assert len(notes) == 1 and "synth_02" in notes[0]


def test_the_viewers_teaching_folder_holds_the_edits_and_optionally_the_original_data(synthetic_dataset, tmp_path):
    from viewer.finetune import original_dataset_for, teach_arguments, teaching_folder, teaching_images

    root = synthetic_dataset(n_images=3)
    image = root / "images" / "synth_01.tif"
    assert original_dataset_for(image) == root
    assert original_dataset_for(tmp_path / "elsewhere.tif") is None
    truth = root / "groundTruth" / "synth_01.json"
    saved = truth.read_bytes()
    ann = load_annotations(truth)
    edited = ann.with_points({"tumor": np.concatenate([ann.points["tumor"], [[0.5, 0.5]]])}).with_regions(
        [Region.polygon("ignore", [[0, 0], [40, 0], [40, 40]])])
    folder, stem, originals = teaching_folder(tmp_path / "alone", image, edited)
    assert stem == "synth_01" and originals == [] and [e.name for e in find_dataset(folder)] == ["synth_01"]
    taught = load_labelled(find_dataset(folder)[0])
    assert len(taught.tumour_points) == len(ann.points["tumor"]) + 1 and len(taught.ignore_regions) == 1
    assert truth.read_bytes() == saved  # the user's file is untouched
    folder, stem, originals = teaching_folder(tmp_path / "with", image, edited, original=root)
    assert originals == ["synth_00", "synth_02"] and len(find_dataset(folder)) == 3
    record = {"split": {"kind": "images", "train": ["synth_00"], "val": ["synth_02"], "test": ["synth_01"]}}
    images, why = teaching_images(record, stem, originals)
    assert images == ["synth_01", "synth_00"] and "synth_01 is a test image" in why
    args = teach_arguments("base.keras", folder, "out.keras", images, epochs=3, allow_held_out=True)
    from viewer.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.init == "base.keras" and parsed.images == "synth_01,synth_00" and parsed.allow_held_out
    assert parsed.epochs == 3

"""viewer.dataset and 'histoviewer prepare' on tiny synthetic BreCaHAD-layout folders."""

from __future__ import annotations

import numpy as np
import pytest

from viewer import PATCH_SIZE
from viewer.dataset import (
    ImageSampler,
    SamplerConfig,
    colour_jitter,
    stain_jitter,
    dihedral,
    evaluation_patches,
    find_dataset,
    load_labelled,
    load_patches_npz,
    negative_top_lefts,
    offcentre_top_lefts,
    split_images,
    tumour_top_lefts,
)
from viewer.errors import InputError


def run_cli(argv, monkeypatch):
    """Run the real ``histoviewer`` entry point in-process; returns the exit code."""
    from viewer import cli

    return cli.main(argv)


# ----------------------------------------------------------------------------- discovery


def test_find_dataset_lists_sorted_annotated_images(synthetic_dataset):
    root = synthetic_dataset(n_images=3)
    (root / "images" / "zz_unannotated.tif").write_bytes(b"x")  # no JSON: ignored
    entries = find_dataset(root)
    assert [e.name for e in entries] == ["synth_00", "synth_01", "synth_02"]


@pytest.mark.parametrize("layout", ["missing", "file", "no_images", "no_truth", "empty"])
def test_find_dataset_bad_folders_raise_one_line(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout != "missing":
        root.mkdir()
        if layout in ("no_truth", "empty"):
            (root / "images").mkdir()
        if layout in ("no_images", "empty"):
            (root / "groundTruth").mkdir()
    with pytest.raises(InputError) as info:
        find_dataset(root)
    message = str(info.value)
    assert "\n" not in message and str(root) in message


def test_prepare_cli_bad_dir_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    code = run_cli(["prepare", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "p.npz")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope" in err and "not found" in err


# ----------------------------------------------------------------------------- split


def test_split_is_by_image_deterministic_and_70_15_15():
    names = [f"img_{i:02d}" for i in range(25)]
    split = split_images(names, seed=0)
    assert [len(split[p]) for p in ("train", "val", "test")] == [17, 4, 4]
    assert sorted(split["train"] + split["val"] + split["test"]) == names
    assert split == split_images(list(reversed(names)), seed=0)  # order of input irrelevant
    assert split != split_images(names, seed=1)


@pytest.mark.parametrize("n, sizes", [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (6, (4, 1, 1)), (10, (6, 2, 2))])
def test_split_sizes_small(n, sizes):
    split = split_images([f"i{k}" for k in range(n)], seed=3)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == sizes


# ----------------------------------------------------------------------------- windows


def test_tumour_windows_are_centred_and_clamped_inside():
    pts = np.array([[50.2, 60.7], [3.0, 5.0], [158.0, 127.0]])
    tl = tumour_top_lefts(pts, 160, 128)
    assert tl[0].tolist() == [50 - 16, 61 - 16]  # centre pixel (x0 + 16, y0 + 16) = rounded point
    assert tl[1].tolist() == [0, 0]
    assert tl[2].tolist() == [160 - PATCH_SIZE, 128 - PATCH_SIZE]
    for (x, y), (x0, y0) in zip(pts, tl):  # the point always stays inside its window
        assert x0 <= x <= x0 + PATCH_SIZE and y0 <= y <= y0 + PATCH_SIZE


def test_negative_windows_have_no_point_of_any_class_within_4px(synthetic_dataset):
    root = synthetic_dataset(n_images=1, points_per_image=5, other_class_points=3)
    image = load_labelled(find_dataset(root)[0])
    assert len(image.all_points) == 8
    tl = negative_top_lefts(image, 200, np.random.default_rng(0))
    assert len(tl) > 0 and len(np.unique(tl, axis=0)) == len(tl)
    for x0, y0 in tl:
        assert 0 <= x0 <= image.width - PATCH_SIZE and 0 <= y0 <= image.height - PATCH_SIZE
        for x, y in image.all_points:
            assert not (x0 - 4 <= x <= x0 + 36 and y0 - 4 <= y <= y0 + 36)


def test_evaluation_patches_one_per_point_and_as_many_negatives_seeded(synthetic_dataset):
    root = synthetic_dataset(n_images=1, points_per_image=4)
    image = load_labelled(find_dataset(root)[0])
    a = evaluation_patches(image, seed=0)
    b = evaluation_patches(image, seed=0)
    c = evaluation_patches(image, seed=1)
    assert int(a.y.sum()) == 4 and int((a.y == 0).sum()) == 4
    assert a.x.shape == (8, PATCH_SIZE, PATCH_SIZE, 3) and a.x.dtype == np.uint8
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.top_left, c.top_left)
    # The tumour patches show the dark nuclei at their centre.
    assert a.x[a.y == 1][:, 14:18, 14:18].mean() < a.x[a.y == 0].mean() - 40


def test_augmentations_keep_shape_range_and_pixels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    d = dihedral(x, rng)
    assert d.shape == x.shape
    for a, b in zip(x, d):  # a flip/rotation only permutes pixels
        assert np.array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
    j = colour_jitter(x.astype(np.float32) / 255, rng)
    assert j.dtype == np.float32 and j.min() >= 0 and j.max() <= 1
    assert np.abs(j - x / 255).max() < 0.35
    xf = np.clip(x.astype(np.float32) / 255, 1 / 255, 1)
    assert np.allclose(stain_jitter(xf, rng, sigma=0.0, bias=0.0), xf)  # unmix + remix is lossless
    s = stain_jitter(xf, rng, sigma=0.15)
    assert s.dtype == np.float32 and s.min() >= 0 and s.max() <= 1 and not np.allclose(s, xf)


def test_balanced_images_sampler_gives_each_image_the_mean_count(synthetic_dataset):
    root = synthetic_dataset(n_images=2, points_per_image=4)
    images = [load_labelled(e) for e in find_dataset(root)]
    images[1].tumour_points = images[1].tumour_points[:2]  # 4 and 2 points -> 3 each
    x, y = ImageSampler(images, SamplerConfig(balance_images=True, stain_sigma=0.1)).epoch(np.random.default_rng(0))
    assert int(y.sum()) == 6


def test_image_sampler_balanced_float_inputs(synthetic_dataset):
    root = synthetic_dataset(n_images=2, points_per_image=5)
    images = [load_labelled(e) for e in find_dataset(root)]
    x, y = ImageSampler(images, SamplerConfig(hard_fraction=0.5)).epoch(np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 3)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert int(y.sum()) == 10 and len(y) == 20


def test_offcentre_negatives_sit_12_to_24_px_from_a_tumour_point_and_clear_of_all():
    from viewer.dataset import LabelledImage

    tumour = np.array([[100.0, 100.0], [300.0, 120.0], [305.0, 140.0]])
    others = np.array([[200.0, 200.0]])
    image = LabelledImage("synth", np.zeros((256, 400, 3), np.uint8), tumour, np.concatenate([tumour, others]))
    tl = offcentre_top_lefts(image, 500, np.random.default_rng(0))
    assert 400 <= len(tl) <= 500
    centres = tl + PATCH_SIZE / 2
    d_tumour = np.sqrt(((centres[:, None] - tumour[None]) ** 2).sum(-1)).min(1)
    d_any = np.sqrt(((centres[:, None] - image.all_points[None]) ** 2).sum(-1)).min(1)
    assert d_any.min() >= 12.0 and d_tumour.max() <= 24.0 + 1.0  # +1: rounding to whole pixels
    assert (tl >= 0).all() and (tl[:, 0] <= 400 - 32).all() and (tl[:, 1] <= 256 - 32).all()
    # Every such window still shows its nucleus: the point lies inside the window + 8 px.
    assert (np.abs(centres[:, None] - tumour[None]).max(-1).min(1) <= 24.0 + 1.0).all()
    empty = LabelledImage("none", image.pixels, np.empty((0, 2)), np.empty((0, 2)))
    assert offcentre_top_lefts(empty, 10, np.random.default_rng(0)).shape == (0, 2)


def test_sampler_mixes_in_offcentre_negatives(synthetic_dataset):
    root = synthetic_dataset(n_images=2, points_per_image=5)
    images = [load_labelled(e) for e in find_dataset(root)]
    x, y = ImageSampler(images, SamplerConfig(offcentre_fraction=0.4, hard_fraction=0.2)).epoch(np.random.default_rng(0))
    assert int(y.sum()) == 10 and len(y) == 20


def test_mined_negatives_follow_the_model_scores_and_stay_clear(synthetic_dataset):
    root = synthetic_dataset(n_images=1, points_per_image=4)
    image = load_labelled(find_dataset(root)[0])
    sampler = ImageSampler([image], SamplerConfig(mined_fraction=1.0, hard_fraction=0.0, augment=False))
    rows, cols = (image.height - 32) // 8 + 1, (image.width - 32) // 8 + 1
    from viewer.metrics import clear_window_mask

    clear = clear_window_mask(image.all_points, (rows, cols), 8)
    r, c = map(int, np.argwhere(clear)[len(np.argwhere(clear)) // 2])
    heatmap = np.zeros((rows, cols))
    heatmap[r, c] = 0.9  # the one clear window the "model" finds tumour-like
    heatmap[~clear] = 1.0  # windows on annotated points must never be mined
    sampler.set_scores(image.name, heatmap, 8)
    x, y = sampler.epoch(np.random.default_rng(0))
    expected = image.pixels[8 * r : 8 * r + 32, 8 * c : 8 * c + 32].astype(np.float32) / 255
    negatives = x[y == 0]
    assert len(negatives) == 4 and all(np.array_equal(n, expected) for n in negatives)
    sampler.set_scores(image.name, np.zeros((rows, cols)), 8)  # nothing to mine: uniform again
    x, y = sampler.epoch(np.random.default_rng(0))
    assert int((y == 0).sum()) == 4


# ----------------------------------------------------------------------------- prepare


def test_prepare_cli_writes_npz_split_by_image(synthetic_dataset, tmp_path, monkeypatch, capsys):
    root = synthetic_dataset(n_images=6, points_per_image=3)
    out = tmp_path / "patches.npz"
    assert run_cli(["prepare", "--data", str(root), "--out", str(out), "--seed", "0", "--quiet"], monkeypatch) == 0
    patches, split, seed = load_patches_npz(out)
    assert seed == 0
    assert split == split_images([f"synth_{i:02d}" for i in range(6)], 0)
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    for part in ("train", "val", "test"):
        ps = patches[part]
        assert ps.x.dtype == np.uint8 and ps.x.shape[1:] == (32, 32, 3)
        assert len(ps) == 2 * 3 * len(split[part]) and int(ps.y.sum()) == 3 * len(split[part])
        assert ps.names == split[part] and set(np.unique(ps.image_index)) <= set(range(len(split[part])))
    with np.load(out) as data:
        assert "x_train" in data.files and "names_test" in data.files and float(data["pixel_scale"]) == 255.0
    # Same seed -> identical file content; existing output needs --force.
    code = run_cli(["prepare", "--data", str(root), "--out", str(out), "--quiet"], monkeypatch)
    assert code == 2 and "--force" in capsys.readouterr().err
    out2 = tmp_path / "again.npz"
    assert run_cli(["prepare", "--data", str(root), "--out", str(out2), "--quiet"], monkeypatch) == 0
    again, _, _ = load_patches_npz(out2)
    assert np.array_equal(again["train"].x, patches["train"].x)
    assert not list(tmp_path.glob(".*.npz"))  # no temporary files left behind


def test_prepare_split_seed_moves_the_images_and_the_sampling_seed_does_not(synthetic_dataset, tmp_path, monkeypatch):
    from viewer.dataset import npz_split_seed

    root = synthetic_dataset(n_images=10, points_per_image=3)
    names = [f"synth_{i:02d}" for i in range(10)]
    assert split_images(names, 0) != split_images(names, 4)  # the test below can tell them apart
    for split_seed, seed in ((4, 0), (4, 9), (0, 9)):
        out = tmp_path / f"p{split_seed}_{seed}.npz"
        assert run_cli(["prepare", "--data", str(root), "--out", str(out), "--quiet", "--split-seed", str(split_seed),
                        "--seed", str(seed)], monkeypatch) == 0
        _patches, split, saved_seed = load_patches_npz(out)
        assert split == split_images(names, split_seed) and saved_seed == seed and npz_split_seed(out) == split_seed

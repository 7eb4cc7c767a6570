"""Evaluation of a model on BreCaHAD images it was not trained on: patch metrics, heatmap AUC,
per-image figures and bootstrap intervals.

Protocol (documented in ``histoviewer evaluate --help`` too):

* **Patch metrics**: per image, one 32x32 patch per tumour point (centred, clamped at the border)
  and the same number of seeded non-tumour windows (:func:`viewer.dataset.evaluation_patches`);
  accuracy at threshold 0.5, ROC AUC and the confusion matrix over all patches pooled.
* **Heatmap AUC**: the stride-8 heatmap of each image (``viewer.heatmap.compute_heatmap``) is
  labelled by :func:`viewer.metrics.heatmap_window_labels` (positive: window centre within 8 px
  of a tumour point; negative: no point of any class inside the window expanded by 4 px; others
  ignored); the AUC is computed over the labelled windows of all images pooled, and per image.
* **Intervals**: a percentile bootstrap over *images* (:func:`viewer.metrics.bootstrap_intervals`,
  :data:`BOOTSTRAP_RESAMPLES` resamples seeded by ``seed``): images are the independent units,
  windows of one image are not.
* **Which images**: the split recorded *inside the model file* by ``histoviewer train``
  (:func:`viewer.model.read_model_metadata`). ``split='test'``/``'val'`` refuses a model without
  that record, a folder that lacks an image of the part, and any training image; ``'all'``
  (every annotated image, training images included) and an explicit image list are labelled as
  such. A model trained with ``--split patches`` is measured on its recorded test/val patches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from viewer import DEFAULT_STRIDE
from viewer.dataset import (
    ImageEntry,
    LabelledImage,
    dataset_fingerprint,
    evaluation_patches,
    extract_windows,
    find_dataset,
    load_labelled,
    to_model_input,
)
from viewer.errors import InputError
from viewer.metrics import binary_metrics, bootstrap_intervals, heatmap_scores_and_labels, pooled_heatmap_auc, roc_auc

EVAL_SPLITS = ("test", "val", "all")

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the bootstrap intervals (percentile method, 95 %), seeded by ``--seed``."""


def predict_patches(model, patches_uint8: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """P(tumour) for uint8 patches (N, 32, 32, 3) -> (N,) float32."""
    if len(patches_uint8) == 0:
        return np.empty((0,), np.float32)
    out = []
    for start in range(0, len(patches_uint8), batch_size):
        batch = to_model_input(patches_uint8[start : start + batch_size])
        out.append(np.asarray(model(batch, training=False)).reshape(-1))
    return np.concatenate(out).astype(np.float32)


def _round(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None


def evaluate_images(
    model,
    images: Sequence[LabelledImage],
    seed: int = 0,
    stride: int = DEFAULT_STRIDE,
    heatmap: bool = True,
    progress: Callable[[str], None] | None = None,
    precision: str = "float32",
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """Patch metrics, heatmap AUC, per-image figures and bootstrap intervals over images of
    ``model`` on already-opened images (JSON-ready dict).

    ``precision``: of the heatmaps (already resolved for this CPU: see
    :func:`viewer.heatmap.precision.resolve_precision`); patch metrics are float32."""
    per_image_patches = []
    for img in images:
        patches = evaluation_patches(img, seed)
        per_image_patches.append((patches.y, predict_patches(model, patches.x)))
    y_all = np.concatenate([y for y, _ in per_image_patches]) if images else np.empty(0)
    s_all = np.concatenate([s for _, s in per_image_patches]) if images else np.empty(0)
    result: dict = {"images": [img.name for img in images]}
    result.update(binary_metrics(y_all, s_all))
    result["n_patches"] = int(y_all.size)
    per_image = {img.name: {"n_patches": int(y.size), "accuracy": _round(((s >= 0.5) == (y == 1)).mean()) if y.size else None,
                            "auc": _round(roc_auc(y, s))}
                 for img, (y, s) in zip(images, per_image_patches)}
    result["heatmap_auc"] = None
    result["heatmap_stride"] = stride
    result["heatmap_precision"] = precision
    per_image_windows = None
    if heatmap and images:
        from viewer.heatmap import compute_heatmap

        per_image_windows = []
        ignored_cells = 0
        for img in images:
            t0 = time.perf_counter()
            hm = compute_heatmap(img.pixels, model, stride=stride, precision=precision)
            ignored = img.ignored_windows(hm.shape, stride)
            lab, sc = heatmap_scores_and_labels(hm, img.tumour_points, img.all_points, stride, ignored)
            per_image_windows.append((lab, sc))
            if ignored is not None:
                ignored_cells += int(ignored.sum())
            auc = roc_auc(lab, sc)
            per_image[img.name]["heatmap_auc"] = _round(auc)
            if progress:
                progress(f"heatmap {img.name}: AUC {auc:.4f} ({time.perf_counter() - t0:.1f} s)")
        result["heatmap_auc"] = _finite(pooled_heatmap_auc(per_image_windows))
        result["heatmap_auc_per_image"] = {name: v.get("heatmap_auc") for name, v in per_image.items()}
        lab_all = np.concatenate([lab for lab, _ in per_image_windows])
        result["heatmap_windows"] = {"positive": int((lab_all == 1).sum()), "negative": int((lab_all == 0).sum()),
                                     "in_ignore_regions": ignored_cells}
    result["per_image"] = per_image
    if len(images) >= 2 and resamples > 0:
        result["intervals"] = bootstrap_intervals(per_image_patches, per_image_windows, resamples=resamples, seed=seed)
        result["intervals"]["unit"] = "image"
    return result


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Which images: the record inside the model file
# ---------------------------------------------------------------------------------------------


def model_record(model_path: str | Path) -> dict:
    """What ``histoviewer train`` recorded in the model file (``{}`` for other models)."""
    from viewer.model import read_model_metadata

    return read_model_metadata(model_path)


def _recorded_split(record: dict, model_path: Path) -> dict | None:
    split = record.get("split")
    if split is None:
        return None
    if not isinstance(split, dict) or split.get("kind") not in ("images", "patches") or not all(
            p in split for p in ("train", "val", "test")):
        raise InputError("has an unreadable split record", model_path)
    return split


def _training_images(split: dict) -> set[str]:
    """Every image the model saw in training: the train part, or for a patch split every image."""
    if split["kind"] == "patches":
        return set(split.get("images", ())) | set(split["train"])
    return set(split["train"])


def _select(entries: Sequence[ImageEntry], names: Sequence[str], data_dir, why: str) -> list[ImageEntry]:
    by_name = {e.name: e for e in entries}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"lacks {len(missing)} image(s) of {why} (e.g. {missing[0]}); pass the folder the model "
                         "was trained on", data_dir)
    return [by_name[n] for n in names]


def _size_notes(record: dict, entries: Sequence[ImageEntry]) -> list[str]:
    """A note when files of the recorded names differ in size from those the model was split on
    (another copy of the dataset, e.g. BreCaHAD's uncompressed TIFFs: measured, but said)."""
    recorded = {f["name"]: f for f in ((record.get("data") or {}).get("fingerprint") or {}).get("images", ())}
    if not recorded:
        return []
    now = {f["name"]: f for f in dataset_fingerprint(entries)["images"]}
    differ = [n for n in now if n in recorded and (now[n]["image_bytes"], now[n]["annotation_bytes"])
              != (recorded[n]["image_bytes"], recorded[n]["annotation_bytes"])]
    return [f"{len(differ)} image(s) differ in size from the files the model was split on (e.g. {differ[0]})"] if differ else []


def choose_images(
    data_dir: str | Path, model_path: str | Path, split: str = "test", images: Sequence[str] | None = None
) -> tuple[list[ImageEntry], str]:
    """(entries, what they are) for ``split`` or the named ``images``; refuses every leak.

    Raises :class:`InputError` (one line) when ``split`` is test/val and the model records no
    split, when the folder lacks an image of the part, and when a requested image is one the
    model was trained on."""
    model_path = Path(model_path)
    if split not in EVAL_SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    entries = find_dataset(data_dir)
    record_split = _recorded_split(model_record(model_path), model_path)
    if images is not None:
        chosen = _select(entries, list(dict.fromkeys(images)), data_dir, "--images")
        if record_split is None:
            return chosen, (f"{len(chosen)} named image(s); the model records no split, so they may include "
                            "its training images")
        trained = [e.name for e in chosen if e.name in _training_images(record_split)]
        if trained:
            raise InputError(f"{trained[0]} is a training image of this model ({len(trained)} of the {len(chosen)} "
                             "named); evaluate measures held-out images only (--split all scores every image, "
                             "labelled as such)", model_path)
        return chosen, f"{len(chosen)} named image(s), none of them a training image of the model"
    if split == "all":
        return entries, (f"all {len(entries)} annotated images of {data_dir}, training images included: "
                         "not a held-out measurement")
    if record_split is None:
        raise InputError(f"records no training split (not written by this version of 'histoviewer train'), so its "
                         f"{split} images are unknown; use --split all or --images, labelled as such", model_path)
    if record_split["kind"] == "patches":
        raise InputError("was trained on a patch split; its test/val patches are measured by run_evaluation", model_path)
    names = list(record_split[split])
    if not names:
        raise InputError(f"the {split} part of the recorded split is empty; use --split all", model_path)
    trained = sorted(set(names) & _training_images(record_split))
    if trained:
        raise InputError(f"has an inconsistent split record: {trained[0]} is both a {split} and a training image",
                         model_path)
    return _select(entries, names, data_dir, f"the recorded {split} split"), f"{split} split recorded in the model file"


def _patch_split_part(data_dir, model_path: Path, split: dict, part: str):
    """(labels, uint8 patches, per-patch image index, names) of the recorded patches of ``part``."""
    patches_by_image = split[part]
    entries = _select(find_dataset(data_dir), sorted(patches_by_image), data_dir, f"the recorded {part} patches")
    xs, ys, idx = [], [], []
    for i, entry in enumerate(entries):
        rows = np.asarray(patches_by_image[entry.name], dtype=np.int64).reshape(-1, 3)
        image = load_labelled(entry)
        xs.append(extract_windows(image.pixels, rows[:, :2]))
        ys.append(rows[:, 2].astype(np.uint8))
        idx.append(np.full(len(rows), i))
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(idx), [e.name for e in entries], entries


def run_evaluation(
    data_dir: str | Path,
    model_path: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
    heatmap: bool = True,
    progress: Callable[[str], None] | None = None,
    precision: str = "float32",
    threads: int | None = None,
    images: Sequence[str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """Everything ``histoviewer evaluate`` prints, as a dict.

    ``precision``: of the heatmap AUC's heatmaps (bfloat16 falls back to float32, with a note in
    ``report["notes"]``, where the CPU or the model cannot use it). ``threads``: cap on
    TensorFlow's threads, applied before the model is loaded. The image choice is checked
    before TensorFlow is imported, so a refusal is immediate."""
    from viewer.model import bundled_model_path, file_sha256

    path = bundled_model_path() if model_path is None else Path(model_path)
    if resamples < 0:
        raise InputError(f"--resamples must be 0 or more, not {resamples}")
    record = model_record(path)
    record_split = _recorded_split(record, path)
    patch_split = (record_split is not None and record_split["kind"] == "patches" and images is None
                   and split != "all")
    if patch_split:
        y, x, image_index, names, entries = _patch_split_part(data_dir, path, record_split, split)
        source = f"{split} patches of the model's random patch split (the paper's protocol), recorded in the model file"
    else:
        entries, source = choose_images(data_dir, path, split, images)
    notes = _size_notes(record, entries)

    from viewer.heatmap.engine import effective_precision
    from viewer.heatmap.precision import configure_threads, resolve_precision
    from viewer.model import load_model

    precision = resolve_precision(precision, notes)
    configure_threads(threads, notes)
    model = load_model(path)
    if effective_precision(model, DEFAULT_STRIDE, precision) != precision:
        notes.append("bfloat16 needs the fully convolutional pass; this model's heatmaps are computed in float32")
        precision = "float32"
    t0 = time.perf_counter()
    if patch_split:
        result = _evaluate_recorded_patches(model, y, x, image_index, names, seed, resamples)
        counts = {"images": len(names), "patches": int(y.size)}
    else:
        opened = [load_labelled(e) for e in entries]
        result = evaluate_images(model, opened, seed=seed, heatmap=heatmap, progress=progress, precision=precision,
                                 resamples=resamples)
        counts = {"images": len(opened), "tumour_points": int(sum(len(i.tumour_points) for i in opened)),
                  "patches": result["n_patches"]}
    program = record.get("program") or {}
    report = {
        "model": str(path),
        "model_sha256": file_sha256(path),
        "model_trained_at": {k: program.get(k) for k in ("version", "git_commit", "git_dirty")} if program else None,
        "data": str(data_dir),
        "split": "images" if images is not None else split,
        "split_kind": record_split["kind"] if record_split else None,
        "split_source": source,
        "held_out": split != "all" or images is not None,
        "seed": seed,
    }
    report.update(result)
    report["counts"] = counts
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["notes"] = notes
    return report


def _evaluate_recorded_patches(model, y, x, image_index, names, seed: int, resamples: int) -> dict:
    """Patch metrics on a patch split's recorded patches; the interval resamples *patches*, the
    units that split was made of (its images are also training images, so no heatmap AUC)."""
    scores = predict_patches(model, x)
    result: dict = {"images": names}
    result.update(binary_metrics(y, scores))
    result["n_patches"] = int(y.size)
    result["heatmap_auc"] = None
    result["heatmap_note"] = "not measured: every image of a patch split also gave training patches"
    if resamples > 0 and y.size >= 2:
        units = [(y[i : i + 1], scores[i : i + 1]) for i in range(y.size)]
        result["intervals"] = bootstrap_intervals(units, None, resamples=resamples, seed=seed)
        result["intervals"]["unit"] = "patch"
    return result

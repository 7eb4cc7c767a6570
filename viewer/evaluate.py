"""Held-out evaluation of a model on BreCaHAD images: patch metrics and heatmap AUC.

Protocol (documented in ``histoviewer evaluate --help`` too):

* **Patch metrics**: per image, one 32x32 patch per tumour point (centred, clamped at the border)
  and the same number of seeded non-tumour windows (:func:`viewer.dataset.evaluation_patches`);
  accuracy at threshold 0.5, ROC AUC and the confusion matrix over all patches pooled.
* **Heatmap AUC**: the stride-8 heatmap of each image (``viewer.heatmap.compute_heatmap``) is
  labelled by :func:`viewer.metrics.heatmap_window_labels` (positive: window centre within 8 px
  of a tumour point; negative: no point of any class inside the window expanded by 4 px; others
  ignored); the AUC is computed over the labelled windows of all images pooled.
* **Which images**: ``split='test'`` (default) or ``'val'`` takes the split *recorded beside the
  model* (``MODEL.metrics.json``, or ``training_metrics.json`` naming the model file) if there is
  one, otherwise recomputes :func:`viewer.dataset.split_images` from the seed and the sorted image
  names of the folder; ``'all'`` uses every annotated image of the folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from viewer import DEFAULT_STRIDE
from viewer.dataset import (
    LabelledImage,
    concat_patchsets,
    evaluation_patches,
    find_dataset,
    load_labelled,
    select_entries,
    split_images,
    to_model_input,
)
from viewer.errors import InputError
from viewer.metrics import binary_metrics, heatmap_scores_and_labels, roc_auc

EVAL_SPLITS = ("test", "val", "all")


def predict_patches(model, patches_uint8: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """P(tumour) for uint8 patches (N, 32, 32, 3) -> (N,) float32."""
    if len(patches_uint8) == 0:
        return np.empty((0,), np.float32)
    out = []
    for start in range(0, len(patches_uint8), batch_size):
        batch = to_model_input(patches_uint8[start : start + batch_size])
        out.append(np.asarray(model(batch, training=False)).reshape(-1))
    return np.concatenate(out).astype(np.float32)


def evaluate_images(
    model,
    images: Sequence[LabelledImage],
    seed: int = 0,
    stride: int = DEFAULT_STRIDE,
    heatmap: bool = True,
    progress: Callable[[str], None] | None = None,
    precision: str = "float32",
) -> dict:
    """Patch metrics and heatmap AUC of ``model`` on already-opened images (JSON-ready dict).

    ``precision``: of the heatmaps (already resolved for this CPU: see
    :func:`viewer.heatmap.precision.resolve_precision`); patch metrics are float32."""
    patches = concat_patchsets([evaluation_patches(img, seed) for img in images])
    scores = predict_patches(model, patches.x)
    result: dict = {"images": [img.name for img in images]}
    result.update(binary_metrics(patches.y, scores))
    result["n_patches"] = len(patches)
    result["heatmap_auc"] = None
    result["heatmap_stride"] = stride
    result["heatmap_precision"] = precision
    if heatmap and images:
        try:
            from viewer.heatmap import compute_heatmap
        except ImportError:  # pragma: no cover - only while viewer.heatmap is being written
            result["heatmap_note"] = "viewer.heatmap.compute_heatmap is not available; heatmap AUC skipped"
        else:
            labels, scores_h, per_image = [], [], {}
            for img in images:
                t0 = time.perf_counter()
                hm = compute_heatmap(img.pixels, model, stride=stride, precision=precision)
                lab, sc = heatmap_scores_and_labels(hm, img.tumour_points, img.all_points, stride)
                labels.append(lab)
                scores_h.append(sc)
                auc = roc_auc(lab, sc)
                per_image[img.name] = None if not np.isfinite(auc) else round(float(auc), 6)
                if progress:
                    progress(f"heatmap {img.name}: AUC {auc:.4f} ({time.perf_counter() - t0:.1f} s)")
            lab_all = np.concatenate(labels) if labels else np.empty(0)
            sc_all = np.concatenate(scores_h) if scores_h else np.empty(0)
            auc_all = roc_auc(lab_all, sc_all)
            result["heatmap_auc"] = float(auc_all) if np.isfinite(auc_all) else None
            result["heatmap_auc_per_image"] = per_image
            result["heatmap_windows"] = {"positive": int((lab_all == 1).sum()), "negative": int((lab_all == 0).sum())}
            if result["heatmap_auc"] is not None:
                pred = (sc_all >= 0.5).astype(int)
                result["heatmap_accuracy"] = float((pred == lab_all).mean())
    return result


def sidecar_metrics_path(model_path: str | Path) -> Path | None:
    """The training metrics JSON recorded beside a model, if any.

    ``MODEL.metrics.json`` first; else ``training_metrics.json`` in the same folder when its
    ``model_file`` entry names this model (that is how the bundled model is shipped).
    """
    model_path = Path(model_path)
    direct = model_path.with_suffix(".metrics.json")
    if direct.is_file():
        return direct
    shared = model_path.with_name("training_metrics.json")
    if shared.is_file():
        try:
            data = json.loads(shared.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("model_file") == model_path.name:
            return shared
    return None


def recorded_split(metrics_path: Path) -> dict[str, list[str]] | None:
    try:
        data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
        split = data["split"]
        return {part: [str(n) for n in split[part]] for part in ("train", "val", "test")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"has no readable 'split' entry ({type(exc).__name__})", metrics_path) from exc


def choose_images(data_dir: str | Path, model_path: Path, split: str, seed: int) -> tuple[list, str]:
    """(entries, description of where the image list came from) for ``split``."""
    if split not in EVAL_SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    entries = find_dataset(data_dir)
    if split == "all":
        return entries, f"all {len(entries)} annotated images of {data_dir}"
    sidecar = sidecar_metrics_path(model_path)
    if sidecar is not None:
        names = recorded_split(sidecar)[split]
        source = f"{split} split recorded in {sidecar}"
    else:
        names = split_images([e.name for e in entries], seed)[split]
        source = f"{split} split recomputed from seed {seed} and the {len(entries)} sorted image names"
    if not names:
        raise InputError(f"the {split} split is empty ({source}); use --split all", data_dir)
    return select_entries(entries, names, data_dir), source


def run_evaluation(
    data_dir: str | Path,
    model_path: str | Path | None = None,
    split: str = "test",
    seed: int = 0,
    heatmap: bool = True,
    progress: Callable[[str], None] | None = None,
    precision: str = "float32",
    threads: int | None = None,
) -> dict:
    """Everything ``histoviewer evaluate`` prints, as a dict.

    ``precision``: of the heatmap AUC's heatmaps (bfloat16 falls back to float32, with a note in
    ``report["notes"]``, where the CPU or the model cannot use it). ``threads``: cap on
    TensorFlow's threads, applied before the model is loaded."""
    from viewer.heatmap.engine import effective_precision
    from viewer.heatmap.precision import configure_threads, resolve_precision
    from viewer.model import bundled_model_path, file_sha256, load_model

    notes: list[str] = []
    precision = resolve_precision(precision, notes)
    configure_threads(threads, notes)
    path = bundled_model_path() if model_path is None else Path(model_path)
    model = load_model(path)
    if effective_precision(model, DEFAULT_STRIDE, precision) != precision:
        notes.append("bfloat16 needs the fully convolutional pass; this model's heatmaps are computed in float32")
        precision = "float32"
    entries, source = choose_images(data_dir, path, split, seed)
    images = [load_labelled(e) for e in entries]
    t0 = time.perf_counter()
    result = evaluate_images(model, images, seed=seed, heatmap=heatmap, progress=progress, precision=precision)
    report = {
        "model": str(path),
        "model_sha256": file_sha256(path),
        "data": str(data_dir),
        "split": split,
        "split_source": source,
        "seed": seed,
    }
    report.update(result)
    report["counts"] = {
        "images": len(images),
        "tumour_points": int(sum(len(i.tumour_points) for i in images)),
        "patches": result["n_patches"],
    }
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["notes"] = notes
    return report

"""Teaching the model a user's corrections (issue 13): ``histoviewer train --init`` on real data.

    python benchmarks/finetune.py [--data ../shared/data/brecahad-subset] [--model resources/convnet_brecahad.keras]
                                  [--points 12] [--epochs 5] [--recipe base|plain|fresh] [--test] [--keep DIR]

A simulated user, on the shared BreCaHAD subset:

1. picks the **corrected image**: the training image of the base model whose annotation is
   densest (most tumour points); only training images qualify, so nothing held out is touched;
2. adds ``--points`` tumour points at the **highest-scoring unannotated nuclei**: the base
   model's heatmap peaks (local maxima, at least 24 px apart) whose window centre is at least
   24 px from every annotated point (the dataset's tumour disks have a 20 px radius);
3. marks an **ignore region** elsewhere: a 256x256 px square in the image quadrant farthest from
   the added points;
4. saves these edits as the viewer does (BreCaHAD JSON + ``.regions.geojson`` sidecar) into a
   temporary copy of the dataset folder (images are symlinked, never copied into the repo), and
   fine-tunes the base model with the real CLI (``python -m viewer train --init``) three times:

   * ``corrected only``: on the corrected image alone (``--images``), what Analysis > Improve
     Model does without the original data;
   * ``with original data``: on every training image of the base model, the corrected one with
     its edits (the GUI's "add the original training data");
   * ``control``: the same as ``with original data`` but with the *original* annotations, and
     ``control, that image only``: the same as ``corrected only`` with the original annotations,
     so that what the corrections do is told apart from what more training does.

Reported against the base model, measured in the same run (no figure is taken from elsewhere):

* the mean heatmap probability at the added points, before and after;
* the corrected image's heatmap AUC against its corrected annotations (ignore region excluded);
* the mean log-odds at the added points (the probability saturates near 1 at the model's own
  peaks; the log-odds still shows the direction and size of the change);
* the patch accuracy at 0.5 of the evaluation protocol on the same images (volatile: it depends
  on where the last epoch lands, see the model card);
* the pooled heatmap AUC of the base model's **validation** images (the "other held-out images";
  the goal: no loss greater than 0.005), and with ``--test``, once, for the record, of its
  **test** images.

The settings (points, square, epochs, learning rate) were fixed before the first run; nothing
was tuned on the validation or test figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "brecahad-subset"
DEFAULT_MODEL = REPO / "resources" / "convnet_brecahad.keras"
MIN_DISTANCE = 24.0
"""Added points keep this far from annotated points and from each other (px)."""
IGNORE_SIDE = 256


def heatmap_peaks(heatmap: np.ndarray, annotated: np.ndarray, count: int, stride: int = 8) -> np.ndarray:
    """(count, 2) pixel (x, y) of the highest local maxima of ``heatmap`` whose window centre is
    at least MIN_DISTANCE px from every annotated point and from each other (greedy)."""
    padded = np.pad(heatmap, 1, mode="edge")
    local = heatmap == np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).max(axis=(2, 3))
    rows, cols = np.nonzero(local)
    order = np.argsort(-heatmap[rows, cols], kind="stable")
    chosen: list[tuple[float, float]] = []
    for i in order:
        x, y = cols[i] * stride + 16.0, rows[i] * stride + 16.0
        if len(annotated) and np.min(np.hypot(annotated[:, 0] - x, annotated[:, 1] - y)) < MIN_DISTANCE:
            continue
        if chosen and min(np.hypot(cx - x, cy - y) for cx, cy in chosen) < MIN_DISTANCE:
            continue
        chosen.append((x, y))
        if len(chosen) == count:
            break
    return np.array(chosen, dtype=np.float64).reshape(-1, 2)


def ignore_square(width: int, height: int, added: np.ndarray) -> np.ndarray:
    """Corners of a square in the quadrant whose centre is farthest from the added points."""
    quadrants = [(width * fx, height * fy) for fx in (0.25, 0.75) for fy in (0.25, 0.75)]
    far = max(quadrants, key=lambda q: float(np.min(np.hypot(added[:, 0] - q[0], added[:, 1] - q[1]))))
    h = IGNORE_SIDE / 2
    x0, y0 = far[0] - h, far[1] - h
    return np.array([[x0, y0], [x0 + IGNORE_SIDE, y0], [x0 + IGNORE_SIDE, y0 + IGNORE_SIDE], [x0, y0 + IGNORE_SIDE]])


def linked_dataset(source: Path, target: Path) -> Path:
    """A BreCaHAD-layout folder whose images are symlinks into ``source`` and whose annotations
    are copies (so edits never touch the shared data)."""
    (target / "images").mkdir(parents=True)
    (target / "groundTruth").mkdir()
    for image in sorted((source / "images").iterdir()):
        (target / "images" / image.name).symlink_to(image.resolve())
    for truth in sorted((source / "groundTruth").glob("*.json")):
        (target / "groundTruth" / truth.name).write_bytes(truth.read_bytes())
    return target


def finetune(base: Path, data: Path, out: Path, epochs: int, images: list[str] | None, recipe: str) -> float:
    """Run the real CLI in a subprocess; returns its wall time."""
    cmd = [sys.executable, "-m", "viewer", "train", "--init", str(base), "--data", str(data), "--out", str(out),
           "--epochs", str(epochs), "--recipe", recipe, "--no-heatmap", "--force"]
    if images:
        cmd += ["--images", ",".join(images)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"fine-tune failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    for line in done.stderr.splitlines():
        if line.startswith(("epoch", "note", "fine-tuning")):
            print("   ", line)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=None, help="default: the fine-tune default (5)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the models and edited folder here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--recipe", choices=("base", "plain", "fresh"), default="base",
                        help="the fine-tune's recipe (default: the base model's own)")
    parser.add_argument("--test", action="store_true",
                        help="also measure the base model's test images (the final measurement: once)")
    args = parser.parse_args()

    from viewer.agreement import sample_at_points
    from viewer.annotations import TUMOUR_CLASS, Region, load_annotations, save_annotations
    from viewer.dataset import find_dataset, load_labelled
    from viewer.evaluate import evaluate_images
    from viewer.finetune import FINETUNE_EPOCHS
    from viewer.heatmap import compute_heatmap
    from viewer.model import load_model, read_model_metadata

    epochs = args.epochs or FINETUNE_EPOCHS
    split = read_model_metadata(args.model).get("split") or {}
    if split.get("kind") != "images":
        sys.exit(f"{args.model}: needs a model that records an image split")
    entries = {e.name: e for e in find_dataset(args.data)}
    train_names = [n for n in split["train"] if n in entries]
    counts = {n: len(load_annotations(entries[n].annotation_path).points.get(TUMOUR_CLASS, ())) for n in train_names}
    corrected = max(train_names, key=lambda n: counts[n])
    print(f"base model {args.model.name}: {len(split['train'])} train / {len(split['val'])} val / "
          f"{len(split['test'])} test images; corrected image {corrected} ({counts[corrected]} tumour points, the "
          f"densest training image)")

    base = load_model(args.model)
    image = load_labelled(entries[corrected])
    base_heat = compute_heatmap(image.pixels, base)
    added = heatmap_peaks(base_heat, image.all_points, args.points)
    square = ignore_square(image.width, image.height, added)
    print(f"added {len(added)} tumour points at the base model's top unannotated peaks "
          f"(p {base_heat.max():.3f} max in the image); ignore square at x {square[0, 0]:.0f}, y {square[0, 1]:.0f}")

    tmp_root = Path(tempfile.mkdtemp(prefix="hv-finetune-")) if args.keep is None else args.keep
    edited = linked_dataset(args.data, tmp_root / "edited")
    original = linked_dataset(args.data, tmp_root / "original")
    ann = load_annotations(entries[corrected].annotation_path)
    w, h = image.width, image.height
    new_points = np.concatenate([ann.points[TUMOUR_CLASS].reshape(-1, 2), added / np.array([w, h])])
    edited_ann = ann.with_points({**ann.points, TUMOUR_CLASS: new_points}).with_regions([Region.polygon("ignore", square)])
    save_annotations(edited_ann, edited / "groundTruth" / f"{corrected}.json")
    from viewer.dataset.ignore import ignored_centres

    in_square = int(ignored_centres(image.tumour_points, edited_ann.regions).sum())
    print(f"the ignore square ({IGNORE_SIDE}x{IGNORE_SIDE} px) holds {in_square} annotated tumour points, "
          "no longer positives; its windows are no negatives either")

    runs = {
        "corrected only": (edited, [corrected]),
        "with original data": (edited, None),
        "control (original annotations)": (original, None),
        "control, that image only": (original, [corrected]),
    }
    models = {"base": args.model}
    seconds = {}
    for label, (folder, images) in runs.items():
        out = tmp_root / (label.replace(",", "").replace(" ", "_").replace("(", "").replace(")", "") + ".keras")
        seconds[label] = finetune(args.model, folder, out, epochs, images, args.recipe)
        models[label] = out

    # Measure every model on the same images, in this process.
    corrected_edited = load_labelled(find_dataset(edited)[[e.name for e in find_dataset(edited)].index(corrected)])
    val = [load_labelled(entries[n]) for n in split["val"]]
    test = [load_labelled(entries[n]) for n in split["test"]]
    rows = {}
    for label, path in models.items():
        model = base if label == "base" else load_model(path)
        heat = compute_heatmap(corrected_edited.pixels, model)
        at_added = sample_at_points(heat, added)
        corr = evaluate_images(model, [corrected_edited], resamples=0)
        v = evaluate_images(model, val, resamples=0)
        t = evaluate_images(model, test, resamples=0) if args.test else {"heatmap_auc": float("nan")}
        p = np.clip(at_added[np.isfinite(at_added)], 1e-7, 1 - 1e-7)
        rows[label] = {
            "mean_p_added": float(np.nanmean(at_added)),
            "mean_logit_added": float(np.mean(np.log(p / (1 - p)))),
            "corrected_heatmap_auc": corr["heatmap_auc"],
            "val_heatmap_auc": v["heatmap_auc"],
            "val_patch_accuracy": v["accuracy"],
            "test_patch_accuracy": t.get("accuracy"),
            "val_per_image": v["heatmap_auc_per_image"],
            "test_heatmap_auc": t["heatmap_auc"],
            "seconds": round(seconds.get(label, 0.0), 1),
        }
    b = rows["base"]
    print()
    print(f"{'model':32s} {'mean p added':>13s} {'logit added':>12s} {'corrected AUC':>14s} {'val AUC':>9s} "
          f"{'Δ val':>8s} {'val acc':>8s} {'test AUC (once)':>16s} {'Δ test':>8s} {'test acc':>9s} {'train s':>8s}")
    for label, r in rows.items():
        print(f"{label:32s} {r['mean_p_added']:13.4f} {r['mean_logit_added']:12.2f} "
              f"{r['corrected_heatmap_auc']:14.4f} {r['val_heatmap_auc']:9.4f} "
              f"{r['val_heatmap_auc'] - b['val_heatmap_auc']:+8.4f} {r['val_patch_accuracy']:8.4f} " + (
                  f"{r['test_heatmap_auc']:16.4f} {r['test_heatmap_auc'] - b['test_heatmap_auc']:+8.4f} "
                  f"{r['test_patch_accuracy']:9.4f}" if args.test else f"{'(--test)':>16s} {'':>8s} {'':>9s}")
              + f" {r['seconds']:8.1f}")
    print()
    short = ["base", "corrected", "with orig.", "control", "ctl. image"]
    print("per validation image (heatmap AUC):  " + "".join(f"{s:>11s}" for s in short[: len(rows)]))
    for name in split["val"]:
        print(f"  {name:32s}" + "".join(f"{r['val_per_image'][name]:11.4f}" for r in rows.values()))
    goal = {label: (r["val_heatmap_auc"] - b["val_heatmap_auc"] >= -0.005,
                    r["corrected_heatmap_auc"] > b["corrected_heatmap_auc"], r["mean_p_added"] > b["mean_p_added"])
            for label, r in rows.items() if label != "base"}
    print()
    for label, (kept, better, up) in goal.items():
        print(f"{label}: val loss ≤ 0.005: {'yes' if kept else 'NO'}; corrected image AUC up: "
              f"{'yes' if better else 'NO'}; mean p at added points up: {'yes' if up else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"corrected": corrected, "added": added.tolist(), "ignore": square.tolist(),
                                         "epochs": epochs, "rows": rows}, indent=1))
    if args.keep is None:
        import shutil

        shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

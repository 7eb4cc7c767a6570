"""Train the Table-1 ConvNet on BreCaHAD with whole images held out for validation and test.

What is fixed (the paper): the architecture (:func:`viewer.model.build_convnet`), Adam, binary
cross-entropy, 32x32 RGB windows scaled to [0, 1], batch size 16 by default.

Fair improvements used here (all switchable, all recorded in the metrics JSON):

* every epoch draws *fresh* windows from the training images: tumour windows centred on each
  tumour point plus a random offset within ``jitter`` px (the heatmap scores windows whose centre
  is up to 8 px from a point), and ``negatives_per_positive`` new non-tumour windows per point,
  a share of them "hard" (close to, but clear of, annotated points);
* optionally, negatives that teach "tumour at the *centre*": off-centre windows 12-24 px from a
  tumour point, and windows mined each epoch from where the current model scores highest;
* augmentation: the 8 flips / 90-degree rotations and mild colour/stain jitter;
* validation on the fixed evaluation-protocol patches of the *val images*; the learning rate is
  halved after ``plateau`` epochs without improvement of the val loss; early stopping after
  ``patience`` such epochs, restoring the best weights.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from viewer.dataset import (
    FixedSampler,
    ImageSampler,
    PatchSet,
    SamplerConfig,
    concat_patchsets,
    evaluation_patches,
    find_dataset,
    load_labelled,
    load_patches_npz,
    split_images,
    to_model_input,
)
from viewer.errors import InputError


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    seed: int = 0
    learning_rate: float = 1e-3
    patience: int = 8
    """Early stopping: epochs without val-loss improvement before stopping (0 = never stop)."""
    plateau: int = 3
    """Halve the learning rate after this many epochs without val-loss improvement (0 = never)."""
    min_learning_rate: float = 1e-5
    max_images: int | None = None
    """Use only the first N images (sorted by name) of the dataset folder, then split them."""
    dropout: float = 0.5
    negatives_per_positive: float = 1.0
    hard_fraction: float = 0.25
    jitter: float = 6.0
    augment: bool = True
    colour_strength: float = 1.0
    stain_sigma: float = 0.0
    balance_images: bool = False
    offcentre_fraction: float = 0.0
    mined_fraction: float = 0.0
    monitor: str = "val_loss"
    """What early stopping, the LR plateau and best-weights restore watch: val_loss (lower is
    better), val_auc or val_heatmap_auc (higher is better; the latter needs image data)."""
    ema: bool = False
    """Keep an exponential moving average of the weights (Adam ``use_ema``) and evaluate/save it."""


MONITORS = ("val_loss", "val_auc", "val_heatmap_auc")


@dataclass
class TrainResult:
    model: object
    history: list[dict]
    split: dict[str, list[str]]
    best_epoch: int
    stopped_early: bool
    seconds: float


def _log(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def load_training_data(data: str | Path, config: TrainConfig, progress=None):
    """(sampler, val PatchSet, split, held-out images {split: [LabelledImage]} or None)."""
    data = Path(data)
    if data.suffix.lower() == ".npz":
        patches, split, _seed = load_patches_npz(data)
        if len(patches["train"]) == 0:
            raise InputError("has no training patches", data)
        if config.mined_fraction or config.offcentre_fraction:
            raise InputError("--mined-fraction and --offcentre-fraction draw windows from whole images; "
                             "pass the dataset folder, not a patch npz", data)
        sampler = FixedSampler(patches["train"], augment=config.augment, colour_strength=config.colour_strength)
        return sampler, patches["val"], split, None
    entries = find_dataset(data)
    if config.max_images is not None:
        if config.max_images < 1:
            raise InputError("--max-images must be at least 1")
        entries = entries[: config.max_images]
    split = split_images([e.name for e in entries], config.seed)
    by_name = {e.name: e for e in entries}
    t0 = time.perf_counter()
    loaded = {part: [load_labelled(by_name[n]) for n in split[part]] for part in split}
    _log(progress, f"loaded {len(entries)} images in {time.perf_counter() - t0:.1f} s: "
         f"{len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test")
    sampler = ImageSampler(
        loaded["train"],
        SamplerConfig(
            negatives_per_positive=config.negatives_per_positive,
            jitter=config.jitter,
            hard_fraction=config.hard_fraction,
            augment=config.augment,
            colour_strength=config.colour_strength,
            stain_sigma=config.stain_sigma,
            balance_images=config.balance_images,
            offcentre_fraction=config.offcentre_fraction,
            mined_fraction=config.mined_fraction,
        ),
    )
    val = concat_patchsets([evaluation_patches(img, config.seed) for img in loaded["val"]])
    return sampler, val, split, loaded


def _val_heatmap_auc(model, val_images) -> float:
    from viewer.heatmap import compute_heatmap
    from viewer.metrics import heatmap_scores_and_labels, roc_auc

    labels, scores = [], []
    for img in val_images:
        hm = compute_heatmap(img.pixels, model)
        lab, sc = heatmap_scores_and_labels(hm, img.tumour_points, img.all_points)
        labels.append(lab)
        scores.append(sc)
    return roc_auc(np.concatenate(labels), np.concatenate(scores)) if labels else math.nan


def balanced_sample_weights(y: np.ndarray) -> np.ndarray:
    """Per-window loss weights that make both classes weigh the same in total.

    The evaluation protocol is balanced (one non-tumour window per tumour window) and reads the
    score at 0.5, so the model must learn a 1:1 prior even when an epoch draws, say, two
    negatives per positive; with a 1:1 draw every weight is 1.
    """
    y = np.asarray(y).reshape(-1)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    weights = np.ones(y.size, dtype=np.float32)
    if n_pos and n_neg:
        weights[y == 0] = n_pos / n_neg
    return weights


def _mine_hard_negatives(model, sampler) -> None:
    """Score every training image with the current model so the sampler can draw the clear
    windows it rates most tumour-like (fully convolutional: ~0.3 s an image)."""
    from viewer import DEFAULT_STRIDE
    from viewer.heatmap import compute_heatmap

    for image in sampler.images:
        sampler.set_scores(image.name, compute_heatmap(image.pixels, model), DEFAULT_STRIDE)


def train_model(
    sampler, val: PatchSet, config: TrainConfig, progress=None, val_images=None
) -> tuple[object, list[dict], int, bool]:
    """The epoch loop; returns (model with best weights, history, best epoch, stopped early)."""
    from viewer.metrics import roc_auc
    from viewer.model import build_convnet, import_keras

    if config.monitor not in MONITORS:
        raise InputError(f"unknown --monitor {config.monitor!r}; choose one of {', '.join(MONITORS)}")
    if config.monitor == "val_heatmap_auc" and not val_images:
        raise InputError("--monitor val_heatmap_auc needs validation images (a dataset folder, not an npz)")
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    model = build_convnet(dropout=config.dropout, seed=config.seed)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, use_ema=config.ema, ema_momentum=0.99)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng([config.seed, 7])
    xv = to_model_input(val.x)
    yv = val.y.astype(np.float32)
    history: list[dict] = []
    best_loss, best_epoch, best_weights = math.inf, 0, None
    since_best = since_lr = 0
    lr = config.learning_rate
    stopped = False
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        if config.mined_fraction > 0 and epoch > 1:
            _mine_hard_negatives(model, sampler)
        x, y = sampler.epoch(rng)
        fit = model.fit(x, y, sample_weight=balanced_sample_weights(y), batch_size=config.batch_size,
                        epochs=1, shuffle=True, verbose=0)
        row = {
            "epoch": epoch,
            "loss": float(fit.history["loss"][-1]),
            "accuracy": float(fit.history["accuracy"][-1]),
            "learning_rate": lr,
            "n_train": int(len(y)),
        }
        if len(yv):
            val_loss, val_acc = model.evaluate(xv, yv, batch_size=1024, verbose=0)
            row["val_loss"], row["val_accuracy"] = float(val_loss), float(val_acc)
            row["val_auc"] = float(roc_auc(yv, np.asarray(model(xv, training=False)).reshape(-1)))
        if val_images:
            row["val_heatmap_auc"] = float(_val_heatmap_auc(model, val_images))
        if config.monitor in row:
            monitor = row[config.monitor] if config.monitor == "val_loss" else -row[config.monitor]
        else:
            monitor = row["loss"]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        improved = monitor < best_loss - 1e-4
        if improved:
            best_loss, best_epoch, best_weights = monitor, epoch, model.get_weights()
            since_best = since_lr = 0
        else:
            since_best += 1
            since_lr += 1
        val_text = f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  val_auc {row['val_auc']:.4f}" if "val_loss" in row else ""
        if "val_heatmap_auc" in row:
            val_text += f"  val_hm_auc {row['val_heatmap_auc']:.4f}"
        _log(progress, f"epoch {epoch:3d}/{config.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}"
             f"{val_text}  lr {lr:.2e}  {row['seconds']:.1f} s{'  *' if improved else ''}")
        if config.patience and since_best >= config.patience:
            stopped = True
            _log(progress, f"early stop: no {config.monitor} improvement for {since_best} epochs; best epoch {best_epoch}")
            break
        if config.plateau and since_lr >= config.plateau and lr > config.min_learning_rate:
            lr = max(lr * 0.5, config.min_learning_rate)
            optimizer.learning_rate.assign(lr)
            since_lr = 0
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, history, best_epoch, stopped


def check_negative_shares(config: TrainConfig) -> None:
    """The hard, off-centre and mined shares split one pool of negatives; the rest is uniform."""
    shares = {"--hard-fraction": config.hard_fraction, "--offcentre-fraction": config.offcentre_fraction,
              "--mined-fraction": config.mined_fraction}
    for flag, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise InputError(f"{flag} must be between 0 and 1, not {share:g}")
    if sum(shares.values()) > 1.0 + 1e-9:
        raise InputError(f"{', '.join(shares)} add up to {sum(shares.values()):g}; they share the negatives, so at most 1")
    if config.negatives_per_positive <= 0:
        raise InputError(f"--negatives-per-positive must be above 0, not {config.negatives_per_positive:g}")


def default_sidecars(model_out: Path) -> tuple[Path, Path]:
    """MODEL.metrics.json and MODEL.curves.png beside MODEL.keras."""
    return model_out.with_suffix(".metrics.json"), model_out.with_suffix(".curves.png")


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Accuracy and loss per epoch, train and validation (like the paper's Fig. 3 and 4)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from viewer.atomic import atomic_output

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    for i, (key, label) in enumerate((("accuracy", "Accuracy"), ("loss", "Loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [h[key] for h in history], "o-", ms=3, label="train")
        if any(f"val_{key}" in h for h in history):
            ax.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "s-", ms=3, label="validation (held-out images)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(f"Model {label.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(path, force=True, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def run_training(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    metrics_out: str | Path | None = None,
    curves_out: str | Path | None = None,
    force: bool = False,
    heatmap: bool = True,
    command: str | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Train, then write the model, its metrics JSON and the curves PNG (all atomically)."""
    from viewer.atomic import atomic_output, check_writable
    from viewer.evaluate import evaluate_images, predict_patches
    from viewer.metrics import binary_metrics
    from viewer.model import BRECAHAD_RESOLUTION, append_model_metadata, file_sha256, import_keras

    out = Path(out)
    if out.suffix.lower() != ".keras":
        raise InputError("model file name must end in .keras", out)
    default_metrics, default_curves = default_sidecars(out)
    metrics_out = Path(metrics_out) if metrics_out else default_metrics
    curves_out = Path(curves_out) if curves_out else default_curves
    for path in (out, metrics_out, curves_out):
        check_writable(path, force=force)
    if config.epochs < 1:
        raise InputError("--epochs must be at least 1")
    if config.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    check_negative_shares(config)

    t_start = time.perf_counter()
    sampler, val, split, loaded = load_training_data(data, config, progress)
    val_images = loaded["val"] if (loaded is not None and heatmap) else None
    model, history, best_epoch, stopped = train_model(sampler, val, config, progress, val_images=val_images)
    train_seconds = time.perf_counter() - t_start

    held_out: dict[str, dict | None] = {}
    for part in ("val", "test"):
        if loaded is not None:
            if loaded[part]:
                _log(progress, f"evaluating on {len(loaded[part])} held-out {part} image(s)...")
                held_out[part] = evaluate_images(model, loaded[part], seed=config.seed, heatmap=heatmap, progress=progress)
            else:
                held_out[part] = None
        else:
            patches, _split, _seed = load_patches_npz(data)
            ps = patches[part]
            held_out[part] = binary_metrics(ps.y, predict_patches(model, ps.x)) if len(ps) else None
    for part, res in held_out.items():
        if res:
            hm = res.get("heatmap_auc")
            _log(progress, f"{part}: patch accuracy {res['accuracy']:.4f}  AUC {res['auc']:.4f}"
                 + (f"  heatmap AUC {hm:.4f}" if hm is not None else ""))

    with atomic_output(out, force=force, suffix=".keras") as tmp:
        model.save(tmp)
        # The resolution the model was trained at travels inside the file (see viewer.model).
        append_model_metadata(tmp, {"resolution": dict(BRECAHAD_RESOLUTION)})
    keras = import_keras()
    import tensorflow as tf

    metrics = {
        "model_file": out.name,
        "model_sha256": file_sha256(out),
        "architecture": "Table 1 ConvNet (viewer.model.build_convnet), 171,105 parameters",
        "command": command,
        "data": str(data),
        "config": asdict(config),
        "split": split,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stopped_early": stopped,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "held_out": held_out,
        "environment": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
    }
    with atomic_output(metrics_out, force=True, suffix=".json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    title = f"{out.name}: {len(split['train'])} train / {len(split['val'])} val images, seed {config.seed}"
    plot_curves(history, curves_out, title)
    _log(progress, f"wrote {out}, {metrics_out}, {curves_out}")
    return metrics

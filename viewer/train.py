"""Train the Table-1 ConvNet on BreCaHAD, with the split recorded inside the model file.

What is fixed (the paper): the architecture (:func:`viewer.model.build_convnet`), Adam, binary
cross-entropy, 32x32 RGB windows scaled to [0, 1], batch size 16 by default.

Two ways to split (``TrainConfig.split``):

* ``"images"`` (default): whole images are held out for validation and test
  (:func:`viewer.dataset.split_images` from ``split_seed``), so test figures say how the model
  does on tissue it has never seen;
* ``"patches"``: the paper's protocol, like for like: the evaluation patches of *every* image
  pooled and split 70/15/15 at random (:func:`viewer.dataset.split_patches`), the plain recipe
  below. Patches of one image fall on both sides, so its test figure is optimistic.

Two recipes (``TrainConfig.plain``):

* the **plain** recipe (the paper's): fixed patches (one per tumour point, as many non-tumour
  windows), the same every epoch, no augmentation, no early stopping or learning-rate schedule;
  the model is the last epoch's;
* the **fresh-window** recipe: every epoch draws *fresh* windows from the training images (tumour
  windows jittered by up to ``jitter`` px, ``negatives_per_positive`` non-tumour windows per
  point, a share of them hard, off-centre or mined), flips/rotations and colour/stain jitter;
  Keras's ReduceLROnPlateau halves the learning rate and EarlyStopping stops and restores the
  best weights by ``monitor`` on the validation data.

The model file records (``histoviewer.json``, :func:`viewer.model.read_model_metadata`) the split,
the data's fingerprint, the full configuration, the program version and git commit, so that
``histoviewer evaluate`` can only measure it on images it was not trained on.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from viewer import __version__
from viewer.dataset import (
    FixedSampler,
    ImageSampler,
    LabelledImage,
    PatchSet,
    SamplerConfig,
    concat_patchsets,
    dataset_fingerprint,
    evaluation_patches,
    find_dataset,
    load_labelled,
    load_patches_npz,
    split_images,
    split_patches,
    to_model_input,
)
from viewer.errors import InputError

SPLIT_KINDS = ("images", "patches")
MONITORS = ("val_loss", "val_auc", "val_heatmap_auc")
RECORD_FORMAT = "histoviewer-training-1"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    seed: int = 0
    """Seed of initialisation, sampling and augmentation (not of the split)."""
    split: str = "images"
    """``images`` (whole images held out) or ``patches`` (the paper's random patch split)."""
    split_seed: int = 0
    """Seed of the split alone, so a sampling seed can change while the test images stay put."""
    plain: bool = False
    """The paper's recipe: fixed patches, no augmentation, no early stopping or LR schedule."""
    learning_rate: float = 1e-3
    patience: int = 8
    """Early stopping: epochs without improvement of ``monitor`` (0 = off: all epochs, last weights)."""
    plateau: int = 3
    """Halve the learning rate after this many epochs without improvement (0 = never)."""
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


def plain_config(config: TrainConfig) -> TrainConfig:
    """The config with the plain recipe's settings, refusing fresh-window options it cannot honour.

    The record then says exactly what ran: no jitter, no hard negatives, no augmentation."""
    if not (config.plain or config.split == "patches"):
        return config
    for flag, value in (("--mined-fraction", config.mined_fraction), ("--offcentre-fraction", config.offcentre_fraction),
                        ("--stain-jitter", config.stain_sigma), ("--balance-images", config.balance_images),
                        ("--ema", config.ema)):
        if value:
            why = "--split patches" if config.split == "patches" else "--plain"
            raise InputError(f"{flag} belongs to the fresh-window recipe; {why} trains the paper's plain recipe")
    if config.split == "patches" and config.monitor == "val_heatmap_auc":
        raise InputError("--monitor val_heatmap_auc needs held-out images; with --split patches every image is in training")
    return replace(config, plain=True, augment=False, jitter=0.0, hard_fraction=0.0, negatives_per_positive=1.0,
                   colour_strength=0.0)


@dataclass
class TrainingData:
    """Everything one training run reads: what an epoch sees, validation, and the record."""

    sampler: object
    val: PatchSet
    split: dict
    """For the record: image names per part (image split), or per part the patches (patch split)."""
    val_images: list[LabelledImage] | None = None
    """Whole validation images (image split of a folder): for the validation heatmap AUC."""
    fingerprint: dict = field(default_factory=dict)


def _log(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def load_training_data(data: str | Path, config: TrainConfig, progress=None) -> TrainingData:
    """Read the data, split it as ``config`` says and build the epoch sampler."""
    data = Path(data)
    if data.suffix.lower() == ".npz":
        return _npz_training_data(data, config)
    entries = find_dataset(data)
    if config.max_images is not None:
        if config.max_images < 1:
            raise InputError("--max-images must be at least 1")
        entries = entries[: config.max_images]
    fingerprint = dataset_fingerprint(entries)
    t0 = time.perf_counter()
    if config.split == "patches":
        images = [load_labelled(e) for e in entries]
        pooled = concat_patchsets([evaluation_patches(img, config.seed) for img in images])
        parts = {part: _subset(pooled, idx) for part, idx in split_patches(len(pooled), config.split_seed).items()}
        _log(progress, f"loaded {len(entries)} images in {time.perf_counter() - t0:.1f} s: {len(pooled)} patches pooled, "
             f"{len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test patches")
        split = {"kind": "patches", "seed": config.split_seed, "images": [e.name for e in entries],
                 **{part: patch_record(ps) for part, ps in parts.items()}}
        return TrainingData(FixedSampler(parts["train"], augment=False), parts["val"], split, None, fingerprint)
    names = split_images([e.name for e in entries], config.split_seed)
    by_name = {e.name: e for e in entries}
    loaded = {part: [load_labelled(by_name[n]) for n in names[part]] for part in ("train", "val")}
    _log(progress, f"loaded {sum(map(len, loaded.values()))} images in {time.perf_counter() - t0:.1f} s: "
         f"{len(names['train'])} train, {len(names['val'])} val ({len(names['test'])} test images not opened)")
    val = concat_patchsets([evaluation_patches(img, config.seed) for img in loaded["val"]])
    if config.plain:
        train = concat_patchsets([evaluation_patches(img, config.seed) for img in loaded["train"]])
        sampler = FixedSampler(train, augment=False)
    else:
        sampler = ImageSampler(loaded["train"], SamplerConfig(
            negatives_per_positive=config.negatives_per_positive, jitter=config.jitter,
            hard_fraction=config.hard_fraction, augment=config.augment, colour_strength=config.colour_strength,
            stain_sigma=config.stain_sigma, balance_images=config.balance_images,
            offcentre_fraction=config.offcentre_fraction, mined_fraction=config.mined_fraction,
        ))
    split = {"kind": "images", "seed": config.split_seed, **names}
    return TrainingData(sampler, val, split, loaded["val"] or None, fingerprint)


def _npz_training_data(data: Path, config: TrainConfig) -> TrainingData:
    if config.split == "patches":
        raise InputError("--split patches pools the patches of a dataset folder; pass the folder, not a patch npz", data)
    patches, names, _seed = load_patches_npz(data)
    if len(patches["train"]) == 0:
        raise InputError("has no training patches", data)
    if config.mined_fraction or config.offcentre_fraction:
        raise InputError("--mined-fraction and --offcentre-fraction draw windows from whole images; "
                         "pass the dataset folder, not a patch npz", data)
    sampler = FixedSampler(patches["train"], augment=config.augment, colour_strength=config.colour_strength)
    from viewer.dataset import npz_split_seed

    fingerprint = {"npz": data.name, "bytes": data.stat().st_size}
    split = {"kind": "images", "seed": npz_split_seed(data), **names}
    return TrainingData(sampler, patches["val"], split, None, fingerprint)


def _subset(patches: PatchSet, index: np.ndarray) -> PatchSet:
    return PatchSet(patches.x[index], patches.y[index], patches.image_index[index], patches.top_left[index],
                    patches.names)


def patch_record(patches: PatchSet) -> dict[str, list[list[int]]]:
    """``{image name: [[x0, y0, label], ...]}``: the patches of one part, compact enough for the
    model file, and enough to cut them again from the images."""
    out: dict[str, list[list[int]]] = {}
    for i in range(len(patches)):
        name = patches.names[int(patches.image_index[i])]
        x0, y0 = (int(v) for v in patches.top_left[i])
        out.setdefault(name, []).append([x0, y0, int(patches.y[i])])
    return out


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


def _callbacks(keras, sampler, val: PatchSet, val_images, config: TrainConfig, progress, history: list[dict]):
    """Keras callbacks in the order they must run at the end of an epoch: EMA weights in, the
    validation AUCs into the logs, then the plateau and early stopping that read them, then the
    progress line."""
    from viewer import DEFAULT_STRIDE
    from viewer.metrics import heatmap_scores_and_labels, pooled_heatmap_auc, roc_auc

    xv, yv = to_model_input(val.x), val.y.astype(np.float32)
    uses_monitor = config.patience > 0 or config.plateau > 0

    class ValidationScores(keras.callbacks.Callback):
        """Exact rank AUC of the validation patches and, with images, the validation heatmap
        AUC (``viewer.metrics``, the definitions of ``histoviewer evaluate``), added to the logs."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            if len(yv):
                logs["val_auc"] = roc_auc(yv, np.asarray(self.model.predict(xv, batch_size=1024, verbose=0)).reshape(-1))
            if val_images:
                from viewer.heatmap import compute_heatmap

                def labelled(img):
                    hm = compute_heatmap(img.pixels, self.model)
                    return heatmap_scores_and_labels(hm, img.tumour_points, img.all_points,
                                                     ignored=img.ignored_windows(hm.shape, DEFAULT_STRIDE))

                logs["val_heatmap_auc"] = pooled_heatmap_auc(labelled(img) for img in val_images)
            if uses_monitor and not math.isfinite(logs.get(config.monitor, math.nan)):
                # Keras's callbacks only warn when their key is missing; an unmonitored run would
                # quietly train something other than what was asked for.
                raise InputError(f"--monitor {config.monitor} could not be computed at epoch {epoch + 1} "
                                 "(no validation data of that kind, or only one class in it)")

    class MineHardNegatives(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch > 0:  # the first epoch has no model worth mining with
                _mine_hard_negatives(self.model, sampler)

    class EpochRecord(keras.callbacks.Callback):
        """One history row and one progress line per epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.lr = float(self.model.optimizer.learning_rate.numpy())

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "learning_rate": self.lr}
            row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
            row["seconds"] = round(time.perf_counter() - self.t0, 2)
            history.append(row)
            text = "  ".join(f"{k.replace('heatmap_', 'hm_')} {row[k]:.4f}" for k in
                             ("loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "val_heatmap_auc") if k in row)
            _log(progress, f"epoch {epoch + 1:3d}/{config.epochs}  {text}  lr {self.lr:.2e}  {row['seconds']:.1f} s")

    mode = "min" if config.monitor == "val_loss" else "max"
    callbacks = []
    if config.ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(ValidationScores())
    if config.mined_fraction > 0:
        callbacks.append(MineHardNegatives())
    early = None
    if config.plateau > 0:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=config.monitor, mode=mode, factor=0.5, patience=config.plateau, min_delta=1e-4,
            min_lr=config.min_learning_rate))
    if config.patience > 0:
        early = keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience,
                                              min_delta=1e-4, restore_best_weights=True)
        callbacks.append(early)
    callbacks.append(EpochRecord())
    return callbacks, early, (xv, yv)


def _epoch_dataset(keras, sampler, rng: np.random.Generator, batch_size: int):
    """A Keras PyDataset that draws a fresh epoch from ``sampler`` at the start of every epoch.

    Keras fixes the number of batches per epoch from the first draw; a later draw of another
    size (a few windows more or less) is read cyclically up to that length."""

    class EpochWindows(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.first = True
            self._draw()
            self.n = len(self.y)
            self.batches = math.ceil(self.n / batch_size)

        def _draw(self):
            self.x, self.y = sampler.epoch(rng)
            self.w = balanced_sample_weights(self.y)

        def __len__(self):
            return self.batches

        def __getitem__(self, i):
            index = np.arange(i * batch_size, min((i + 1) * batch_size, self.n)) % len(self.y)
            return self.x[index], self.y[index], self.w[index]

        def on_epoch_begin(self):
            # Called by Keras after the callbacks' on_epoch_begin (so after mining).
            if not self.first:
                self._draw()
            self.first = False

    return EpochWindows()


def train_model(
    sampler, val: PatchSet, config: TrainConfig, progress=None, val_images=None, initial_weights=None
) -> tuple[object, list[dict], int, bool]:
    """Fit with Keras; returns (model with the chosen weights, history, chosen epoch, stopped early).

    With early stopping the model has the best epoch's weights by ``config.monitor``; without
    (``patience`` 0) it is the last epoch's, as in the paper."""
    from viewer.model import build_convnet, import_keras

    if config.monitor not in MONITORS:
        raise InputError(f"unknown --monitor {config.monitor!r}; choose one of {', '.join(MONITORS)}")
    if (config.patience > 0 or config.plateau > 0) and len(val) == 0:
        raise InputError(f"--monitor {config.monitor} needs validation data and this split has none; "
                         "use more images, or --patience 0 --plateau 0")
    if config.monitor == "val_heatmap_auc" and not val_images and (config.patience > 0 or config.plateau > 0):
        raise InputError("--monitor val_heatmap_auc needs validation images (a dataset folder, not an npz)")
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    model = build_convnet(dropout=config.dropout, seed=config.seed)
    if initial_weights is not None:  # fine-tuning (viewer.finetune): start from another model's weights
        model.set_weights(initial_weights)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, use_ema=config.ema, ema_momentum=0.99)
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng([config.seed, 7])
    history: list[dict] = []
    callbacks, early, (xv, yv) = _callbacks(keras, sampler, val, val_images, config, progress, history)
    dataset = _epoch_dataset(keras, sampler, rng, config.batch_size)
    model.fit(dataset, epochs=config.epochs, verbose=0, callbacks=callbacks,
              validation_data=(xv, yv) if len(yv) else None, validation_batch_size=1024)
    for row in history:
        row["n_train"] = dataset.n
    stopped = bool(early is not None and early.stopped_epoch > 0)
    if early is not None and early.best_weights is not None:
        best_epoch = int(early.best_epoch) + 1
        _log(progress, f"{'early stop; ' if stopped else ''}kept epoch {best_epoch} (best {config.monitor})")
    else:
        best_epoch = len(history)
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


def plot_curves(history: list[dict], path: str | Path, title: str = "", validation: str = "validation") -> None:
    """Accuracy and loss per epoch, train and validation (like the paper's Figures 3 and 4)."""
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
            ax.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "s-", ms=3, label=validation)
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


def program_record() -> dict:
    """Program name, version and, when run from a git checkout, its commit and whether tracked
    files had uncommitted changes (then the commit alone does not reproduce the model)."""
    record: dict = {"name": "histoviewer", "version": __version__, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return record
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return record
    record.update(git_commit=commit or None, git_dirty=bool(status.strip()))
    return record


def save_model(model, path: Path, record: dict, dropout: float) -> None:
    """Write the weights (no optimizer state: the file only serves inference, and is a third of
    the size) and the record into ``path``, atomically."""
    from viewer.atomic import atomic_output
    from viewer.model import append_model_metadata, build_convnet

    bare = build_convnet(dropout=dropout)
    bare.set_weights(model.get_weights())
    with atomic_output(path, force=True, suffix=".keras") as tmp:
        bare.save(tmp)
        append_model_metadata(tmp, record)


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
    """Train, then write the model (with its record), its metrics JSON and the curves PNG.

    Only validation figures are measured here: the test part is for ``histoviewer evaluate``,
    once, at the end of a study."""
    from viewer.atomic import check_writable
    from viewer.evaluate import evaluate_images, predict_patches
    from viewer.metrics import binary_metrics
    from viewer.model import BRECAHAD_RESOLUTION, file_sha256, import_keras

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
    if config.split not in SPLIT_KINDS:
        raise InputError(f"unknown --split {config.split!r}; choose one of {', '.join(SPLIT_KINDS)}")
    check_negative_shares(config)
    config = plain_config(config)
    program = program_record()  # before anything is written into the checkout

    t_start = time.perf_counter()
    data_in = load_training_data(data, config, progress)
    val_images = data_in.val_images if heatmap else None
    model, history, best_epoch, stopped = train_model(data_in.sampler, data_in.val, config, progress,
                                                      val_images=val_images)
    train_seconds = time.perf_counter() - t_start

    if val_images:
        _log(progress, f"evaluating on {len(val_images)} validation image(s)...")
        val_result = evaluate_images(model, val_images, seed=config.seed, heatmap=True)
    elif len(data_in.val):
        val_result = binary_metrics(data_in.val.y, predict_patches(model, data_in.val.x))
    else:
        val_result = None
    if val_result:
        hm = val_result.get("heatmap_auc")
        _log(progress, f"val: patch accuracy {val_result['accuracy']:.4f}  AUC {val_result['auc']:.4f}"
             + (f"  heatmap AUC {hm:.4f}" if hm is not None else ""))

    keras = import_keras()
    import tensorflow as tf

    environment = {"python": platform.python_version(), "keras": keras.__version__,
                   "tensorflow": tf.__version__, "numpy": np.__version__}
    record = {
        "format": RECORD_FORMAT,
        "resolution": dict(BRECAHAD_RESOLUTION),
        "split": data_in.split,
        "data": {"path": str(data), "fingerprint": data_in.fingerprint},
        "config": asdict(config),
        "command": command,
        "program": program,
        "environment": environment,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
    }
    save_model(model, out, record, config.dropout)
    split_summary = ({p: len(data_in.split[p]) for p in ("train", "val", "test")} if config.split == "images" else
                     {p: sum(map(len, data_in.split[p].values())) for p in ("train", "val", "test")})
    metrics = {
        "model_file": out.name,
        "model_sha256": file_sha256(out),
        "architecture": "Table 1 ConvNet (viewer.model.build_convnet), 171,105 parameters",
        "command": command,
        "program": program,
        "data": str(data),
        "config": asdict(config),
        "split_kind": config.split,
        "split_sizes": split_summary,
        "split": data_in.split if config.split == "images" else "recorded in the model file (histoviewer.json)",
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stopped_early": stopped,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "validation": val_result,
        "environment": environment,
    }
    from viewer.atomic import atomic_output

    with atomic_output(metrics_out, force=True, suffix=".json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    unit = "images" if config.split == "images" else "patches"
    title = (f"{out.name}: split by {unit} ({split_summary['train']} train / {split_summary['val']} val {unit}, "
             f"split seed {config.split_seed}), seed {config.seed}")
    plot_curves(history, curves_out, title, validation=f"validation (held-out {unit})")
    _log(progress, f"wrote {out}, {metrics_out}, {curves_out}")
    return metrics

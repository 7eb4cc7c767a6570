"""Fine-tuning: ``histoviewer train --init MODEL`` teaches an existing model a user's corrections.

What changes from :func:`viewer.train.run_training`:

* **Weights**: the network starts from MODEL's weights, not at random. MODEL must be the Table-1
  ConvNet (same layers, same weight shapes), else one line and exit 2.
* **Recipe** (``--recipe``): by default the base model's own (the plain recipe when MODEL records
  ``plain``, as the bundled model does; otherwise the fresh-window recipe of the options given),
  so only the labels change; ``plain`` or ``fresh`` choose one.
* **Defaults**: :data:`FINETUNE_LEARNING_RATE` (1e-4, a tenth of training from scratch) and
  :data:`FINETUNE_EPOCHS` (5, a sixth of the 30 the bundled model had), no early stopping and no
  learning-rate schedule. Why: a user's corrections are a few dozen points on one or a few
  images. At the full rate, or for 30 epochs, the network fits those few windows and forgets
  what it learned from the other images (measured in ``benchmarks/finetune.py``); a small step
  for a few passes moves the corrected windows and leaves the rest of the function nearly
  where it was. Early stopping would need validation images the user usually does not have.
* **The split is inherited, never redrawn** (:func:`finetune_split`): MODEL's validation and
  test images are not trained on (a folder that holds them trains on the others, and their
  figures stay honest); images MODEL never saw (the user's own) are training images; the new
  model records MODEL's training images *plus* the ones trained here as its training images,
  so ``histoviewer evaluate`` refuses all of them. Naming a held-out image of MODEL with
  ``--images`` is refused unless ``--allow-held-out`` says to train on it anyway; it is then
  recorded as a training image and leaves the held-out set. A MODEL trained on a patch split
  is refused (every image gave it training patches: nothing held out is left to inherit).
* **The record says where it came from**: ``finetuned_from`` in the model file and the metrics
  (MODEL's file name, SHA-256, its own command and commit), and the images trained on here.

The data may be a folder whose annotations the user edited (BreCaHAD layout; regions,
including ``ignore`` regions, from the ``<stem>.regions.geojson`` sidecar the viewer saves).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from viewer.dataset import (
    FixedSampler,
    ImageSampler,
    SamplerConfig,
    concat_patchsets,
    dataset_fingerprint,
    evaluation_patches,
    find_dataset,
    load_labelled,
)
from viewer.errors import InputError, ModelError

FINETUNE_EPOCHS = 5
"""Default epochs of a fine-tune (training from scratch: 30)."""
FINETUNE_LEARNING_RATE = 1e-4
"""Default Adam learning rate of a fine-tune (training from scratch: 1e-3)."""
RECIPES = ("base", "plain", "fresh")
"""``--recipe``: the base model's own (default), the plain one, or the fresh-window one."""


def base_model(init: str | Path) -> tuple[list[np.ndarray], dict, str, float]:
    """(weights, record, SHA-256, dropout) of the model to start from; ModelError (one line) when
    it is not a loadable Table-1 ConvNet."""
    from viewer.model import build_convnet, file_sha256, load_model, read_model_metadata

    init = Path(init)
    model = load_model(init)  # every file check and its one-line ModelError
    record = read_model_metadata(init)
    dropout = float(((record.get("config") or {}).get("dropout")) or 0.5)
    reference = build_convnet(dropout=dropout)
    ours = [tuple(w.shape) for w in reference.get_weights()]
    theirs = [tuple(w.shape) for w in model.get_weights()]
    kinds = [type(layer).__name__ for layer in reference.layers]
    if theirs != ours or [type(layer).__name__ for layer in model.layers] != kinds:
        raise ModelError("is not the Table-1 ConvNet (its layers or weight shapes differ), so it cannot be "
                         "fine-tuned here; --init needs a model written by 'histoviewer train'", init)
    return model.get_weights(), record, file_sha256(init), dropout


def finetune_split(
    base_record: dict, names: Sequence[str], train_names: Sequence[str] | None = None,
    allow_held_out: bool = False, base_path: str | Path = "--init model",
) -> tuple[dict, list[str], list[str]]:
    """(split record of the new model, images to train on here, notes) from MODEL's recorded split.

    ``names``: the images of the data folder; ``train_names``: the ones to train on (default:
    every image of the folder that MODEL did not hold out). See the module docstring for the
    rules; every refusal is one line."""
    names = sorted(set(names))
    split = base_record.get("split")
    notes: list[str] = []
    if isinstance(split, dict) and split.get("kind") == "patches":
        raise InputError("was trained on a random patch split, so every image gave it training patches and no "
                         "held-out image is left for a fine-tuned model; fine-tune a model trained with "
                         "--split images", base_path)
    if train_names is not None:
        unknown = sorted(set(train_names) - set(names))
        if unknown:
            raise InputError(f"--images names {unknown[0]}, which is not an annotated image of the data folder")
    if not isinstance(split, dict) or not all(p in split for p in ("train", "val", "test")):
        notes.append("the base model records no split: the fine-tuned model records only the images trained on "
                     "here, and its held-out figures must come from images neither model saw")
        chosen = sorted(set(train_names if train_names is not None else names))
        return {"kind": "images", "seed": None, "train": chosen, "val": [], "test": [], "trained_here": chosen,
                "base_split": None}, chosen, notes
    base_train = set(split["train"])
    held = {part: list(split[part]) for part in ("val", "test")}
    held_out = set(held["val"]) | set(held["test"])
    if train_names is None:
        chosen = [n for n in names if n not in held_out]
        kept = [n for n in names if n in held_out]
        if kept:
            notes.append(f"{len(kept)} image(s) of the folder are validation/test images of the base model and are "
                         "not trained on (they stay held out)")
    else:
        chosen = sorted(set(train_names))
        leaking = [n for n in chosen if n in held_out]
        if leaking and not allow_held_out:
            part = "test" if leaking[0] in held["test"] else "validation"
            raise InputError(f"{leaking[0]} is a {part} image of the base model; training on it would make its "
                             "held-out figures meaningless. Pass --allow-held-out to train on it anyway (it is then "
                             "recorded as a training image and 'evaluate' refuses it)")
        if leaking:
            notes.append(f"{len(leaking)} held-out image(s) of the base model trained on at the user's request "
                         f"(--allow-held-out): now training images ({', '.join(leaking)})")
            held = {part: [n for n in held[part] if n not in leaking] for part in held}
    if not chosen:
        raise InputError("has no image to fine-tune on: every annotated image is a validation or test image of "
                         "the base model (name one with --images and --allow-held-out to train on it anyway)")
    record = {"kind": "images", "seed": split.get("seed"), "train": sorted(base_train | set(chosen)),
              "val": held["val"], "test": held["test"], "trained_here": chosen,
              "base_split": "inherited from the --init model: its validation and test images stay held out"}
    return record, chosen, notes


def image_size_notes(base_record: dict, entries) -> list[str]:
    """A note when image files of names the base model recorded differ in size from those it was
    split on: split membership goes by name, so another copy of the dataset (e.g. BreCaHAD's
    uncompressed TIFFs) keeps its split, but the user is told. Edited annotations are expected to
    differ and are not mentioned."""
    recorded = {f["name"]: f for f in ((base_record.get("data") or {}).get("fingerprint") or {}).get("images", ())}
    now = {f["name"]: f for f in dataset_fingerprint(entries)["images"]}
    differ = sorted(n for n in now if n in recorded and now[n]["image_bytes"] != recorded[n]["image_bytes"])
    if not differ:
        return []
    return [f"{len(differ)} image(s) differ in size from the files the base model was split on (e.g. {differ[0]}); "
            "the split goes by image name, so check that they are the same images"]


def run_finetune(
    data: str | Path,
    out: str | Path,
    init: str | Path,
    config,
    images: Sequence[str] | None = None,
    allow_held_out: bool = False,
    recipe: str = "base",
    metrics_out: str | Path | None = None,
    curves_out: str | Path | None = None,
    force: bool = False,
    heatmap: bool = True,
    command: str | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Fine-tune ``init`` on the BreCaHAD-layout folder ``data``; write the model, metrics, curves.

    ``config`` is a :class:`viewer.train.TrainConfig` (its ``split``/``split_seed`` are not used:
    the split is inherited). Only validation figures are measured, on MODEL's validation images
    present in the folder."""
    from viewer.atomic import atomic_output, check_writable
    from viewer.evaluate import evaluate_images
    from viewer.model import file_sha256
    from viewer.train import (
        RECORD_FORMAT,
        TrainingData,
        _log,
        check_negative_shares,
        default_sidecars,
        plain_config,
        plot_curves,
        program_record,
        save_model,
        train_model,
    )

    out, data, init = Path(out), Path(data), Path(init)
    if out.suffix.lower() != ".keras":
        raise InputError("model file name must end in .keras", out)
    from viewer.model import bundled_model_path

    if out.resolve() == init.resolve():
        raise InputError("is the --init model itself; write the fine-tuned model to another file", out)
    if out.resolve() == bundled_model_path().resolve():
        raise InputError("is the bundled model, which is never overwritten; choose another file", out)
    default_metrics, default_curves = default_sidecars(out)
    metrics_out = Path(metrics_out) if metrics_out else default_metrics
    curves_out = Path(curves_out) if curves_out else default_curves
    for path in (out, metrics_out, curves_out):
        check_writable(path, force=force)
    if data.suffix.lower() == ".npz":
        raise InputError("fine-tuning reads whole images with their (edited) annotations and regions; pass a "
                         "BreCaHAD-layout folder, not a patch npz", data)
    if config.split != "images":
        raise InputError("--split patches cannot be combined with --init: a fine-tune inherits the image split "
                         "of the model it starts from")
    if config.epochs < 1:
        raise InputError("--epochs must be at least 1")
    if config.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if config.max_images is not None:
        raise InputError("--max-images cuts a folder before a new split; a fine-tune inherits its split, so name "
                         "its images with --images")
    check_negative_shares(config)
    entries = find_dataset(data)  # before TensorFlow: a wrong folder is refused at once
    weights, base_record, base_sha, dropout = base_model(init)
    split, chosen, notes = finetune_split(base_record, [e.name for e in entries], images, allow_held_out, init)
    # The fine-tune continues the base model's own objective (the paper's plain recipe for the
    # bundled model): only the labels the user corrected change. Switching recipe here cost the
    # validation images 0.008 heatmap AUC with or without corrections (benchmarks/finetune.py).
    if recipe not in RECIPES:
        raise InputError(f"unknown --recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    base_plain = bool((base_record.get("config") or {}).get("plain"))
    plain = {"base": config.plain or base_plain, "plain": True, "fresh": False}[recipe]
    config = plain_config(replace(config, dropout=dropout, plain=plain))
    notes += image_size_notes(base_record, entries)
    for note in notes:
        _log(progress, f"note: {note}")
    program = program_record()

    t0 = time.perf_counter()
    by_name = {e.name: e for e in entries}
    train_images = [load_labelled(by_name[n]) for n in chosen]
    val_images = [load_labelled(by_name[n]) for n in split["val"] if n in by_name]
    ignored = sum(len(img.ignore_regions) for img in train_images + val_images)
    _log(progress, f"fine-tuning {init.name} on {len(train_images)} image(s) "
         f"({sum(len(i.tumour_points) for i in train_images)} tumour points, {ignored} ignore region(s)); "
         f"{len(val_images)} validation image(s); loaded in {time.perf_counter() - t0:.1f} s")
    val = concat_patchsets([evaluation_patches(img, config.seed) for img in val_images])
    if config.plain:
        sampler = FixedSampler(concat_patchsets([evaluation_patches(img, config.seed) for img in train_images]),
                               augment=False)
    else:
        sampler = ImageSampler(train_images, SamplerConfig(
            negatives_per_positive=config.negatives_per_positive, jitter=config.jitter,
            hard_fraction=config.hard_fraction, augment=config.augment, colour_strength=config.colour_strength,
            stain_sigma=config.stain_sigma, balance_images=config.balance_images,
            offcentre_fraction=config.offcentre_fraction, mined_fraction=config.mined_fraction))
    fingerprint = dataset_fingerprint(entries)
    data_in = TrainingData(sampler, val, split, val_images or None, fingerprint)
    model, history, best_epoch, stopped = train_model(
        data_in.sampler, data_in.val, config, progress, val_images=val_images if heatmap else None,
        initial_weights=weights)
    train_seconds = time.perf_counter() - t0
    val_result = None
    if val_images:
        _log(progress, f"evaluating on {len(val_images)} validation image(s)...")
        val_result = evaluate_images(model, val_images, seed=config.seed, heatmap=heatmap)
        hm = val_result.get("heatmap_auc")
        _log(progress, f"val: patch accuracy {val_result['accuracy']:.4f}  AUC {val_result['auc']:.4f}"
             + (f"  heatmap AUC {hm:.4f}" if hm is not None else ""))

    base_program = base_record.get("program") or {}
    finetuned_from = {
        "file": init.name,
        "sha256": base_sha,
        "command": base_record.get("command"),
        "version": base_program.get("version"),
        "git_commit": base_program.get("git_commit"),
        "finetuned_from": base_record.get("finetuned_from"),  # a chain of fine-tunes stays traceable
    }
    import platform

    import tensorflow as tf

    from viewer.model import BRECAHAD_RESOLUTION, import_keras

    environment = {"python": platform.python_version(), "keras": import_keras().__version__,
                   "tensorflow": tf.__version__, "numpy": np.__version__}
    record = {
        "format": RECORD_FORMAT,
        "resolution": base_record.get("resolution") or dict(BRECAHAD_RESOLUTION),
        "split": split,
        "data": {"path": str(data), "fingerprint": fingerprint},
        "config": asdict(config),
        "command": command,
        "program": program,
        "environment": environment,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "finetuned_from": finetuned_from,
        "finetune": {"trained_here": chosen, "notes": notes,
                     "ignore_regions": {img.name: len(img.ignore_regions) for img in train_images if img.ignore_regions}},
    }
    save_model(model, out, record, config.dropout)
    metrics = {
        "model_file": out.name,
        "model_sha256": file_sha256(out),
        "architecture": "Table 1 ConvNet (viewer.model.build_convnet), 171,105 parameters",
        "finetuned_from": finetuned_from,
        "description": (f"Fine-tuned from {init.name} (SHA-256 {base_sha[:12]}…) for {len(history)} epoch(s) at "
                        f"learning rate {config.learning_rate:g} on {len(chosen)} image(s): {', '.join(chosen)}"),
        "command": command,
        "program": program,
        "data": str(data),
        "config": asdict(config),
        "split_kind": "images",
        "split_sizes": {p: len(split[p]) for p in ("train", "val", "test")},
        "split": split,
        "notes": notes,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stopped_early": stopped,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "validation": val_result,
        "environment": environment,
    }
    metrics["model_card"] = finetune_card(record)
    with atomic_output(metrics_out, force=True, suffix=".json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    plot_curves(history, curves_out, f"{out.name}: fine-tuned from {init.name} ({base_sha[:12]}) on "
                f"{len(chosen)} image(s), lr {config.learning_rate:g}", validation="validation (held-out images)")
    _log(progress, metrics["description"])
    _log(progress, f"wrote {out}, {metrics_out}, {curves_out}")
    return metrics


# ---------------------------------------------------------------------------------------------
# From the viewer: the open image with its edits, as a folder the fine-tune reads
# ---------------------------------------------------------------------------------------------

MAX_TEACHING_PIXELS = 50_000_000
"""Fine-tuning opens its images whole (microscope fields); larger images are refused."""


def original_dataset_for(image_path: str | Path) -> Path | None:
    """The BreCaHAD-layout folder an image belongs to (``DIR/images/<stem>.tif`` with
    ``DIR/groundTruth/``) when it holds other annotated images, else ``None``."""
    image_path = Path(image_path)
    root = image_path.parent.parent
    if image_path.parent.name != "images" or not (root / "groundTruth").is_dir():
        return None
    try:
        entries = find_dataset(root)
    except InputError:
        return None
    return root if any(e.name != image_path.stem for e in entries) else None


def _link(source: Path, target: Path) -> None:
    """A symbolic link (no copy of a large image), or a copy where links are not allowed."""
    import shutil

    try:
        target.symlink_to(source.resolve())
    except OSError:  # e.g. Windows without the privilege
        shutil.copy2(source, target)


def teaching_folder(
    work_dir: str | Path, image_path: str | Path, annotations, original: str | Path | None = None,
) -> tuple[Path, str, list[str]]:
    """Write the BreCaHAD-layout folder a fine-tune from the viewer reads; returns (folder, the
    image's name in it, the names of the original images added).

    The open image is linked, and its annotations *as on screen* (unsaved edits included) are
    written there with their regions sidecar: the user's own files are not touched, whether
    saved or not. With ``original`` (a dataset folder), its other images and annotation files
    (and sidecars) are linked beside it, so the fine-tune can also replay the original data."""
    from viewer.annotations import regions_sidecar_for, save_annotations

    folder = Path(work_dir)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "groundTruth").mkdir(exist_ok=True)
    image_path = Path(image_path)
    stem = image_path.stem
    _link(image_path, folder / "images" / image_path.name)
    save_annotations(annotations, folder / "groundTruth" / f"{stem}.json")
    added: list[str] = []
    if original is not None:
        for entry in find_dataset(original):
            if entry.name == stem:
                continue
            _link(entry.image_path, folder / "images" / entry.image_path.name)
            _link(entry.annotation_path, folder / "groundTruth" / entry.annotation_path.name)
            sidecar = regions_sidecar_for(entry.annotation_path)
            if sidecar.is_file():
                _link(sidecar, folder / "groundTruth" / sidecar.name)
            added.append(entry.name)
    return folder, stem, added


def teaching_images(base_record: dict, stem: str, originals: Sequence[str]) -> tuple[list[str], str | None]:
    """(the images to pass to ``--images``, why the open image needs ``--allow-held-out`` or
    ``None``): the open image, and those originals the base model trained on."""
    split = base_record.get("split") if isinstance(base_record.get("split"), dict) else {}
    held = {n: part for part in ("val", "test") for n in split.get(part, ())}
    chosen = [stem] + [n for n in originals if n not in held]
    why = None
    if stem in held:
        part = "test" if held[stem] == "test" else "validation"
        why = (f"{stem} is a {part} image of the current model. Training on it makes it a training image of the "
               "new model, and 'histoviewer evaluate' will no longer count it as held out.")
    return chosen, why


def teach_arguments(
    base: str | Path, folder: str | Path, out: str | Path, images: Sequence[str], epochs: int | None = None,
    allow_held_out: bool = False,
) -> list[str]:
    """The ``histoviewer`` arguments of a fine-tune from the viewer (the CLI's own defaults)."""
    args = ["train", "--init", str(base), "--data", str(folder), "--out", str(out), "--images", ",".join(images),
            "--no-heatmap", "--force"]
    if epochs is not None:
        args += ["--epochs", str(int(epochs))]
    if allow_held_out:
        args.append("--allow-held-out")
    return args


def finetune_card(record: dict) -> str | None:
    """Markdown for a fine-tuned model's card (About dialog, metrics): from which model, by
    SHA-256, on which images, how; ``None`` for a model that was not fine-tuned."""
    base = record.get("finetuned_from")
    if not isinstance(base, dict):
        return None
    config = record.get("config") or {}
    split = record.get("split") or {}
    done = (record.get("finetune") or {}).get("trained_here") or split.get("trained_here") or []
    lines = [
        "## Fine-tuned model",
        "",
        f"Fine-tuned from `{base.get('file')}` (SHA-256 `{base.get('sha256')}`) with `histoviewer train --init`, "
        f"{record.get('epochs_run', '?')} epoch(s) at learning rate {config.get('learning_rate', '?')}, "
        f"{'plain' if config.get('plain') else 'fresh-window'} recipe, on {len(done)} image(s): "
        f"{', '.join(done) or '–'}.",
        "",
        f"Held out (inherited from the base model, never trained on): {len(split.get('val', []))} validation and "
        f"{len(split.get('test', []))} test image(s). Command: `{record.get('command') or '–'}`.",
    ]
    notes = (record.get("finetune") or {}).get("notes") or []
    lines += [f"- {note}" for note in notes]
    if base.get("finetuned_from"):
        lines += ["", f"The base model was itself fine-tuned from `{base['finetuned_from'].get('file')}` "
                  f"(SHA-256 `{base['finetuned_from'].get('sha256')}`)."]
    return "\n".join(lines) + "\n"

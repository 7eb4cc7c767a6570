"""``histoviewer train``: train the Table-1 ConvNet with whole images held out."""

from __future__ import annotations

import argparse
import shlex
import sys

DESCRIPTION = """\
Train the paper's ConvNet (Table 1, unchanged) with Adam on a BreCaHAD-layout folder, or on an
npz written by 'histoviewer prepare'.

Split (--split, from --split-seed alone, recorded inside MODEL.keras):
  images (default): 70/15/15 by whole image (the split 'prepare' uses); validation and test
      images are never trained on, and 'histoviewer evaluate' refuses to measure the model on
      its training images.
  patches: the paper's protocol: one patch per tumour point and as many non-tumour windows from
      every image, pooled, split 70/15/15 at random; the plain recipe. Patches of one image fall
      on both sides of such a split, so its test figure is optimistic.

Recipes:
  --plain (implied by --split patches): the paper's: the evaluation patches of the training
      images, the same every epoch, no augmentation, no early stopping or learning-rate schedule
      (unless --patience/--plateau are given); the model is the last epoch's.
  otherwise: every epoch draws fresh windows from the training images: one per tumour point
      (centre jittered by up to --jitter px) and --negatives-per-positive non-tumour windows per
      point (a share --hard-fraction of them near annotated points), with flips/90-degree
      rotations and colour jitter. Keras's ReduceLROnPlateau halves the learning rate after
      --plateau epochs without improvement of --monitor on the validation data; EarlyStopping
      stops after --patience such epochs and restores the best weights.
Each epoch prints one progress line (train and validation loss/accuracy, val AUC, val heatmap AUC).
Only validation figures are measured; the test part is for 'histoviewer evaluate'.

Fine-tuning (--init MODEL): start from MODEL's weights instead of random ones, to teach it a
user's corrections (e.g. a folder whose annotations were edited in the viewer; 'ignore' regions
from the <stem>.regions.geojson sidecars take their windows out of both classes). Defaults change
to --learning-rate 1e-4 and --epochs 5, no early stopping or schedule: the corrections are few,
and a small step for a few passes learns them without forgetting the other images. The recipe is
MODEL's own (plain for the bundled model; --recipe plain|fresh chooses). The split is
inherited from MODEL: its validation and test images are not trained on (naming one with
--images is refused unless --allow-held-out), images it never saw are training images, and the
new model records MODEL's SHA-256 ('finetuned_from') with its training images plus these.

Writes MODEL.keras (with its record: split, data fingerprint, configuration, command, version and
git commit), MODEL.metrics.json (the same plus per-epoch history and validation figures) and
MODEL.curves.png (accuracy and loss per epoch, train and validation, like the paper's Figures 3
and 4), all atomically; --metrics-out / --curves-out choose other names.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the Table-1 ConvNet on BreCaHAD images (whole images, or the paper's patch split)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR|PATCHES.npz", help="BreCaHAD-layout folder or a prepared npz")
    parser.add_argument("--out", required=True, metavar="MODEL.keras", help="model file to write")
    parser.add_argument("--epochs", type=int, default=None, help="maximum number of epochs (default 30; 5 with --init)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16, as in the paper)")
    parser.add_argument("--split", choices=("images", "patches"), default="images",
                        help="hold out whole images (default) or split pooled patches at random like the paper")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split alone (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and augmentation (default 0)")
    parser.add_argument("--plain", action="store_true",
                        help="the paper's recipe on the image split: fixed patches, no augmentation, no early stopping or LR schedule")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="use only the first N images (sorted by name)")
    parser.add_argument("--patience", type=int, default=None, metavar="P",
                        help="early-stopping patience in epochs; 0 = off: all epochs, last weights (default 8; 0 with --plain)")
    parser.add_argument("--plateau", type=int, default=None,
                        help="halve the learning rate after this many epochs without improvement, 0 = off (default 3; 0 with --plain)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="initial Adam learning rate (default 1e-3; 1e-4 with --init)")
    parser.add_argument("--init", default=None, metavar="MODEL.keras",
                        help="fine-tune this model (e.g. the bundled one) instead of starting from random weights")
    parser.add_argument("--images", default=None, metavar="A,B",
                        help="with --init: fine-tune on these images of --data only (default: every image the "
                        "--init model did not hold out)")
    parser.add_argument("--recipe", choices=("base", "plain", "fresh"), default=None,
                        help="with --init: the base model's own recipe (default), the plain one or the fresh-window one")
    parser.add_argument("--allow-held-out", action="store_true",
                        help="with --init: allow --images to name validation/test images of the --init model "
                        "(they become training images of the new model)")
    parser.add_argument("--negatives-per-positive", type=float, default=1.0, help="non-tumour windows per tumour point per epoch (default 1)")
    parser.add_argument("--hard-fraction", type=float, default=0.25, help="share of negatives drawn near annotated points (default 0.25)")
    parser.add_argument("--offcentre-fraction", type=float, default=0.0, metavar="F",
                        help="share of negatives centred 12-24 px from a tumour point, so the model learns tumour at the window centre (default 0)")
    parser.add_argument("--mined-fraction", type=float, default=0.0, metavar="F",
                        help="share of negatives mined each epoch from the clear windows the current model scores highest (default 0)")
    parser.add_argument("--jitter", type=float, default=6.0, help="max offset (px) of tumour window centres from the point (default 6)")
    parser.add_argument("--colour-jitter", type=float, default=1.0, metavar="S", help="strength of the colour/stain jitter, 0 = off (default 1: gains +-6%%, offsets +-0.03, contrast +-10%%)")
    parser.add_argument("--monitor", choices=("val_loss", "val_auc", "val_heatmap_auc"), default="val_loss",
                        help="validation quantity for early stopping, LR plateau and best-weights restore (default val_loss)")
    parser.add_argument("--ema", action="store_true", help="keep and save an exponential moving average of the weights (Adam use_ema, momentum 0.99)")
    parser.add_argument("--stain-jitter", type=float, default=0.0, metavar="SIGMA", help="HED stain jitter: scale H/E/D concentrations by 1 +- SIGMA per patch (default 0 = off)")
    parser.add_argument("--balance-images", action="store_true", help="every training image gives the same number of tumour windows per epoch")
    parser.add_argument("--no-augment", action="store_true", help="no flips/rotations/colour jitter")
    parser.add_argument("--no-heatmap", action="store_true", help="skip the held-out heatmap AUC at the end (faster)")
    parser.add_argument("--metrics-out", default=None, metavar="JSON", help="metrics file (default MODEL.metrics.json)")
    parser.add_argument("--curves-out", default=None, metavar="PNG", help="training curves (default MODEL.curves.png)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viewer.train import TrainConfig, run_training

    from viewer.errors import InputError

    plain = args.plain or args.split == "patches"
    for flag, value in (("--patience", args.patience), ("--plateau", args.plateau)):
        if value is not None and value < 0:
            raise InputError(f"{flag} must be 0 (off) or more, not {value}")
    finetune = args.init is not None
    if not finetune and (args.images is not None or args.allow_held_out or args.recipe is not None):
        raise InputError("--images, --allow-held-out and --recipe choose how a fine-tune trains; they need --init MODEL")
    if finetune:
        from viewer.finetune import FINETUNE_EPOCHS, FINETUNE_LEARNING_RATE

        epochs = FINETUNE_EPOCHS if args.epochs is None else args.epochs
        learning_rate = FINETUNE_LEARNING_RATE if args.learning_rate is None else args.learning_rate
        patience = 0 if args.patience is None else args.patience
        plateau = 0 if args.plateau is None else args.plateau
    else:
        epochs = 30 if args.epochs is None else args.epochs
        learning_rate = 1e-3 if args.learning_rate is None else args.learning_rate
        patience = args.patience if args.patience is not None else (0 if plain else 8)
        plateau = args.plateau if args.plateau is not None else (0 if plain else 3)
    config = TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        split=args.split,
        split_seed=args.split_seed,
        plain=plain,
        learning_rate=learning_rate,
        patience=patience,
        plateau=plateau,
        max_images=args.max_images,
        negatives_per_positive=args.negatives_per_positive,
        hard_fraction=args.hard_fraction,
        jitter=args.jitter,
        augment=not args.no_augment,
        colour_strength=args.colour_jitter,
        monitor=args.monitor,
        stain_sigma=args.stain_jitter,
        balance_images=args.balance_images,
        offcentre_fraction=args.offcentre_fraction,
        mined_fraction=args.mined_fraction,
        ema=args.ema,
    )
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    argv = sys.argv[1:]
    command = "histoviewer " + " ".join(shlex.quote(a) for a in argv[argv.index("train"):]) if "train" in argv else None
    if finetune:
        from viewer.finetune import run_finetune

        images = [n.strip() for n in args.images.split(",") if n.strip()] if args.images is not None else None
        if images is not None and not images:
            raise InputError("--images needs at least one image name")
        metrics = run_finetune(
            args.data, args.out, args.init, config, images=images, allow_held_out=args.allow_held_out,
            recipe=args.recipe or "base",
            metrics_out=args.metrics_out, curves_out=args.curves_out, force=args.force,
            heatmap=not args.no_heatmap, command=command, progress=progress,
        )
    else:
        metrics = run_training(
            args.data, args.out, config,
            metrics_out=args.metrics_out, curves_out=args.curves_out, force=args.force,
            heatmap=not args.no_heatmap, command=command, progress=progress,
        )
    res = metrics["validation"]
    if res:
        hm = res.get("heatmap_auc")
        print(f"val: accuracy {res['accuracy']:.4f}  auc {res['auc']:.4f}"
              + (f"  heatmap_auc {hm:.4f}" if hm is not None else ""))
    print(f"wrote {args.out}")
    return 0

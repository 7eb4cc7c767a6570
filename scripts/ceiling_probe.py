"""How far can *any* 32x32-window classifier go on this data? A capacity probe, not a product.

The bundled model (Table 1, 171,105 parameters) reaches a held-out heatmap AUC of about 0.97
and does no better on its own *training* images, which points at the labels (unannotated tumour
nuclei counted as negatives) rather than at over-fitting. This script trains a much larger
VGG-style network (batch norm, six 3x3 convolutions, ~290k parameters and ~9x the multiply-adds of
Table 1) with exactly the same sampler, split, augmentation and selection rule, and prints the
same metrics as ``histoviewer evaluate`` on the train, val and test images. If the big network
lands where Table 1 does, the ceiling is the data, not the architecture.

Run from the repository root (about 15 minutes on 2 CPU cores)::

    python scripts/ceiling_probe.py --data ../shared/data/brecahad-subset [--epochs 30]

Nothing it trains is saved or shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_probe_network(dropout: float = 0.5, seed: int | None = None):
    from viewer.model import import_keras

    keras = import_keras()
    layers = keras.layers

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input(shape=(32, 32, 3))
    x = block(inputs, 32)
    x = layers.MaxPooling2D(2)(x)
    x = block(x, 64)
    x = layers.MaxPooling2D(2)(x)
    x = block(x, 128)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="ceiling_probe")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/brecahad-subset")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monitor", default="val_auc", choices=("val_loss", "val_auc", "val_heatmap_auc"),
                        help="selection rule (val_heatmap_auc, the bundled model's, costs ~40 s an epoch here)")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--json-out", default=None, help="also write the results here")
    args = parser.parse_args()

    import viewer.model
    from viewer.evaluate import evaluate_images
    from viewer.train import TrainConfig, load_training_data, train_model

    # The bundled model's recipe, with the probe network swapped in for Table 1.
    config = TrainConfig(
        epochs=args.epochs, patience=args.patience, plateau=4, monitor=args.monitor, ema=True, jitter=3.0,
        balance_images=True, stain_sigma=0.1, seed=args.seed,
    )
    viewer.model.build_convnet = build_probe_network
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    data = load_training_data(args.data, config, log)
    val_images = data.val_images if args.monitor == "val_heatmap_auc" else None
    model, history, best_epoch, _ = train_model(data.sampler, data.val, config, log, val_images=val_images)
    log(f"probe network: {model.count_params():,} parameters; best epoch {best_epoch}; "
        f"{time.perf_counter() - t0:.0f} s")
    from viewer.dataset import find_dataset, load_labelled, select_entries

    entries = find_dataset(args.data)
    results = {}
    for part in ("train", "val", "test"):
        images = [load_labelled(e) for e in select_entries(entries, data.split[part], args.data)]
        res = evaluate_images(model, images, seed=args.seed)
        results[part] = {k: res[k] for k in ("accuracy", "auc", "heatmap_auc", "confusion")}
        results[part]["heatmap_auc_per_image"] = res.get("heatmap_auc_per_image")
        print(f"{part:5s}  patch accuracy {res['accuracy']:.4f}  patch AUC {res['auc']:.4f}  "
              f"heatmap AUC {res['heatmap_auc']:.4f}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"parameters": model.count_params(), "best_epoch": best_epoch,
                                                   "history": history, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

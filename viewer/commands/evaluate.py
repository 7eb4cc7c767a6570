"""``histoviewer evaluate``: patch metrics and heatmap AUC of a model on held-out images."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Measure a model on BreCaHAD-layout images.

Which images (--split):
  test (default) / val: the split recorded beside the model - MODEL.metrics.json, or
      training_metrics.json naming the model file (the bundled model ships one) - if present;
      otherwise the 70/15/15 split recomputed from --seed and the sorted image names of --data
      (the same function 'train' and 'prepare' use). The output says which was used.
  all: every annotated image in --data.

Patch metrics: one 32x32 patch per tumour point (centred; clamped at the border) and the same
number of seeded non-tumour windows (no annotated point of any class inside the window expanded
by 4 px); accuracy at threshold 0.5, ROC AUC, confusion matrix [[TN, FP], [FN, TP]].
Heatmap AUC: over the stride-8 heatmap windows of every image: positives are windows whose
centre lies within 8 px of a tumour point, negatives windows with no annotated point (any class)
inside the window expanded by 4 px; all other windows are ignored. --precision bfloat16 computes
those heatmaps in bfloat16 (where the CPU has it), to see what it changes; patch metrics are
always float32.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="patch accuracy/AUC and heatmap AUC of a model on held-out images",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="BreCaHAD-layout folder (images/, groundTruth/)")
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to evaluate (default: the bundled model)")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test", help="which images (default test; see above)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the non-tumour sampling, and of the split when none is recorded (default 0)")
    parser.add_argument("--no-heatmap", action="store_true", help="skip the heatmap AUC (faster)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    from viewer.commands.heatmap import add_compute_options

    add_compute_options(parser)  # --precision (of the heatmap AUC's heatmaps) and --threads
    parser.set_defaults(func=run)


def run(args) -> int:
    from viewer.commands.heatmap import check_threads
    from viewer.evaluate import run_evaluation

    check_threads(args.threads)
    progress = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    report = run_evaluation(args.data, args.model, split=args.split, seed=args.seed,
                            heatmap=not args.no_heatmap, progress=progress,
                            precision=args.precision, threads=args.threads)
    if args.json:
        print(json.dumps(report))
        return 0
    tn_fp, fn_tp = report["confusion"]
    print(f"model:       {report['model']} (sha256 {report['model_sha256'][:12]})")
    print(f"images:      {', '.join(report['images'])}")
    print(f"             ({report['split_source']})")
    print(f"patches:     {report['n_positive']} tumour + {report['n_negative']} non-tumour")
    print(f"accuracy:    {_fmt(report['accuracy'])}  (threshold 0.5)")
    print(f"auc:         {_fmt(report['auc'])}")
    print(f"confusion:   TN {tn_fp[0]}  FP {tn_fp[1]}  FN {fn_tp[0]}  TP {fn_tp[1]}")
    hm = report.get("heatmap_auc")
    if hm is not None:
        w = report["heatmap_windows"]
        print(f"heatmap_auc: {hm:.4f}  ({w['positive']} positive, {w['negative']} negative stride-8 windows, "
              f"{report['heatmap_precision']})")
    elif report.get("heatmap_note"):
        print(f"heatmap_auc: n/a ({report['heatmap_note']})")
    for note in report.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

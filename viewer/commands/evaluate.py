"""``histoviewer evaluate``: patch metrics and heatmap AUC of a model on held-out images."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Measure a model on BreCaHAD-layout images it was not trained on.

Which images: the split recorded inside the model file by 'histoviewer train' (image names per
part, the data's fingerprint, the seeds); nothing is recomputed from seeds.
  --split test (default) / val: that part of the recorded split. Refused (one line, exit 2) when
      the model records no split, when --data lacks one of those images, or when one of them is
      a training image of the model.
  --split all: every annotated image of --data, training images included; labelled as such.
  --images A,B,...: just these images (names without extension); refused if any is a training
      image of the model.
A model trained with --split patches (the paper's protocol) is measured on its recorded test
(or val) patches: patch metrics only, since its images also gave training patches.

Patch metrics: one 32x32 patch per tumour point (centred; clamped at the border) and the same
number of non-tumour windows seeded by --seed (no annotated point of any class inside the window
expanded by 4 px); accuracy at threshold 0.5, ROC AUC, confusion matrix [[TN, FP], [FN, TP]].
Heatmap AUC: over the stride-8 heatmap windows of every image: positives are windows whose
centre lies within 8 px of a tumour point, negatives windows with no annotated point (any class)
inside the window expanded by 4 px; all other windows are ignored. Pooled over the images, and
per image.
Ignore regions (class 'ignore', from each image's <stem>.regions.geojson sidecar) count as
neither label: their tumour points give no patch, no non-tumour patch and no heatmap window
centred inside one is counted. --precision bfloat16 computes those heatmaps in bfloat16 (where the CPU has it), to
see what it changes; patch metrics are always float32.
Intervals: 95 % percentile bootstrap over images (the independent units; a patch-split model:
over patches), --resamples resamples (default 2000) seeded by --seed. With 4 images the
interval is coarse: only 35 distinct resamples exist.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="patch accuracy/AUC, heatmap AUC and bootstrap intervals of a model on held-out images",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="BreCaHAD-layout folder (images/, groundTruth/)")
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to evaluate (default: the bundled model)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", choices=("test", "val", "all"), default="test", help="which images (default test; see above)")
    which.add_argument("--images", default=None, metavar="NAME[,NAME...]", help="just these images (not training images of the model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the non-tumour patches and the bootstrap (default 0)")
    parser.add_argument("--resamples", type=int, default=2000, metavar="N", help="bootstrap resamples, 0 = no intervals (default 2000)")
    parser.add_argument("--no-heatmap", action="store_true", help="skip the heatmap AUC (faster)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    from viewer.commands.heatmap import add_compute_options

    add_compute_options(parser)  # --precision (of the heatmap AUC's heatmaps) and --threads
    parser.set_defaults(func=run)


def run(args) -> int:
    from viewer.commands.heatmap import check_threads
    from viewer.errors import InputError
    from viewer.evaluate import run_evaluation

    check_threads(args.threads)
    progress = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    images = None
    if args.images is not None:
        images = [name.strip() for name in args.images.split(",") if name.strip()]
        if not images:
            raise InputError("--images needs at least one image name")
    report = run_evaluation(args.data, args.model, split=args.split, seed=args.seed,
                            heatmap=not args.no_heatmap, progress=progress,
                            precision=args.precision, threads=args.threads, images=images,
                            resamples=args.resamples)
    if args.json:
        print(json.dumps(report))
        return 0
    tn_fp, fn_tp = report["confusion"]
    trained = report.get("model_trained_at") or {}
    at = f", trained by histoviewer {trained.get('version')}" if trained.get("version") else ""
    at += f" at commit {trained['git_commit'][:10]}" if trained.get("git_commit") else ""
    print(f"model:       {report['model']} (sha256 {report['model_sha256'][:12]}{at})")
    print(f"images:      {', '.join(report['images'])}")
    print(f"             ({report['split_source']})")
    print(f"patches:     {report['n_positive']} tumour + {report['n_negative']} non-tumour")
    print(f"accuracy:    {_fmt(report['accuracy'])}  (threshold 0.5)")
    print(f"auc:         {_fmt(report['auc'])}")
    print(f"confusion:   TN {tn_fp[0]}  FP {tn_fp[1]}  FN {fn_tp[0]}  TP {fn_tp[1]}")
    hm = report.get("heatmap_auc")
    if hm is not None:
        w = report["heatmap_windows"]
        ignored = f", {w['in_ignore_regions']} in ignore regions" if w.get("in_ignore_regions") else ""
        print(f"heatmap_auc: {hm:.4f}  ({w['positive']} positive, {w['negative']} negative stride-8 windows{ignored}, "
              f"{report['heatmap_precision']})")
    elif report.get("heatmap_note"):
        print(f"heatmap_auc: n/a ({report['heatmap_note']})")
    intervals = report.get("intervals")
    if intervals:
        spans = ", ".join(f"{key} {lo:.4f}-{hi:.4f}" for key in ("accuracy", "auc", "heatmap_auc")
                          if intervals.get(key) for lo, hi in [intervals[key]])
        print(f"95% CI:      {spans}  (bootstrap over {intervals['units']} {_PLURAL[intervals['unit']]}, "
              f"{intervals['resamples']} resamples, seed {intervals['seed']})")
    for name, figures in (report.get("per_image") or {}).items():
        text = "  ".join(f"{k} {_fmt(figures.get(k))}" for k in ("accuracy", "auc", "heatmap_auc") if k in figures)
        print(f"  {name}: {text}  ({figures['n_patches']} patches)")
    for note in report.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return 0


_PLURAL = {"image": "images", "patch": "patches"}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

"""``histoviewer prepare``: cut BreCaHAD images into labelled 32x32 patches (npz)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Cut the annotated images of a BreCaHAD-layout folder (images/*.tif + groundTruth/*.json) into
32x32 patches and write them as a compressed npz.

Tumour patches: one per annotated tumour point, centred on it; points closer than 16 px to the
border are shifted inside (the window is clamped to the image, the point stays inside it).
Non-tumour patches: as many per image as tumour patches, drawn (seeded) among windows with no
annotated point of ANY class inside the window expanded by 4 px.
Split: 70/15/15 by IMAGE (never by patch), from --split-seed and the sorted image names; the
same split 'histoviewer train' uses with the same --split-seed.

npz keys per split S in train/val/test: x_S (N,32,32,3) uint8 - divide by 255 for the model,
which takes [0,1] floats; y_S (N,) uint8, 1 = tumour; names_S (image names); image_S (index into
names_S per patch); top_left_S (x0, y0 per patch); plus seed, split_seed, format, pixel_scale (=255).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="cut BreCaHAD images into labelled patches (npz), split by image",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="BreCaHAD-layout folder (images/, groundTruth/)")
    parser.add_argument("--out", required=True, metavar="PATCHES.npz", help="output file (written atomically)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the image split alone (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the non-tumour sampling (default 0)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="use only the first N images (sorted by name)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viewer.atomic import check_writable
    from viewer.dataset import SPLITS, prepare_patches, save_patches_npz
    from viewer.errors import InputError

    if not str(args.out).lower().endswith(".npz"):
        raise InputError("output file name must end in .npz", args.out)
    if args.max_images is not None and args.max_images < 1:
        raise InputError("--max-images must be at least 1")
    check_writable(args.out, force=args.force)
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    patches, split = prepare_patches(args.data, seed=args.seed, max_images=args.max_images, progress=progress,
                                     split_seed=args.split_seed)
    save_patches_npz(args.out, patches, split, args.seed, force=args.force, split_seed=args.split_seed)
    for part in SPLITS:
        ps = patches[part]
        print(f"{part}: {len(split[part])} images, {int(ps.y.sum())} tumour + {int((ps.y == 0).sum())} non-tumour patches")
    print(f"wrote {args.out}")
    return 0

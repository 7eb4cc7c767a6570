"""``histoviewer heatmap``: write an image's tumour-probability heatmap plus a JSON sidecar."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from viewer import DEFAULT_STRIDE
from viewer.errors import InputError

DESCRIPTION = """\
Compute the ConvNet's tumour-probability heatmap of one image and write it as a float32 array
(.npy, or a single-channel float32 TIFF) plus OUT.json beside it.

Cell (r, c) is P(tumour) of the 32x32 window whose top-left pixel is (stride*c, stride*r); it
belongs to the window centre (stride*c + 16, stride*r + 16). For an HxW image the array has
shape ((H - 32)//stride + 1, (W - 32)//stride + 1). The sidecar records this geometry, the image
size, the SHA-256 of the model file and the program version.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "heatmap",
        help="write the tumour-probability heatmap of an image (.npy/.tif + JSON sidecar)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (TIFF, JPEG or PNG)")
    parser.add_argument("--out", required=True, metavar="OUT.npy", help="output heatmap file (.npy, .tif or .tiff)")
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE, help=f"step between windows in pixels (default {DEFAULT_STRIDE})")
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to use (default: the bundled model)")
    parser.add_argument("--format", choices=("npy", "tiff"), default=None, dest="fmt",
                        help="output format (default: from the --out suffix)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--force", action="store_true", help="overwrite OUT and its sidecar if they exist")
    parser.set_defaults(func=run)


def check_stride(stride: int) -> int:
    """Refuse a stride the user cannot mean (exit 2, one line)."""
    if stride < 1:
        raise InputError(f"--stride must be at least 1 pixel (got {stride})")
    if stride > 1024:
        raise InputError(f"--stride must be at most 1024 pixels (got {stride})")
    return stride


def model_file(model: str | None) -> Path:
    """The model file the command will use: ``--model`` or the bundled model."""
    from viewer.model import bundled_model_path

    return Path(model) if model is not None else bundled_model_path()


def progress(tiles: Iterable, total: int, *, label: str, quiet: bool) -> Iterator:
    """Pass ``tiles`` through, reporting progress on stderr unless ``quiet``.

    On a terminal: one line updated in place. Otherwise (pipes, logs): a start line and a final
    line with the time taken, so logs stay short. Nothing is printed for single-tile jobs.
    """
    stream = sys.stderr
    show = not quiet and total > 1
    tty = show and stream.isatty()
    start = time.perf_counter()
    done = 0
    if show and not tty:
        print(f"{label}: {total} tiles...", file=stream, flush=True)
    for item in tiles:
        done += 1
        if tty:
            print(f"\r{label}: {done}/{total} tiles ({100 * done // total}%)", end="", file=stream, flush=True)
        yield item
    if show:
        prefix = "\r" if tty else ""
        print(f"{prefix}{label}: {done}/{total} tiles in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


def compute_with_progress(pixels, model, stride: int, *, quiet: bool, label: str = "heatmap"):
    """Compute a whole heatmap through the engine, with progress on stderr; returns (array, method)."""
    import numpy as np

    from viewer.heatmap import heatmap_method, iter_heatmap_tiles, plan_heatmap

    plan = plan_heatmap(pixels.shape[0], pixels.shape[1], stride)
    out = np.full(plan.shape, np.nan, dtype=np.float32)
    for rows, cols, probabilities in progress(iter_heatmap_tiles(pixels, model, stride, plan=plan), len(plan), label=label, quiet=quiet):
        out[rows, cols] = probabilities
    return out, heatmap_method(model, stride)


def run(args) -> int:
    from viewer.heatmap import check_heatmap_output, save_heatmap
    from viewer.model import load_model
    from viewer.slide import open_slide

    stride = check_stride(args.stride)
    out = Path(args.out)
    check_heatmap_output(out, args.fmt, force=args.force)  # before any long work
    path = model_file(args.model)
    slide = open_slide(args.image)
    model = load_model(path)
    try:
        heatmap, method = compute_with_progress(slide.read_all(), model, stride, quiet=args.quiet)
    except InputError as exc:  # e.g. an image smaller than one window
        raise InputError(str(exc), args.image) from exc
    array_path, side = save_heatmap(
        heatmap, out, stride=stride, image_shape=(slide.height, slide.width), model_path=path,
        fmt=args.fmt, force=args.force, image_path=slide.path, method=method,
    )
    rows, cols = heatmap.shape
    print(f"wrote {array_path} ({rows}x{cols} float32, stride {stride}) and {side}")
    return 0

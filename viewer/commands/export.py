"""``histoviewer export``: the image with heatmap and annotation markers, at full resolution.

Uses :func:`viewer.overlay.compose`, the same function as the viewer's Export Overlay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viewer import DEFAULT_STRIDE
from viewer.errors import InputError

DESCRIPTION = """\
Write a full-resolution figure: the image, the tumour-probability heatmap blended on top and
the annotated points as rings in their class colours (optionally with a legend panel, which is
added on the right and makes the figure wider). The output type follows the suffix of --out:
.png, .tif/.tiff (deflate) or .jpg.

Annotations: by default ('auto') the BreCaHAD ground truth of the image is used if it is found
(groundTruth/<name>.json beside images/, or <name>.json next to the image); give a file to use
another one, or --no-annotations for none.
"""


def register(subparsers) -> None:
    from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP
    from viewer.overlay import OverlayStyle

    defaults = OverlayStyle()
    parser = subparsers.add_parser(
        "export",
        help="write the image with heatmap and annotations as a PNG/TIFF figure",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (TIFF, JPEG or PNG)")
    parser.add_argument("--out", required=True, metavar="OVERLAY.png", help="output figure (.png, .tif, .tiff or .jpg)")
    parser.add_argument("--annotations", default="auto", metavar="JSON|auto",
                        help="annotation file, or 'auto' to look for the image's ground truth (default auto)")
    parser.add_argument("--no-heatmap", action="store_true", help="leave the heatmap out (no model is loaded)")
    parser.add_argument("--no-annotations", action="store_true", help="leave the annotation markers out")
    parser.add_argument("--opacity", type=float, default=defaults.opacity, help=f"heatmap opacity in [0, 1] (default {defaults.opacity})")
    parser.add_argument("--colormap", default=DEFAULT_COLORMAP, metavar="NAME",
                        help=f"heatmap colours: {', '.join(COLORMAPS)} (default {DEFAULT_COLORMAP})")
    parser.add_argument("--threshold", type=float, default=defaults.threshold,
                        help="hide heatmap cells with probability below this, in [0, 1] (default 0: show all)")
    parser.add_argument("--classes", default=None, metavar="NAME[,NAME...]",
                        help="draw only these annotation classes, e.g. tumor,mitosis (default: all; "
                        "the GUI's per-class toggles give the same result)")
    parser.add_argument("--legend", action="store_true", help="add a legend panel on the right (colour bar and classes)")
    parser.add_argument("--marker-radius", type=int, default=defaults.marker_radius, help=f"ring radius in pixels (default {defaults.marker_radius})")
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE, help=f"heatmap step in pixels (default {DEFAULT_STRIDE})")
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to use (default: the bundled model)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(func=run)


def style_from_args(args):
    """Validate the styling options (exit 2 with one line if out of range) -> OverlayStyle."""
    import math

    from viewer.colormaps import COLORMAPS
    from viewer.commands.heatmap import check_stride
    from viewer.overlay import OverlayStyle

    for option, value in (("--opacity", args.opacity), ("--threshold", args.threshold)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InputError(f"{option} must be between 0 and 1 (got {value:g})")
    if args.colormap not in COLORMAPS:
        raise InputError(f"unknown --colormap {args.colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if not 1 <= args.marker_radius <= 500:
        raise InputError(f"--marker-radius must be between 1 and 500 pixels (got {args.marker_radius})")
    return OverlayStyle(
        show_heatmap=not args.no_heatmap,
        show_annotations=not args.no_annotations,
        opacity=args.opacity,
        colormap=args.colormap,
        threshold=args.threshold,
        marker_radius=args.marker_radius,
        legend=args.legend,
        stride=check_stride(args.stride),
        visible_classes=_visible_classes(args.classes),
    )


def _visible_classes(text: str | None) -> tuple[str, ...] | None:
    """Parse ``--classes``: None keeps every class; names are checked only for emptiness, since
    files may carry classes of their own beyond BreCaHAD's seven."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise InputError("--classes needs at least one class name, e.g. --classes tumor,mitosis")
    return names


def run(args) -> int:
    from viewer.atomic import check_writable
    from viewer.commands.heatmap import compute_with_progress, model_file
    from viewer.overlay import compose, overlay_format, save_overlay
    from viewer.slide import open_slide

    style = style_from_args(args)
    out = Path(args.out)
    overlay_format(out)
    check_writable(out, force=args.force)  # before any long work
    slide = open_slide(args.image)

    annotations = None
    notes = []  # printed only after success, so an error stays the one line on stderr
    if style.show_annotations:
        from viewer.annotations import find_annotations_for, load_annotations

        if args.annotations == "auto":
            found = find_annotations_for(slide.path)
            if found is None:
                notes.append(f"note: no annotations found for {slide.name}; exported without markers")
            annotations = load_annotations(found) if found is not None else None
        else:
            annotations = load_annotations(args.annotations)

    heatmap = None
    if style.show_heatmap:
        from viewer.model import load_model

        model = load_model(model_file(args.model))
        try:
            heatmap, _ = compute_with_progress(slide.read_all(), model, style.stride, quiet=args.quiet)
        except InputError as exc:
            raise InputError(str(exc), args.image) from exc

    figure = compose(slide.read_all(), heatmap, annotations, style)
    save_overlay(figure, out, force=args.force)
    layers = [name for name, on in (("heatmap", heatmap is not None), ("annotations", annotations is not None), ("legend", style.legend)) if on]
    print(f"wrote {out} ({figure.shape[1]}x{figure.shape[0]}; {' + '.join(['image', *layers])})")
    if not args.quiet:
        for note in notes:
            print(note, file=sys.stderr)
    return 0

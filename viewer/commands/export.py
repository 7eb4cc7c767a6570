"""``histoviewer export``: the slide (or a region of it) with heatmap and annotation markers,
at full resolution or a downsample, as a PNG/JPEG figure or a tiled pyramidal TIFF.

Uses :func:`viewer.export.figure.export_overlay`, the same function as the viewer's Export
Overlay. The heatmap is read from ``--heatmap`` or computed through the same plan and engine as
``histoviewer heatmap`` (:func:`heatmap_for_export`, shared with ``export-geojson``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from viewer.errors import InputError

DESCRIPTION = """\
Write the slide, the tumour-probability heatmap blended on top and the annotated points as
rings in their class colours. The output type follows the suffix of --out:

  .tif/.tiff  a tiled pyramidal TIFF (JPEG or deflate tiles), written tile by tile, any size;
              QuPath, ASAP and OpenSlide open it as a slide. No legend is added to it.
  .png/.jpg   one figure made in memory (up to 64 Mpx: use --max-size or --downsample for a
              whole slide), with an optional legend panel on the right (--legend).

--region X,Y,W,H (level-0 pixels) exports part of the slide; --downsample D or --max-size PX
shrinks the output (area average, from the slide's pyramid level closest to D). Heatmap cells are
drawn as squares (nearest cell) or, with --smooth, interpolated between cell centres.

The heatmap: --heatmap H.zarr|H.npy uses one written by 'histoviewer heatmap' (fast, and the way
to go for whole slides you export more than once); otherwise it is computed here with the same
options as 'histoviewer heatmap' (--stride, --mpp, --tissue-mask; --region also limits it).

Annotations: by default ('auto') the BreCaHAD ground truth of the image is used if it is found
(groundTruth/<name>.json beside images/, or <name>.json next to the image); give a file to use
another one, or --no-annotations for none.
"""

ARRAY_CELLS = 4_000_000
"""A computed heatmap with more cells than this (16 MB) goes to a temporary .zarr store
instead of an array, so a whole slide never needs its heatmap in memory."""


def register(subparsers) -> None:
    from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP
    from viewer.commands.heatmap import add_analysis_options
    from viewer.export.tiff_writer import COMPRESSIONS, TILE_SIZES
    from viewer.overlay import OverlayStyle

    defaults = OverlayStyle()
    parser = subparsers.add_parser(
        "export",
        help="write the slide with heatmap and annotations as a PNG/JPEG figure or a pyramidal TIFF",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="SLIDE", help="image or whole-slide file (TIFF, SVS, NDPI, MRXS, JPEG, PNG, ...)")
    parser.add_argument("--out", required=True, metavar="OVERLAY.tif", help="output: .tif/.tiff (pyramid), .png or .jpg")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--downsample", type=float, default=None, metavar="D",
                       help="level-0 pixels per output pixel, at least 1 (default 1: full resolution)")
    scale.add_argument("--max-size", type=int, default=None, metavar="PX",
                       help="shrink so the longer output side is at most PX pixels (never enlarges)")
    parser.add_argument("--heatmap", default=None, metavar="H.zarr|H.npy",
                        help="use this heatmap (written by 'histoviewer heatmap') instead of computing one")
    parser.add_argument("--smooth", action="store_true", help="interpolate the heatmap between cell centres (default: cell squares)")
    parser.add_argument("--annotations", default="auto", metavar="JSON|auto",
                        help="annotation file, or 'auto' to look for the image's ground truth (default auto)")
    parser.add_argument("--no-heatmap", action="store_true", help="leave the heatmap out (no model is loaded)")
    parser.add_argument("--no-annotations", action="store_true", help="leave the annotation markers out")
    parser.add_argument("--opacity", type=float, default=defaults.opacity, help=f"heatmap opacity in [0, 1] (default {defaults.opacity})")
    parser.add_argument("--colormap", default=DEFAULT_COLORMAP, metavar="NAME",
                        help=f"heatmap colours: {', '.join(COLORMAPS)} (default {DEFAULT_COLORMAP})")
    parser.add_argument("--threshold", type=float, default=defaults.threshold,
                        help=f"hide heatmap cells with probability below this, in [0, 1] (default {defaults.threshold}, "
                        "as in the viewer; 0 shows every cell)")
    parser.add_argument("--classes", default=None, metavar="NAME[,NAME...]",
                        help="draw only these annotation classes, e.g. tumor,mitosis (default: all; "
                        "the GUI's per-class toggles give the same result)")
    parser.add_argument("--legend", action="store_true",
                        help="add a legend panel on the right of a PNG/JPEG figure (not added to a pyramidal TIFF)")
    parser.add_argument("--marker-radius", type=int, default=defaults.marker_radius,
                        help=f"ring radius in output pixels (default {defaults.marker_radius})")
    parser.add_argument("--compression", choices=tuple(COMPRESSIONS), default="jpeg",
                        help="TIFF tiles: jpeg (small, lossy) or deflate (exact) (default jpeg)")
    parser.add_argument("--tile-size", type=int, choices=TILE_SIZES, default=512, help="TIFF tile side in pixels (default 512)")
    add_analysis_options(parser)
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
        smooth=args.smooth,
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


def check_heatmap_fits(heatmap, slide, path: str | Path) -> None:
    """Refuse a heatmap whose cells lie outside the slide: it was computed for another image."""
    grid = heatmap.grid
    right = grid.origin[0] + grid.width * grid.scale
    bottom = grid.origin[1] + grid.height * grid.scale
    slack = max(1.0, grid.scale)  # the analysis size is rounded down to whole analysis pixels
    if grid.origin[0] < 0 or grid.origin[1] < 0 or right > slide.width + slack or bottom > slide.height + slack:
        raise InputError(
            f"covers level-0 pixels up to {right:.0f}x{bottom:.0f}, beyond the {slide.width}x{slide.height} px "
            f"slide {slide.name}; was it computed for another slide?",
            path,
        )


@contextlib.contextmanager
def heatmap_for_export(args, slide, out: Path, *, label: str = "heatmap") -> Iterator[tuple[object, list[str]]]:
    """``(HeatmapData, notes)`` for ``slide``: ``--heatmap`` if given, else computed.

    A computed heatmap of more than :data:`ARRAY_CELLS` cells goes to a temporary .zarr store
    next to ``out`` (removed afterwards, also on errors and Ctrl+C), so memory stays bounded.
    """
    from viewer.heatmap.data import ArrayHeatmap, open_heatmap

    if args.heatmap is not None:
        data = open_heatmap(args.heatmap)
        check_heatmap_fits(data, slide, args.heatmap)
        yield data, []
        return
    import tempfile

    from viewer.commands.heatmap import model_file, plan_for, run_plan_with_progress

    plan, model, notes = plan_for(slide, args, model_file(args.model))
    rows, cols = plan.shape
    if rows * cols <= ARRAY_CELLS:
        yield ArrayHeatmap(run_plan_with_progress(plan, model, quiet=args.quiet, label=label), plan.grid), notes
        return
    from viewer.heatmap.data import StoreHeatmap
    from viewer.heatmap.slide_run import open_store_for

    folder = out.parent if str(out.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".heatmap", dir=folder) as tmp:
        store, _ = open_store_for(plan, Path(tmp) / "heatmap.zarr", force=True)
        run_plan_with_progress(plan, model, store=store, quiet=args.quiet, label=label)
        notes.append(f"to export this slide again without recomputing: histoviewer heatmap {slide.name} "
                     "--out H.zarr, then --heatmap H.zarr")
        yield StoreHeatmap(store), notes


def load_export_annotations(args, slide, notes: list[str]):
    """The annotations to draw (``--annotations``), or None; a note when 'auto' finds none."""
    from viewer.annotations import find_annotations_for, load_annotation_file

    if args.annotations == "auto":
        found = find_annotations_for(slide.path)
        if found is None:
            notes.append(f"no annotations found for {slide.name}; exported without markers")
            return None
        return load_annotation_file(found, (slide.width, slide.height))
    # BreCaHAD JSON or QuPath GeoJSON, read as the viewer reads them
    return load_annotation_file(args.annotations, (slide.width, slide.height))


def run(args) -> int:
    from viewer.atomic import check_writable
    from viewer.commands.heatmap import parse_region
    from viewer.export.figure import ExportSettings, check_figure_size, export_overlay
    from viewer.overlay import OutputFrame, overlay_format
    from viewer.progress import Progress
    from viewer.slide import open_slide

    style = style_from_args(args)
    out = Path(args.out)
    kind = overlay_format(out)
    check_writable(out, force=args.force)  # before any long work
    settings = ExportSettings(region=parse_region(args.region), downsample=args.downsample, max_size=args.max_size,
                              compression=args.compression, tile=args.tile_size)
    slide = open_slide(args.image)
    try:
        region, downsample = settings.resolve(slide)
    except InputError as exc:
        raise InputError(str(exc), args.image) from exc
    size = OutputFrame.for_region(region, downsample).size
    check_figure_size(out, size)  # refuse a too-large PNG before computing a heatmap for it

    notes: list[str] = []  # printed only after success, so an error stays the one line on stderr
    annotations = load_export_annotations(args, slide, notes) if style.show_annotations else None
    tiff = kind == "TIFF"
    if tiff and style.legend:
        notes.append("the legend is not added to a pyramidal TIFF; export a .png or .jpg for a figure with a legend")
    with contextlib.ExitStack() as stack:
        heatmap = None
        if style.show_heatmap:
            heatmap, heatmap_notes = stack.enter_context(heatmap_for_export(args, slide, out))
            notes.extend(heatmap_notes)
        shown = Progress("export", 1.0, unit_px=size[0] * size[1] * downsample**2 if tiff else 0.0,
                         quiet=args.quiet or not tiff)
        last = [0.0]

        def advance(fraction: float) -> None:
            shown.advance(fraction - last[0])
            last[0] = fraction

        result = export_overlay(slide, heatmap, annotations, style, out, settings, force=args.force, progress=advance)
        shown.finish()
    layers = [name for name, on in (("heatmap", heatmap is not None), ("annotations", annotations is not None),
                                    ("legend", result.legend)) if on]
    pyramid = f", {result.levels} level{'s' if result.levels > 1 else ''}" if tiff else ""
    print(f"wrote {out} ({result.size[0]}x{result.size[1]}, downsample {downsample:g}{pyramid}; "
          f"{' + '.join(['image', *layers])})")
    if not args.quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0

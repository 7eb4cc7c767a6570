"""``histoviewer export-geojson``: tumour regions of a heatmap as QuPath-importable GeoJSON."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from viewer.errors import InputError

DESCRIPTION = """\
Write the tumour regions of a slide's heatmap as a GeoJSON FeatureCollection that QuPath imports
(File > Object data > Import objects, or drag the file onto the open slide).

Regions: the cells with P(tumour) >= --threshold, each cell counting as the stride-wide square
around its window centre (the squares the overlay draws), traced exactly along the cell borders.
Each region is one annotation of class Tumor (Polygon, or MultiPolygon when parts meet at a
corner; holes kept). Coordinates are level-0 pixels of the slide, origin top-left.

--cell-size PX also writes square tiles of PX level-0 pixels as detections, with the measurement
"tumour probability" = the mean of the cells whose centres fall in the tile (tiles of background
only are left out; tiles with a mean >= --threshold are classified Tumor), for QuPath's
measurement maps.

The heatmap: --heatmap H.zarr|H.npy uses one written by 'histoviewer heatmap'; otherwise it is
computed here with the same options (--stride, --region, --mpp, --tissue-mask).
"""


def register(subparsers) -> None:
    from viewer.commands.heatmap import add_analysis_options

    parser = subparsers.add_parser(
        "export-geojson",
        help="write the tumour regions (and optional tiles) as GeoJSON for QuPath",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="SLIDE", help="image or whole-slide file the heatmap belongs to")
    parser.add_argument("--out", required=True, metavar="REGIONS.geojson", help="output GeoJSON file")
    parser.add_argument("--heatmap", default=None, metavar="H.zarr|H.npy",
                        help="use this heatmap (written by 'histoviewer heatmap') instead of computing one")
    from viewer.overlay import DEFAULT_THRESHOLD

    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"cells with P(tumour) at least this form the regions, in [0, 1] (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--cell-size", type=int, default=None, metavar="PX",
                        help="also write PX x PX level-0 pixel tiles as detections with their mean probability")
    add_analysis_options(parser)
    parser.add_argument("--model", default=None, metavar="MODEL.keras", help="model to use (default: the bundled model)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(func=run)


def run(args) -> int:
    from itertools import chain

    from viewer.atomic import check_writable
    from viewer.commands.export import heatmap_for_export
    from viewer.export.geojson import tile_features, tumour_features, write_feature_collection
    from viewer.slide import open_slide

    if not (math.isfinite(args.threshold) and 0.0 <= args.threshold <= 1.0):
        raise InputError(f"--threshold must be between 0 and 1 (got {args.threshold:g})")
    if args.cell_size is not None and not 1 <= args.cell_size <= 1_000_000:
        raise InputError(f"--cell-size must be between 1 and 1000000 level-0 pixels (got {args.cell_size})")
    out = Path(args.out)
    check_writable(out, force=args.force)  # before any long work
    slide = open_slide(args.image)
    bounds = (slide.width, slide.height)
    with heatmap_for_export(args, slide, out) as (heatmap, notes):
        if args.heatmap is not None and args.region is not None:
            notes.append("--region limits a heatmap computed here; the given --heatmap is exported whole")
        regions = tumour_features(heatmap, args.threshold, bounds)
        tiles = tile_features(heatmap, args.cell_size, bounds, args.threshold) if args.cell_size else ()
        count = write_feature_collection(out, chain(regions, tiles), force=args.force)
    detail = f"{len(regions)} tumour region{'s' if len(regions) != 1 else ''}"
    if args.cell_size:
        detail += f", {count - len(regions)} tiles of {args.cell_size} px"
    print(f"wrote {out} ({detail}; threshold {args.threshold:g}, level-0 pixels)")
    if not args.quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return 0

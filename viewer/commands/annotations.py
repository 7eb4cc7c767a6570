"""``histoviewer annotations convert``: BreCaHAD JSON <-> QuPath GeoJSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from viewer.errors import InputError

DESCRIPTION = """\
Work with annotation files.

  convert IN --out OUT [--image IMAGE]
      Convert between BreCaHAD JSON (points normalised to [0, 1] per class, the dataset's own
      layout) and QuPath GeoJSON (a FeatureCollection in level-0 pixels: one MultiPoint per
      class, one Polygon per region, objectType "annotation", classification {name, color}).
      IN may be either (QuPath's FeatureCollection, a Feature or a list of Features); OUT's
      ending chooses: .geojson writes GeoJSON, anything else BreCaHAD JSON. Regions cannot be
      stored in BreCaHAD JSON: they go to OUT's sidecar <stem>.regions.geojson, and the command
      says so. Overwriting a dataset's groundTruth/<stem>.json (--force) keeps the original once,
      as <stem>.json.orig. The image supplies the size that turns pixels into normalised coordinates:
      --image, or else the image found beside IN or OUT (images/<stem>.* for groundTruth/<stem>.json).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "annotations", help="convert annotation files (BreCaHAD JSON <-> QuPath GeoJSON)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser(
        "convert", help="convert between BreCaHAD JSON and QuPath GeoJSON",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("input", metavar="IN", help="annotation file: BreCaHAD JSON or GeoJSON")
    convert.add_argument("--out", required=True, metavar="OUT", help="output file: .geojson for GeoJSON, else BreCaHAD JSON")
    convert.add_argument("--image", default=None, metavar="IMAGE",
                         help="the image the annotations belong to (its size places the points)")
    convert.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    convert.set_defaults(func=run_convert)
    # argparse's "--debug after the subcommand" is added by the CLI to direct subparsers only.
    convert.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def image_size_for(annotation: Path, image: str | None, out: Path | None = None) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) from ``--image`` or the image found beside the input (else the output)
    annotation file, and its name."""
    from viewer.slide import open_slide

    path = Path(image) if image is not None else find_image_for(annotation) or (find_image_for(out) if out else None)
    if path is None:
        return None, None
    with open_slide(path) as slide:  # the header only: a whole slide's size costs nothing to read
        return (int(slide.width), int(slide.height)), path.name


def find_image_for(annotation: Path) -> Path | None:
    """``images/<stem>.*`` beside ``groundTruth/``, or ``<stem>.*`` in the same folder."""
    from viewer.slide import IMAGE_SUFFIXES

    stem = annotation.name.split(".")[0]
    for folder in (annotation.parent.parent / "images", annotation.parent):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def run_convert(args) -> int:
    from viewer.annotations import load_annotation_file, save_annotation_file
    from viewer.atomic import check_writable

    source, out = Path(args.input), Path(args.out)
    check_writable(out, force=args.force)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise InputError("is also the input; write the converted file somewhere else", out)
    size, image_name = image_size_for(source, args.image, out)
    annotations = load_annotation_file(source, size)
    if size is None and out.suffix.lower() == ".geojson":
        raise InputError("GeoJSON is in pixels: give the image the annotations belong to with --image IMAGE "
                         "(no image was found beside the file)", source)
    report = save_annotation_file(annotations, out, size, force=args.force)  # over groundTruth/: keeps .orig
    points = sum(annotations.counts().values())
    classes = sum(1 for n in annotations.counts().values() if n)
    detail = f"{points} point{'s' if points != 1 else ''} in {classes} class{'es' if classes != 1 else ''}"
    detail += f", {len(annotations.regions)} region{'s' if len(annotations.regions) != 1 else ''}"
    if size is not None:
        detail += f"; image {image_name}, {size[0]} x {size[1]} px"
    print(f"wrote {out} ({detail})")
    for note in (*annotations.notes, *report.notes):
        print(f"note: {note}", file=sys.stderr)
    return 0

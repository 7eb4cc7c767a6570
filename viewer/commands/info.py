"""``histoviewer info``: what HistoViewer reads from a slide or image (size, levels, resolution)."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Print what HistoViewer reads from a slide or image: the reader (backend) and vendor format,
the full-resolution size, the pixel size in micrometres per pixel (or 'unknown'), the pyramid
levels, the tile size, associated images (label, macro, thumbnail) and notes about anything
unusual. Whole slides are not decoded, only their headers are read.

Levels marked 'virtual' are not stored in the file: HistoViewer builds them by halving the level
above when it needs them. --json prints the same as one JSON object (mpp is [x, y] or null).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print a slide's size, pyramid levels, pixel size and vendor",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slide", metavar="SLIDE", help="slide or image file (SVS, NDPI, MRXS, VMS, TIFF, JPEG, PNG...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viewer.slide import open_slide

    with open_slide(args.slide) as slide:
        info = slide.info()
    if args.json:
        print(json.dumps(info))
        return 0
    print("\n".join(describe(info)))
    return 0


def describe(info: dict) -> list[str]:
    """The human-readable lines of ``info`` (a :meth:`SlideSource.info` dict)."""
    lines = [
        f"file:        {info['file']}",
        f"backend:     {info['backend']}",
        f"vendor:      {info['vendor']}",
        f"size:        {info['width']} x {info['height']} px",
        f"pixel size:  {_mpp_text(info.get('mpp'))}",
    ]
    if info.get("objective_power"):
        lines.append(f"objective:   {info['objective_power']:g}x")
    tile = info.get("tile_size")
    if tile:
        lines.append(f"tile size:   {tile[0]} x {tile[1]} px")
    associated = info.get("associated_images") or []
    lines.append(f"associated:  {', '.join(associated) if associated else 'none'}")
    lines.append("levels:")
    lines.extend("  " + row for row in _level_table(info["levels"]))
    notes = info.get("notes") or []
    if notes:
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in notes)
    return lines


def _mpp_text(mpp) -> str:
    if mpp is None:
        return "unknown"
    x, y = mpp
    same = abs(x - y) <= 1e-3 * max(x, y)
    return f"{x:.4g} µm/px" if same else f"{x:.4g} x {y:.4g} µm/px"


def _level_table(levels: list[dict]) -> list[str]:
    header = ("level", "width", "height", "downsample", "")
    rows = [
        (str(index), str(level["width"]), str(level["height"]), f"{level['downsample']:.6g}",
         "virtual" if level.get("virtual") else "")
        for index, level in enumerate(levels)
    ]
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(4)]
    return [
        "  ".join(cell.rjust(width) for cell, width in zip(row[:4], widths)) + (f"  {row[4]}" if row[4] else "")
        for row in [header, *rows]
    ]

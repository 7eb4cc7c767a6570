"""BreCaHAD ground-truth annotations: JSON <-> per-class point arrays (and the regions sidecar).

A BreCaHAD file maps each class to a list of points ``{"x": 0.39, "y": 0.01}`` whose
coordinates are normalised by the image width and height. Points are kept normalised here and
converted to pixels on demand, so the same annotations can be drawn on any rendition of the image.

The layout has no place for regions. They are kept in a sidecar beside the file,
``<stem>.regions.geojson`` (QuPath GeoJSON in level-0 pixels, so QuPath opens it too), which
:func:`load_annotations` reads and :func:`save_annotations` writes when there are regions.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np

from viewer.annotations.model import CLASSES, Annotations
from viewer.errors import AnnotationError

REGIONS_SIDECAR_SUFFIX = ".regions.geojson"
"""``groundTruth/<stem>.json`` keeps its regions in ``groundTruth/<stem>.regions.geojson``."""


def parse_annotations(data: Any, source: str | Path | None = None) -> Annotations:
    """Validate decoded BreCaHAD JSON and turn it into :class:`Annotations`.

    Wrong types in the seven BreCaHAD classes are refused; points outside [0, 1] or with NaN
    coordinates are skipped and counted in ``notes`` (one stray point should not cost the user
    the other thousand). Other top-level entries that are lists of points are kept as extra
    classes under their own name; anything else is kept verbatim in ``extra`` so saving loses
    nothing.
    """
    where = source
    if not isinstance(data, dict):
        raise AnnotationError(
            f"top level is a {_json_type(data)}; expected an object mapping class names to point lists",
            where,
        )
    points: dict[str, np.ndarray] = {name: np.empty((0, 2)) for name in CLASSES}
    extra: dict[str, Any] = {}
    skipped = 0
    kept_aside: list[str] = []
    for name, entries in data.items():
        if not isinstance(name, str):
            raise AnnotationError(f"has a class name that is not text ({_json_type(name)})", where)
        if not name.strip():
            raise AnnotationError("has an empty class name", where)
        label = _quote(name)
        if not isinstance(entries, list):
            if name in CLASSES:
                raise AnnotationError(f"{label} is a {_json_type(entries)}; expected a list of points", where)
            extra[name] = entries  # unknown non-point entry: keep it for round trips
            continue
        if name not in CLASSES and entries and not all(_looks_like_point(e) for e in entries):
            # An unknown entry that is not a point list (e.g. a list of tags): keep, don't draw.
            extra[name] = entries
            kept_aside.append(label)
            continue
        coords = np.empty((len(entries), 2), dtype=np.float64)
        keep = np.ones(len(entries), dtype=bool)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
                raise AnnotationError(f"{label}[{i}] is not a point like {{\"x\": 0.5, \"y\": 0.5}}", where)
            x, y = entry["x"], entry["y"]
            if not _is_number(x) or not _is_number(y):
                raise AnnotationError(
                    f"{label}[{i}] has non-numeric coordinates ({_json_type(x)}, {_json_type(y)})", where
                )
            x, y = _to_float(x), _to_float(y)
            if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                keep[i] = False
                continue
            coords[i] = (x, y)
        skipped += int((~keep).sum())
        points[name] = coords[keep]
    notes: list[str] = []
    if skipped:
        notes.append(f"{skipped} point(s) with NaN or coordinates outside [0, 1] were skipped")
    if kept_aside:
        notes.append(f"entries that are not point lists were kept but not drawn: {', '.join(kept_aside[:5])}")
    unknown = [f"{_quote(n)} ({len(points[n])})" for n in points if n not in CLASSES]
    if unknown:
        # Kept, drawn and saved again under their own name; said, so a typo does not go unseen.
        notes.append(f"classes that are not BreCaHAD's seven were kept: {', '.join(unknown[:5])}"
                     + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return Annotations(points=points, source=Path(source) if source else None, notes=tuple(notes), extra=extra)


def load_annotations(path: str | Path) -> Annotations:
    """Read a BreCaHAD groundTruth JSON file, with the regions of its sidecar when there is one."""
    from viewer.annotations.files import read_json_file, read_regions

    path = Path(path)
    annotations = parse_annotations(read_json_file(path, "BreCaHAD JSON"), path)
    sidecar = regions_sidecar_for(path)
    try:
        has_sidecar = sidecar.is_file()
    except (OSError, ValueError):
        has_sidecar = False
    if has_sidecar:
        annotations.regions = tuple(read_regions(sidecar))
        if annotations.regions:
            annotations.notes += (f"{len(annotations.regions)} region(s) from {sidecar.name}",)
    return annotations


def regions_sidecar_for(path: str | Path) -> Path:
    """Where the regions of BreCaHAD file ``path`` live: ``<stem>.regions.geojson`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + REGIONS_SIDECAR_SUFFIX)


def save_annotations(annotations: Annotations, path: str | Path, *, force: bool = True) -> list[str]:
    """Write BreCaHAD JSON atomically (all seven classes, unknown entries preserved).

    Regions go to the sidecar (written atomically too); a sidecar left from earlier is removed
    when there are no regions any more, so deleted regions do not come back. Returns notes for
    the user, e.g. where the regions went.
    """
    from viewer.annotations.geojson import regions_feature_collection
    from viewer.atomic import atomic_output

    path = Path(path)
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other tools would refuse the file.
        text = json.dumps(annotations.to_json_dict(), indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"cannot be saved: the annotations hold a value JSON cannot store ({_first_line(str(exc))})", path) from None
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    sidecar = regions_sidecar_for(path)
    notes: list[str] = []
    if annotations.regions:
        collection = regions_feature_collection(annotations.regions)
        with atomic_output(sidecar, force=True) as tmp:
            tmp.write_text(json.dumps(collection, separators=(",", ":")), encoding="utf-8")
        notes.append(
            f"BreCaHAD JSON holds points only: the {len(annotations.regions)} region(s) were saved to "
            f"{sidecar.name} beside it (QuPath GeoJSON)"
        )
    elif sidecar.is_file():
        sidecar.unlink()
        notes.append(f"no regions any more: removed {sidecar.name}")
    return notes


def find_annotations_for(image_path: str | Path) -> Path | None:
    """Find the ground truth of an image: ``groundTruth/<stem>.json`` beside ``images/``.

    Also accepts ``<stem>.json`` next to the image, for users who keep them together.
    """
    image_path = Path(image_path)
    stem = image_path.stem
    candidates = [
        image_path.parent.parent / "groundTruth" / f"{stem}.json",
        image_path.parent / "groundTruth" / f"{stem}.json",
        image_path.with_suffix(".json"),
    ]
    for candidate in candidates:
        try:
            if candidate.is_file() and os.access(candidate, os.R_OK):
                return candidate
        except (OSError, ValueError):  # name too long, NUL byte...: simply not there
            continue
    return None


def _is_number(value: Any) -> bool:
    """JSON numbers (and NumPy scalars from code), but not booleans."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _to_float(value: Any) -> float:
    """float(value), with integers too large for a float mapped to infinity (then skipped)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        return math.nan


def _looks_like_point(entry: Any) -> bool:
    return isinstance(entry, dict) and "x" in entry and "y" in entry


def _quote(name: str) -> str:
    """A class name for a message: quoted, one line, not absurdly long."""
    text = " ".join(name.split())
    if len(text) > 40:
        text = text[:37] + "..."
    return repr(text)


def _first_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:160] if line else "unknown error"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, np.generic):
        return f"NumPy {value.dtype}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__

"""BreCaHAD ground-truth annotations: JSON <-> per-class point arrays.

A BreCaHAD file maps each class to a list of points ``{"x": 0.39, "y": 0.01}`` whose
coordinates are normalised by the image width and height. Points are kept normalised here and
converted to pixels on demand, so the same annotations can be drawn on any rendition of the image.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from viewer.errors import AnnotationError, os_reason, stat_input_file

CLASSES: tuple[str, ...] = ("tumor", "non_tumor", "mitosis", "non_mitosis", "apoptosis", "lumen", "non_lumen")
"""The seven BreCaHAD classes, in the order the legend shows them."""

TUMOUR_CLASS = "tumor"
"""The class the ConvNet is trained to find (BreCaHAD spells it the American way)."""

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "tumor": (0, 220, 255),  # cyan: stands out from pink/purple H&E and from warm heatmaps
    "non_tumor": (60, 220, 60),
    "mitosis": (255, 40, 200),
    "non_mitosis": (255, 160, 40),
    "apoptosis": (255, 255, 0),
    "lumen": (40, 90, 255),
    "non_lumen": (150, 150, 150),
}
"""Fixed, mutually distinct marker colours per class (RGB)."""

_EXTRA_COLOURS = ((255, 255, 255), (180, 90, 255), (255, 90, 90), (0, 160, 130), (200, 200, 80))

MAX_ANNOTATION_BYTES = 64 * 1024 * 1024
"""Annotation files larger than this are refused before parsing (BreCaHAD's are a few kB)."""


def class_colour(name: str) -> tuple[int, int, int]:
    """Colour for a class; unknown classes get a stable colour from a spare palette."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    return _EXTRA_COLOURS[sum(name.encode()) % len(_EXTRA_COLOURS)]


def class_label(name: str) -> str:
    """Human-readable class name for legends: 'non_tumor' -> 'Non-tumour'."""
    text = name.replace("_", "-").replace("tumor", "tumour")
    return text[:1].upper() + text[1:]


@dataclass(eq=False)
class Annotations:
    """Annotated points per class, normalised to [0, 1] (x by width, y by height)."""

    points: dict[str, np.ndarray] = field(default_factory=dict)
    """class name -> (N, 2) float64 array of normalised (x, y)."""
    source: Path | None = None
    notes: tuple[str, ...] = ()
    """Remarks about the parse, e.g. points skipped because they were outside the image."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level JSON entries that are not point lists, kept so saving loses nothing."""

    @property
    def classes(self) -> list[str]:
        """Known classes first in :data:`CLASSES` order, then any other classes in file order."""
        known = [c for c in CLASSES if c in self.points]
        return known + [c for c in self.points if c not in CLASSES]

    def counts(self) -> dict[str, int]:
        return {name: int(len(self.points[name])) for name in self.classes}

    def normalised(self, name: str) -> np.ndarray:
        """(N, 2) normalised points of a class; empty for a class that is absent."""
        return self.points.get(name, np.empty((0, 2)))

    def pixel_points(self, name: str, width: int, height: int) -> np.ndarray:
        """(N, 2) float pixel coordinates (x, y) of a class on a width x height image."""
        return self.normalised(name) * np.array([width, height], dtype=np.float64)

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in CLASSES:
            out[name] = _points_to_json(self.normalised(name))
        for name in self.points:
            if name not in CLASSES:
                out[name] = _points_to_json(self.points[name])
        out.update(self.extra)
        return out

    @classmethod
    def from_pixels(
        cls, pixel_points: Mapping[str, Iterable[Iterable[float]]], width: int, height: int
    ) -> Annotations:
        """Build annotations from pixel coordinates (the inverse of :meth:`pixel_points`)."""
        scale = np.array([width, height], dtype=np.float64)
        points = {
            name: np.asarray(list(pts), dtype=np.float64).reshape(-1, 2) / scale
            for name, pts in pixel_points.items()
        }
        return cls(points=points)


def _points_to_json(points: np.ndarray) -> list[dict[str, float]]:
    return [{"x": round(float(x), 6), "y": round(float(y), 6)} for x, y in points]


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
    return Annotations(points=points, source=Path(source) if source else None, notes=tuple(notes), extra=extra)


def load_annotations(path: str | Path) -> Annotations:
    """Read a BreCaHAD groundTruth JSON file."""
    path = Path(path)
    st = stat_input_file(path, AnnotationError, "an annotation file")
    limit = MAX_ANNOTATION_BYTES
    if st.st_size > limit:
        raise AnnotationError(_too_large(st.st_size, limit), path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)  # bounded even if the file grows while we read it
    except PermissionError:
        raise AnnotationError("cannot be read (permission denied)", path) from None
    except OSError as exc:
        raise AnnotationError(f"cannot be read ({os_reason(exc)})", path) from None
    if len(raw) > limit:
        raise AnnotationError(_too_large(len(raw), limit), path)
    if not raw.strip():
        raise AnnotationError("is empty; expected BreCaHAD JSON", path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AnnotationError("is UTF-16 text; save it as UTF-8 (BreCaHAD JSON is UTF-8)", path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"is not UTF-8 text (bad byte at offset {exc.start}); expected BreCaHAD JSON", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", path) from None
    except RecursionError:
        raise AnnotationError("is nested too deeply to be BreCaHAD JSON", path) from None
    except ValueError as exc:  # e.g. an integer literal with more than 4300 digits
        reason = _first_line(str(exc))
        if "digits" in reason:
            reason = "it contains a number with thousands of digits"
        raise AnnotationError(f"is not usable JSON ({reason})", path) from None
    return parse_annotations(data, path)


def _too_large(size: int, limit: int) -> str:
    return (
        f"is {size / (1 << 20):.1f} MB, above the {limit / (1 << 20):g} MB limit for annotation files "
        "(BreCaHAD files are a few kB); is it the right file?"
    )


def save_annotations(annotations: Annotations, path: str | Path, *, force: bool = True) -> None:
    """Write BreCaHAD JSON atomically (all seven classes, unknown entries preserved)."""
    from viewer.atomic import atomic_output

    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other tools would refuse the file.
        text = json.dumps(annotations.to_json_dict(), indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"cannot be saved: the annotations hold a value JSON cannot store ({_first_line(str(exc))})", path) from None
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")


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

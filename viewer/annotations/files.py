"""Annotation files of either format: bounded reading, format detection, saving with a backup.

Both formats are JSON. What a file is comes from its content, not its name: a GeoJSON
FeatureCollection, a Feature or a list of Features (what QuPath writes) is GeoJSON, an object
of class names is BreCaHAD. Saving picks the format from the name: ``.geojson`` writes QuPath
GeoJSON, anything else BreCaHAD JSON (with a regions sidecar when there are regions).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viewer.annotations.model import Annotations, Region
from viewer.errors import AnnotationError, os_reason, stat_input_file

MAX_ANNOTATION_BYTES = 64 * 1024 * 1024
"""Annotation files larger than this are refused before parsing (BreCaHAD's are a few kB; a
QuPath export of a whole slide's hand-drawn annotations a few MB)."""

GEOJSON_SUFFIXES = (".geojson",)
BACKUP_SUFFIX = ".orig"
GEOJSON_TYPES = {"FeatureCollection", "Feature", "Point", "MultiPoint", "Polygon", "MultiPolygon", "LineString",
                 "MultiLineString", "GeometryCollection"}


def read_json_file(path: str | Path, kind: str = "annotation JSON") -> Any:
    """Decode a JSON annotation file with a size limit and one-line errors naming it."""
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
        raise AnnotationError(f"is empty; expected {kind}", path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AnnotationError("is UTF-16 text; save it as UTF-8 (annotation JSON is UTF-8)", path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"is not UTF-8 text (bad byte at offset {exc.start}); expected {kind}", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", path) from None
    except RecursionError:
        raise AnnotationError(f"is nested too deeply to be {kind}", path) from None
    except ValueError as exc:  # e.g. an integer literal with more than 4300 digits
        reason = " ".join(str(exc).split())[:160]
        if "digits" in reason:
            reason = "it contains a number with thousands of digits"
        raise AnnotationError(f"is not usable JSON ({reason})", path) from None


def _too_large(size: int, limit: int) -> str:
    return (
        f"is {size / (1 << 20):.1f} MB, above the {limit / (1 << 20):g} MB limit for annotation files "
        "(BreCaHAD files are a few kB); is it the right file?"
    )


def is_geojson(data: Any) -> bool:
    """Whether decoded JSON is GeoJSON (QuPath's FeatureCollection, a Feature, or a list of them)."""
    if isinstance(data, list):
        return not data or isinstance(data[0], dict) and data[0].get("type") in GEOJSON_TYPES
    return isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] in GEOJSON_TYPES


def load_annotation_file(path: str | Path, size: tuple[int, int] | None = None) -> Annotations:
    """Read BreCaHAD JSON or QuPath GeoJSON, whichever the file holds.

    ``size`` (level-0 width, height of the image) places GeoJSON points, which are in pixels,
    in the model's normalised coordinates and checks that they lie on the image; without it a
    GeoJSON file with points is refused (BreCaHAD files need no size).
    """
    from viewer.annotations.brecahad import load_annotations
    from viewer.annotations.geojson import parse_geojson

    path = Path(path)
    data = read_json_file(path)
    if is_geojson(data):
        return parse_geojson(data, size, path)
    return load_annotations(path)


def read_regions(path: str | Path) -> tuple[Region, ...]:
    """The regions of a GeoJSON file that holds regions only (a BreCaHAD file's sidecar)."""
    from viewer.annotations.geojson import parse_geojson

    path = Path(path)
    data = read_json_file(path, "GeoJSON")
    if not is_geojson(data):
        raise AnnotationError("is not GeoJSON; a regions file holds a FeatureCollection of polygons", path)
    return parse_geojson(data, None, path, regions_only=True).regions


def is_dataset_ground_truth(path: str | Path) -> bool:
    """Whether ``path`` is a dataset's own ground truth (``.../groundTruth/<stem>.json``)."""
    path = Path(path)
    return path.parent.name == "groundTruth" and path.suffix.lower() == ".json"


@dataclass
class SaveReport:
    path: Path
    notes: list[str] = field(default_factory=list)
    backup: Path | None = None
    """The one-time copy of the file as it was before the first save over it, if made now."""


def save_annotation_file(
    annotations: Annotations, path: str | Path, size: tuple[int, int] | None, *, force: bool = True,
    keep_original: bool | None = None,
) -> SaveReport:
    """Save atomically in the format the name asks for (``.geojson``: GeoJSON; else BreCaHAD).

    ``keep_original`` (default: when ``path`` is a dataset's ``groundTruth/`` file) copies the
    file as it is now to ``<name>.orig`` before the first save over it; later saves keep that
    copy, so the dataset's original annotations are never lost.
    """
    from viewer.annotations.brecahad import save_annotations
    from viewer.annotations.geojson import write_geojson

    path = Path(path)
    report = SaveReport(path)
    if keep_original is None:
        keep_original = is_dataset_ground_truth(path)
    if keep_original:
        report.backup = _keep_original(path)
        if report.backup is not None:
            report.notes.append(f"the original was kept as {report.backup.name}")
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        if size is None:
            raise AnnotationError("cannot be written as GeoJSON without the image size (points are in pixels)", path)
        write_geojson(annotations, path, size, force=force)
    else:
        report.notes.extend(save_annotations(annotations, path, force=force))
    return report


def _keep_original(path: Path) -> Path | None:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if not path.is_file() or os.path.lexists(backup):
        return None
    from viewer.atomic import atomic_output

    with atomic_output(backup, force=False) as tmp:
        shutil.copyfile(path, tmp)
    return backup

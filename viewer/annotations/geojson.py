"""Annotations as QuPath GeoJSON, and back.

Written: a FeatureCollection in level-0 pixel coordinates (origin top-left, y down), one
``MultiPoint`` feature per class of points and one ``Polygon`` (``MultiPolygon`` when it has
several parts) per region, each with ``properties.objectType: "annotation"`` and
``properties.classification: {"name", "color": [r, g, b]}``, as QuPath 0.4+ writes them.
Class names are QuPath's where QuPath has one (``Tumor``, ``Ignore*``), else the BreCaHAD
name spelled as a label (``Non-tumor``).

Read: what QuPath itself writes, any version: a FeatureCollection, a bare Feature or a JSON
list of Features; ``Point``, ``MultiPoint``, ``Polygon`` and ``MultiPolygon`` geometries; with
or without ``objectType`` (annotations, detections and cells alike); ``classification`` with
``name``, ``names`` (0.5 derived classes) or as a plain string; colours as ``[r, g, b]`` or a
packed integer (ignored either way: classes have the viewer's colours). Any other geometry
(lines, collections) refuses the file with a message naming the feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from viewer.annotations.model import CLASSES, IGNORE_CLASS, Annotations, Region, class_colour
from viewer.errors import AnnotationError

UNCLASSIFIED = "unclassified"
"""Class given to objects without a classification (written back without one)."""

QUPATH_NAMES = {
    "tumor": "Tumor", "non_tumor": "Non-tumor", "mitosis": "Mitosis", "non_mitosis": "Non-mitosis",
    "apoptosis": "Apoptosis", "lumen": "Lumen", "non_lumen": "Non-lumen", IGNORE_CLASS: "Ignore*",
}
"""The name a class is written under (``Tumor`` and ``Ignore*`` are QuPath's built-in classes)."""

EXTRA_MEMBER = "brecahad_extra"
"""A FeatureCollection member (GeoJSON allows foreign members; QuPath ignores them) that keeps a
BreCaHAD file's entries that are not point lists, so BreCaHAD -> GeoJSON -> BreCaHAD loses nothing."""

DECIMALS = 6
"""Pixel coordinates are written to 1e-6 px: far below the 1e-6 of the image size a round trip keeps."""


def class_from_qupath(name: str) -> str:
    """Map a QuPath class name to the model's: 'Tumor', 'Tumour', 'Non-tumor' -> BreCaHAD's
    names, 'Ignore*' -> 'ignore'; any other name is kept as it is (an extra class)."""
    key = name.strip().rstrip("*").strip().lower().replace("-", "_").replace(" ", "_").replace("tumour", "tumor")
    if key in CLASSES or key == IGNORE_CLASS:
        return key
    return name


def class_to_qupath(name: str) -> str:
    return QUPATH_NAMES.get(name, name)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def features_of(data: Any, where: Path | None) -> list[Any]:
    """The features of a FeatureCollection, a Feature, a list of Features or a bare geometry."""
    if isinstance(data, list):
        return data
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError("is a FeatureCollection without a 'features' list", where)
        return features
    if kind == "Feature":
        return [data]
    return [{"type": "Feature", "geometry": data, "properties": {}}]  # a bare geometry


def parse_geojson(
    data: Any, size: tuple[int, int] | None, source: str | Path | None = None, *, regions_only: bool = False
) -> Annotations:
    """Decoded GeoJSON -> :class:`Annotations` (points normalised by ``size``, regions in pixels).

    Points outside the image are skipped with a note (one stray point should not cost the
    other thousand), but a file none of whose points lands on the image is refused: it belongs
    to another image, or is not in level-0 pixels. Regions entirely outside are skipped the
    same way. Unknown classes are kept under their own name and listed in ``notes``.
    """
    where = Path(source) if source is not None else None
    points: dict[str, list[np.ndarray]] = {}
    regions: list[Region] = []
    detections = 0
    for index, feature in enumerate(features_of(data, where)):
        label = f"feature {index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{label} is not a GeoJSON Feature", where)
        geometry = feature.get("geometry")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(f"{label} has 'properties' that are not an object", where)
        if geometry is None:
            continue  # allowed by GeoJSON: an object without a location has nothing to show
        if not isinstance(geometry, dict):
            raise AnnotationError(f"{label} has a geometry that is not an object", where)
        name = _class_of(properties, label, where)
        if properties.get("objectType") in ("detection", "cell", "tile"):
            detections += 1
        kind = geometry.get("type")
        coordinates = geometry.get("coordinates")
        if kind in ("Point", "MultiPoint"):
            if regions_only:
                raise AnnotationError(f"{label} is a {kind}; a regions file holds Polygon and MultiPolygon only", where)
            xy = _positions([coordinates] if kind == "Point" else coordinates, f"{label} ({kind})", where)
            points.setdefault(name, []).append(xy)
        elif kind in ("Polygon", "MultiPolygon"):
            polygons = [coordinates] if kind == "Polygon" else coordinates
            if not isinstance(polygons, list) or not polygons:
                raise AnnotationError(f"{label} ({kind}) has no coordinates", where)
            rings = []
            for polygon in polygons:
                if not isinstance(polygon, list) or not polygon:
                    raise AnnotationError(f"{label} ({kind}) has a polygon without rings", where)
                for ring in polygon:
                    xy = _positions(ring, f"{label} ({kind})", where)
                    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
                        xy = xy[:-1]
                    if len(np.unique(xy, axis=0)) < 3:
                        raise AnnotationError(f"{label} ({kind}) has a ring with fewer than 3 distinct corners", where)
                    xy.setflags(write=False)
                    rings.append(xy)
            regions.append(Region(name, tuple(rings)))
        else:
            shown = kind if isinstance(kind, str) else type(kind).__name__
            raise AnnotationError(
                f"{label} is a {shown[:40]}; HistoViewer reads Point, MultiPoint, Polygon and MultiPolygon", where
            )
    notes: list[str] = []
    merged: dict[str, np.ndarray] = {name: np.empty((0, 2)) for name in CLASSES} if not regions_only else {}
    total = sum(len(a) for arrays in points.values() for a in arrays)
    if total:
        if size is None:
            raise AnnotationError("holds points in pixels; the image size is needed to place them "
                                  "(open the image first, or give --image)", where)
        width, height = size
        kept = 0
        for name, arrays in points.items():
            xy = np.concatenate(arrays)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
            kept += int(inside.sum())
            merged[name] = xy[inside] / np.array([width, height], dtype=np.float64)
        if kept == 0:
            raise AnnotationError(
                f"none of its {total} points lies on the {width} x {height} image; is it the file of another "
                "image, or not in level-0 pixels?", where)
        if kept < total:
            notes.append(f"{total - kept} point(s) outside the {width} x {height} image were skipped")
    if size is not None and regions:
        width, height = size
        on_image = [r for r in regions if _overlaps(r.bounds(), width, height)]
        if len(on_image) < len(regions):
            notes.append(f"{len(regions) - len(on_image)} region(s) entirely outside the image were skipped")
        regions = on_image
    unknown = [n for n in dict.fromkeys([*points, *(r.name for r in regions)])
               if n not in CLASSES and n != IGNORE_CLASS]
    if unknown:
        notes.append("classes that are not BreCaHAD's seven were kept: "
                     + ", ".join(repr(n[:40]) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    if detections:
        notes.append(f"{detections} QuPath detection(s) were read like annotations")
    extra = data.get(EXTRA_MEMBER) if isinstance(data, dict) else None
    return Annotations(points=merged, source=where, notes=tuple(notes), regions=tuple(regions),
                       extra=dict(extra) if isinstance(extra, dict) else {})


def _class_of(properties: dict, label: str, where: Path | None) -> str:
    classification = properties.get("classification")
    if classification is None:
        return UNCLASSIFIED
    if isinstance(classification, str):
        name = classification
    elif isinstance(classification, dict):
        name = classification.get("name")
        names = classification.get("names")
        if name is None and isinstance(names, list) and all(isinstance(n, str) for n in names):
            name = ": ".join(names)  # QuPath 0.5 writes derived classes as a list of parts
    else:
        name = None
    if not isinstance(name, str) or not name.strip():
        raise AnnotationError(f"{label} has a classification without a name", where)
    return class_from_qupath(name)


def _positions(value: Any, label: str, where: Path | None) -> np.ndarray:
    """A list of [x, y] (extra ordinates ignored) -> (N, 2) float64, all finite."""
    if not isinstance(value, list) or not value:
        raise AnnotationError(f"{label} has no coordinates", where)
    try:
        xy = np.array([(p[0], p[1]) for p in value], dtype=np.float64)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        raise AnnotationError(f"{label} has a position that is not a pair of numbers", where) from None
    if any(isinstance(c, bool) for p in value for c in p[:2]):
        raise AnnotationError(f"{label} has a position that is not a pair of numbers", where)
    if not np.isfinite(xy).all():
        raise AnnotationError(f"{label} has a coordinate that is NaN or infinite", where)
    return xy


def _overlaps(bounds: tuple[float, float, float, float], width: int, height: int) -> bool:
    x0, y0, x1, y1 = bounds
    return x1 >= 0 and y1 >= 0 and x0 <= width and y0 <= height


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _properties(name: str) -> dict:
    properties: dict[str, Any] = {"objectType": "annotation"}
    if name != UNCLASSIFIED:
        properties["classification"] = {"name": class_to_qupath(name), "color": list(class_colour(name))}
    return properties


def _round(xy: np.ndarray) -> list[list[float]]:
    return [[_number(x), _number(y)] for x, y in np.round(np.asarray(xy, dtype=np.float64), DECIMALS)]


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def region_geometry(region: Region) -> dict:
    """A Polygon (one outer ring with its holes) or a MultiPolygon, rebuilt from the even-odd
    rings: a ring inside an even number of others is an outer ring, the others are holes of
    the innermost outer ring around them."""
    from viewer.annotations.regions import points_in_rings

    rings = region.rings
    depth = [int(sum(points_in_rings(r[:1], [o])[0] for o in rings if o is not r)) for r in rings]
    shells = [k for k, d in enumerate(depth) if d % 2 == 0]
    polygons: dict[int, list[np.ndarray]] = {k: [rings[k]] for k in shells}
    for k, d in enumerate(depth):
        if d % 2 == 0:
            continue
        around = [s for s in shells if depth[s] == d - 1 and points_in_rings(rings[k][:1], [rings[s]])[0]]
        owner = around[0] if around else shells[0] if shells else None
        if owner is None:
            polygons[k] = [rings[k]]
        else:
            polygons[owner].append(rings[k])
    parts = [[_closed(r) for r in polygon] for polygon in polygons.values()]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def _closed(ring: np.ndarray) -> list[list[float]]:
    positions = _round(ring)
    return positions + [positions[0]]  # GeoJSON rings repeat their first position


def region_features(regions: Iterable[Region]) -> list[dict]:
    return [{"type": "Feature", "geometry": region_geometry(r), "properties": _properties(r.name)} for r in regions]


def regions_feature_collection(regions: Iterable[Region]) -> dict:
    return {"type": "FeatureCollection", "features": region_features(regions)}


def annotations_to_geojson(annotations: Annotations, size: tuple[int, int]) -> dict:
    """The FeatureCollection of ``annotations`` on an image of ``size`` (level-0 width, height)."""
    width, height = size
    features = []
    for name in annotations.classes:
        xy = annotations.pixel_points(name, width, height)
        if not len(xy):
            continue  # QuPath has no use for an empty MultiPoint
        features.append({"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": _round(xy)},
                         "properties": _properties(name)})
    features.extend(region_features(annotations.regions))
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if annotations.extra:
        collection[EXTRA_MEMBER] = annotations.extra
    return collection


def write_geojson(annotations: Annotations, path: str | Path, size: tuple[int, int], *, force: bool = True) -> None:
    """Write QuPath GeoJSON atomically."""
    from viewer.atomic import atomic_output

    collection = annotations_to_geojson(annotations, size)
    try:
        text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise AnnotationError(f"cannot be saved ({exc})", path) from None
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")

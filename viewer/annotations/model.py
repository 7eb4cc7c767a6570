"""The annotation model: classes, points per class, and regions.

Points are kept normalised to [0, 1] (x by the image width, y by its height), as BreCaHAD
stores them, so the same annotations can be drawn on any rendition of the image. Regions
(polygons drawn by a user or imported from QuPath) are kept in level-0 pixels, as QuPath stores
them: BreCaHAD's layout has no regions, and a region is only ever used against one image.

An :class:`Annotations` value is treated as immutable once built: editing makes a new value
that shares the unchanged class arrays (cheap undo snapshots), see :meth:`Annotations.with_points`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

CLASSES: tuple[str, ...] = ("tumor", "non_tumor", "mitosis", "non_mitosis", "apoptosis", "lumen", "non_lumen")
"""The seven BreCaHAD classes, in the order the legend shows them."""

TUMOUR_CLASS = "tumor"
"""The class the ConvNet is trained to find (BreCaHAD spells it the American way)."""

IGNORE_CLASS = "ignore"
"""Regions of this class mark areas whose windows count as neither tumour nor non-tumour."""

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

IGNORE_COLOUR = (110, 110, 110)
"""Ignore regions are grey: they take windows out of both classes."""

_EXTRA_COLOURS = ((255, 255, 255), (180, 90, 255), (255, 90, 90), (0, 160, 130), (200, 200, 80))


def class_colour(name: str) -> tuple[int, int, int]:
    """Colour for a class; unknown classes get a stable colour from a spare palette."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    if name == IGNORE_CLASS:
        return IGNORE_COLOUR
    return _EXTRA_COLOURS[sum(name.encode()) % len(_EXTRA_COLOURS)]


def class_label(name: str) -> str:
    """Human-readable class name for legends: 'non_tumor' -> 'Non-tumour'."""
    text = name.replace("_", "-").replace("tumor", "tumour")
    return text[:1].upper() + text[1:]


@dataclass(frozen=True, eq=False)
class Region:
    """A polygonal area of one class, in level-0 pixel coordinates.

    ``rings`` are closed outlines given without repeating the first vertex; a position is
    inside the region when it is inside an odd number of them (the even-odd rule), so one
    Region holds a polygon with holes or several parts (a QuPath MultiPolygon) alike.
    """

    name: str
    rings: tuple[np.ndarray, ...]
    """Each ring an (N, 2) float64 array of (x, y), N >= 3."""

    @classmethod
    def polygon(cls, name: str, vertices: Iterable[Iterable[float]]) -> Region:
        """A one-ring region (what the polygon and freehand tools draw)."""
        return cls(name, (_ring(vertices),))

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the vertices."""
        xy = np.concatenate(self.rings)
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())

    def area(self) -> float:
        """Area in square level-0 pixels (even-odd: holes subtract, for non-crossing rings)."""
        return float(abs(sum(_signed_area(r) * _nesting_sign(r, self.rings) for r in self.rings)))

    def with_name(self, name: str) -> Region:
        return replace(self, name=name)


def _ring(vertices: Iterable[Iterable[float]]) -> np.ndarray:
    xy = np.array(list(vertices) if not isinstance(vertices, np.ndarray) else vertices, dtype=np.float64).reshape(-1, 2)
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]  # GeoJSON repeats the first position; the model does not
    if len(xy) < 3:
        raise ValueError(f"a region needs at least 3 vertices, got {len(xy)}")
    xy.setflags(write=False)
    return xy


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _nesting_sign(ring: np.ndarray, rings: tuple[np.ndarray, ...]) -> int:
    """+1 for an outer ring, -1 for a hole (inside an odd number of the other rings)."""
    from viewer.annotations.regions import points_in_rings

    others = tuple(r for r in rings if r is not ring)
    if not others:
        return 1
    inside = points_in_rings(ring[:1], others)[0]
    return -1 if inside else 1


@dataclass(eq=False)
class Annotations:
    """Annotated points per class, normalised to [0, 1] (x by width, y by height), and regions."""

    points: dict[str, np.ndarray] = field(default_factory=dict)
    """class name -> (N, 2) float64 array of normalised (x, y)."""
    source: Path | None = None
    notes: tuple[str, ...] = ()
    """Remarks about the parse, e.g. points skipped because they were outside the image."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level JSON entries that are not point lists, kept so saving loses nothing."""
    regions: tuple[Region, ...] = ()
    """Polygonal regions in level-0 pixels (from a GeoJSON file, a sidecar, or drawn)."""

    @property
    def classes(self) -> list[str]:
        """Known classes first in :data:`CLASSES` order, then any other classes in file order."""
        known = [c for c in CLASSES if c in self.points]
        return known + [c for c in self.points if c not in CLASSES]

    def counts(self) -> dict[str, int]:
        return {name: int(len(self.points[name])) for name in self.classes}

    def region_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for region in self.regions:
            counts[region.name] = counts.get(region.name, 0) + 1
        return counts

    def unknown_classes(self) -> list[str]:
        """Classes of points or regions that are neither BreCaHAD's seven nor ``ignore``."""
        names = [c for c in self.classes if c not in CLASSES]
        names += [r.name for r in self.regions if r.name not in CLASSES and r.name != IGNORE_CLASS]
        return list(dict.fromkeys(names))

    def normalised(self, name: str) -> np.ndarray:
        """(N, 2) normalised points of a class; empty for a class that is absent."""
        return self.points.get(name, np.empty((0, 2)))

    def pixel_points(self, name: str, width: int, height: int) -> np.ndarray:
        """(N, 2) float pixel coordinates (x, y) of a class on a width x height image."""
        return self.normalised(name) * np.array([width, height], dtype=np.float64)

    def with_points(self, points: Mapping[str, np.ndarray]) -> Annotations:
        """A copy with some classes' points replaced (the others shared, not copied)."""
        merged = dict(self.points)
        for name, array in points.items():
            array = np.array(array, dtype=np.float64).reshape(-1, 2)
            array.setflags(write=False)
            merged[name] = array
        return replace(self, points=merged)

    def with_regions(self, regions: Iterable[Region]) -> Annotations:
        return replace(self, regions=tuple(regions))

    def same_as(self, other: Annotations) -> bool:
        """Equal points per class (exactly) and equal regions: what undo/redo must restore."""
        if self.classes != other.classes or len(self.regions) != len(other.regions):
            return False
        if any(not np.array_equal(self.normalised(c), other.normalised(c)) for c in self.classes):
            return False
        for a, b in zip(self.regions, other.regions):
            if a.name != b.name or len(a.rings) != len(b.rings):
                return False
            if any(not np.array_equal(ra, rb) for ra, rb in zip(a.rings, b.rings)):
                return False
        return True

    def to_json_dict(self) -> dict[str, Any]:
        """BreCaHAD JSON: all seven classes, then other classes, then kept extra entries."""
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

    @classmethod
    def empty(cls) -> Annotations:
        """All seven classes, no points: where a user starts annotating a new image."""
        return cls(points={name: np.empty((0, 2)) for name in CLASSES})


def _points_to_json(points: np.ndarray) -> list[dict[str, float]]:
    # 6 decimals: 1e-6 of the image size, the resolution of BreCaHAD's own files.
    return [{"x": round(float(x), 6), "y": round(float(y), 6)} for x, y in points]

"""Edits of annotations as pure functions: old value + selection in, new value out.

The GUI's undo commands keep the value before and after an edit; because edits only replace
the arrays of the classes they touch (:meth:`Annotations.with_points`), those snapshots share
everything else, and undo/redo restore exactly the previous state. Being Qt-free, every edit is
tested without a window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from viewer.annotations.model import Annotations, Region


@dataclass(frozen=True)
class Selection:
    """Selected points (indices per class) and regions (indices into ``regions``)."""

    points: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    regions: tuple[int, ...] = ()

    @classmethod
    def of(cls, points: Mapping[str, Iterable[int]] | None = None, regions: Iterable[int] = ()) -> Selection:
        cleaned = {name: tuple(sorted({int(i) for i in idx})) for name, idx in (points or {}).items()}
        return cls({n: i for n, i in cleaned.items() if i}, tuple(sorted({int(r) for r in regions})))

    def __bool__(self) -> bool:
        return bool(self.points) or bool(self.regions)

    def count(self) -> int:
        return sum(len(i) for i in self.points.values()) + len(self.regions)

    def union(self, other: Selection) -> Selection:
        names = set(self.points) | set(other.points)
        return Selection.of({n: (*self.points.get(n, ()), *other.points.get(n, ())) for n in names},
                            (*self.regions, *other.regions))


def add_points(annotations: Annotations, name: str, xy: np.ndarray) -> tuple[Annotations, Selection]:
    """Append normalised points ``xy`` to class ``name``; the new points are selected."""
    old = annotations.normalised(name)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    new = annotations.with_points({name: np.concatenate([old, xy])})
    return new, Selection.of({name: range(len(old), len(old) + len(xy))})


def move(annotations: Annotations, selection: Selection, dx: float, dy: float, size: tuple[int, int]) -> Annotations:
    """Move the selection by (dx, dy) level-0 pixels (points stay within the image)."""
    width, height = size
    changed = {}
    for name, index in selection.points.items():
        xy = np.array(annotations.normalised(name))
        idx = list(index)
        xy[idx, 0] = np.clip(xy[idx, 0] + dx / width, 0.0, 1.0)
        xy[idx, 1] = np.clip(xy[idx, 1] + dy / height, 0.0, 1.0)
        changed[name] = xy
    regions = list(annotations.regions)
    for k in selection.regions:
        region = regions[k]
        regions[k] = Region(region.name, tuple(_frozen(r + np.array([dx, dy])) for r in region.rings))
    return annotations.with_points(changed).with_regions(regions)


def delete(annotations: Annotations, selection: Selection) -> Annotations:
    """Remove the selected points and regions (classes stay, possibly empty)."""
    changed = {}
    for name, index in selection.points.items():
        keep = np.ones(len(annotations.normalised(name)), dtype=bool)
        keep[list(index)] = False
        changed[name] = annotations.normalised(name)[keep]
    gone = set(selection.regions)
    regions = [r for k, r in enumerate(annotations.regions) if k not in gone]
    return annotations.with_points(changed).with_regions(regions)


def reclass(annotations: Annotations, selection: Selection, name: str) -> tuple[Annotations, Selection]:
    """Give the selected points and regions class ``name``; they stay selected.

    Points move to the end of ``name``'s list (in their previous order); regions keep their place.
    """
    moved = [annotations.normalised(n)[list(i)] for n, i in selection.points.items() if n != name]
    stripped = delete(annotations, Selection.of({n: i for n, i in selection.points.items() if n != name}))
    base = stripped.normalised(name)
    extra = np.concatenate(moved) if moved else np.empty((0, 2))
    result = stripped.with_points({name: np.concatenate([base, extra])})
    kept_here = [i for i in selection.points.get(name, ())]
    # Indices of ``name``'s own selected points are unchanged (only other classes lost points).
    new_points = {name: (*kept_here, *range(len(base), len(base) + len(extra)))}
    regions = [r.with_name(name) if k in set(selection.regions) else r for k, r in enumerate(annotations.regions)]
    return result.with_regions(regions), Selection.of(new_points, selection.regions)


def add_region(annotations: Annotations, region: Region) -> tuple[Annotations, Selection]:
    new = annotations.with_regions([*annotations.regions, region])
    return new, Selection.of(regions=[len(new.regions) - 1])


def points_in_rect(annotations: Annotations, rect: tuple[float, float, float, float], size: tuple[int, int],
                   classes: Iterable[str] | None = None) -> Selection:
    """Points (of ``classes``, default all) and regions lying inside ``rect`` = (x0, y0, x1, y1) px."""
    x0, y0, x1, y1 = rect
    width, height = size
    wanted = annotations.classes if classes is None else [c for c in annotations.classes if c in set(classes)]
    points = {}
    for name in wanted:
        xy = annotations.pixel_points(name, width, height)
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        points[name] = np.flatnonzero(inside)
    regions = []
    for k, region in enumerate(annotations.regions):
        if classes is not None and region.name not in set(classes):
            continue
        bx0, by0, bx1, by1 = region.bounds()
        if bx0 >= x0 and by0 >= y0 and bx1 <= x1 and by1 <= y1:
            regions.append(k)
    return Selection.of(points, regions)


def _frozen(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    xy.setflags(write=False)
    return xy

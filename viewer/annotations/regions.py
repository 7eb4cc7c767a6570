"""Which positions fall inside regions, and the regions of an image (for training and evaluation).

``points_in_regions`` is the test a window sampler needs: given the (x, y) level-0 centres of
windows, which of them lie inside, say, the ``ignore`` regions of the image. Each ring is
tested with matplotlib's compiled crossing-number test (``Path.contains_points``: the even-odd
rule) after a bounding-box test, in blocks of points; rings combine by XOR, so holes and
multi-part regions follow the even-odd rule too. About 1 s for every window centre of a
BreCaHAD image against a 500-corner freehand outline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from viewer.annotations.model import IGNORE_CLASS, Region

_BLOCK = 1 << 20
"""Points tested at once: bounds the temporaries whatever the number of window centres."""


def points_in_rings(xy: np.ndarray, rings: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean mask of the points inside an odd number of ``rings`` (the even-odd rule).

    A point exactly on an edge may fall either way (as in every crossing-number test); for
    32 px windows and hand-drawn outlines that does not matter.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(xy), dtype=bool)
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64)
        if len(ring) < 3 or not len(xy):
            continue
        x0, y0 = ring.min(axis=0)
        x1, y1 = ring.max(axis=0)
        candidates = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
        for start in range(0, len(candidates), _BLOCK):
            index = candidates[start : start + _BLOCK]
            inside[index] ^= _crossings_odd(xy[index], ring)
    return inside


def _crossings_odd(xy: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """For each point, whether a ray from it crosses the ring an odd number of times."""
    from matplotlib.path import Path as RingPath  # matplotlib's C++ point-in-path, no pyplot

    return RingPath(ring).contains_points(xy)


def points_in_regions(xy: np.ndarray, regions: Iterable[Region], names: Iterable[str] | None = None) -> np.ndarray:
    """Boolean mask: which (x, y) level-0 positions lie inside any of ``regions``.

    ``names`` limits the test to regions of those classes, e.g. ``{"ignore"}``. Each region
    follows the even-odd rule on its own rings (holes are outside); a point inside any region
    counts.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    wanted = None if names is None else set(names)
    inside = np.zeros(len(xy), dtype=bool)
    for region in regions:
        if wanted is not None and region.name not in wanted:
            continue
        todo = np.flatnonzero(~inside)
        if not len(todo):
            break
        inside[todo] = points_in_rings(xy[todo], region.rings)
    return inside


def ignored(xy: np.ndarray, regions: Iterable[Region]) -> np.ndarray:
    """Which window centres fall inside ``ignore`` regions: these count as neither label."""
    return points_in_regions(xy, regions, {IGNORE_CLASS})


def image_regions(image_path: str | Path, annotations_path: str | Path | None = None) -> list[Region]:
    """The regions of an image: class name (``ignore`` included) and rings in level-0 pixels.

    They come from the regions sidecar beside the image's annotations (``groundTruth/<stem>.json``
    → ``groundTruth/<stem>.regions.geojson``, see :func:`~viewer.annotations.brecahad.find_annotations_for`),
    or from ``annotations_path`` when given (a BreCaHAD JSON with its sidecar, or a GeoJSON file).
    An image without any is an empty list. A broken file raises
    :class:`~viewer.errors.AnnotationError` naming it.
    """
    from viewer.annotations.brecahad import find_annotations_for, regions_sidecar_for
    from viewer.annotations.files import read_regions

    if annotations_path is None:
        found = find_annotations_for(image_path)
        if found is None:
            return []
        annotations_path = found
    annotations_path = Path(annotations_path)
    if annotations_path.suffix.lower() == ".geojson":
        return list(read_regions(annotations_path))
    sidecar = regions_sidecar_for(annotations_path)
    if not sidecar.is_file():
        return []
    return list(read_regions(sidecar))

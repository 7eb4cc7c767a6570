"""Tumour regions (and optional tiles) of a heatmap as a QuPath-importable GeoJSON FeatureCollection.

Coordinates are level-0 pixels of the slide, origin at its top-left corner (QuPath's
convention for imported objects). Properties follow QuPath's GeoJSON (v0.4+):
``objectType`` ("annotation" / "detection"), ``classification`` ``{"name", "color"}`` and
``measurements`` as a name -> number object.

Regions are traced *exactly* along cell-square borders: cell ``(r, c)`` is the
``stride*scale`` square of level-0 pixels centred on its window centre (the squares the overlay
draws), and a region is the union of the squares of cells with ``p >= threshold`` (NaN cells
never count). The union's area therefore equals the number of those cells times the square's
area. Cells that touch only at a corner belong to separate rings (no self-touching rings, so
the geometry is valid for JTS/Shapely); rings that meet at a corner are grouped into one
MultiPolygon, so what looks like one region is one object in QuPath.

Memory: the heatmap is read in blocks of :data:`BLOCK_CELLS` cells (plus a one-cell halo), and
only the *boundary* is kept: straight runs of border edges, joined into rings across block
borders at the end. So memory follows the length of the region borders (what the file holds
anyway), never the number of cells of a whole-slide store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from viewer import PATCH_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from viewer.heatmap.data import HeatmapData

TUMOUR_CLASS = "Tumor"
"""QuPath's built-in class name (American spelling, like BreCaHAD's ``tumor``)."""

TUMOUR_COLOUR = (200, 0, 0)
"""QuPath's default colour of the Tumor class."""

PROBABILITY_MEASUREMENT = "tumour probability"

BLOCK_CELLS = 1024
"""Side of the blocks of cells read at once (4 MB of float32)."""

Ring = list[tuple[int, int]]
"""A closed ring of lattice vertices ``(j, i)`` (cell-border column, row), first != last."""


# ---------------------------------------------------------------------------------------------
# Boundary edges, block by block
# ---------------------------------------------------------------------------------------------
#
# Lattice vertex (j, i) is the corner shared by cells (i-1, j-1), (i-1, j), (i, j-1), (i, j).
# Every border edge of the thresholded mask is directed so that walking along it the region is
# on the side (-dy, dx) of the direction (dx, dy): the top edge of a cell runs +x, its right
# edge +y, its bottom edge -x, its left edge -y. Outer rings then have a positive shoelace
# area (in x = j, y = i coordinates, y downwards) and holes a negative one.


@dataclass
class _Edges:
    """Directed boundary runs: ``following[v] = w`` for ordinary vertices, and
    ``at_saddle[(v, direction)] = w`` where two runs leave ``v`` (cells touching at a corner)."""

    width: int  # lattice columns (cols + 1): vertex key = i * width + j
    following: dict[int, int]
    at_saddle: dict[tuple[int, tuple[int, int]], int]

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        for v, w in zip(starts.tolist(), ends.tolist()):
            if v in self.following:  # a second run leaving v: v is a saddle
                other = self.following.pop(v)
                self.at_saddle[(v, self._direction(v, other))] = other
                self.at_saddle[(v, self._direction(v, w))] = w
            elif any((v, d) in self.at_saddle for d in _DIRECTIONS):
                self.at_saddle[(v, self._direction(v, w))] = w
            else:
                self.following[v] = w

    def _direction(self, v: int, w: int) -> tuple[int, int]:
        (vi, vj), (wi, wj) = divmod(v, self.width), divmod(w, self.width)
        return (int(np.sign(wj - vj)), int(np.sign(wi - vi)))


_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _runs(edge: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along axis 1: (line index, first, one past last)."""
    padded = np.zeros((edge.shape[0], edge.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = edge
    step = np.diff(padded, axis=1)
    line, first = np.nonzero(step == 1)
    _, last = np.nonzero(step == -1)
    return line, first, last


def boundary_edges(heatmap: HeatmapData, threshold: float, block: int | None = None) -> _Edges:
    """All border runs of ``{p >= threshold}``, read block by block (default :data:`BLOCK_CELLS`)."""
    block = BLOCK_CELLS if block is None else max(1, int(block))
    rows, cols = heatmap.shape
    width = cols + 1
    edges = _Edges(width, {}, {})
    # Blocks tile the lattice [0, rows] x [0, cols]; each reads its cells plus one row above and
    # one column to the left, so every border edge is found in exactly one block.
    for r0 in range(0, rows + 1, block):
        r1 = min(r0 + block, rows + 1)
        for c0 in range(0, cols + 1, block):
            c1 = min(c0 + block, cols + 1)
            mask = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=bool)  # cells r0-1..r1-1, c0-1..c1-1
            rs, re, cs, ce = max(r0 - 1, 0), min(r1, rows), max(c0 - 1, 0), min(c1, cols)
            if re > rs and ce > cs:
                cells = heatmap.read(slice(rs, re), slice(cs, ce))
                with np.errstate(invalid="ignore"):
                    mask[rs - (r0 - 1) : re - (r0 - 1), cs - (c0 - 1) : ce - (c0 - 1)] = cells >= threshold
            _block_edges(edges, mask, r0, c0, rows, cols)
    return edges


def _block_edges(edges: _Edges, mask: np.ndarray, r0: int, c0: int, rows: int, cols: int) -> None:
    width = edges.width
    n_lines, n_cols = mask.shape[0] - 1, mask.shape[1] - 1  # lattice lines i in r0.., j in c0..
    # Horizontal edges on line i between cell rows i-1 (above) and i (below), columns j < cols.
    above, below = mask[:-1, 1:], mask[1:, 1:]
    keep_j = (c0 + np.arange(n_cols)) < cols
    for region_below, forward in ((below & ~above, True), (above & ~below, False)):
        line, first, last = _runs(region_below & keep_j[None, :])
        i, j0, j1 = r0 + line, c0 + first, c0 + last
        if forward:  # top edges of cells: +x
            edges.add(i * width + j0, i * width + j1)
        else:  # bottom edges: -x
            edges.add(i * width + j1, i * width + j0)
    # Vertical edges on line j between cell columns j-1 (left) and j (right), rows i < rows.
    left, right = mask[1:, :-1], mask[1:, 1:]
    keep_i = (r0 + np.arange(n_lines)) < rows
    for region_left, down in ((left & ~right, True), (right & ~left, False)):
        line, first, last = _runs((region_left & keep_i[:, None]).T)
        j, i0, i1 = c0 + line, r0 + first, r0 + last
        if down:  # right edges of cells: +y
            edges.add(i0 * width + j, i1 * width + j)
        else:  # left edges: -y
            edges.add(i1 * width + j, i0 * width + j)


# ---------------------------------------------------------------------------------------------
# Rings
# ---------------------------------------------------------------------------------------------


def trace_rings(edges: _Edges) -> list[Ring]:
    """Join the runs into simple closed rings (collinear vertices removed).

    At a saddle the walk turns towards the region (direction ``(-dy, dx)``), so cells that
    touch only at a corner end up in separate rings; a ring that still meets itself at a corner
    (a hole touching its outer ring) is split there into two simple rings.
    """
    width = edges.width
    following, at_saddle = edges.following, edges.at_saddle
    rings: list[Ring] = []
    while following or at_saddle:
        if following:
            start, current = following.popitem()
        else:
            (start, _), current = at_saddle.popitem()
        walk = [start]
        previous = start
        while current != start or _leaves(current, previous, width, following, at_saddle):
            walk.append(current)
            nxt = following.pop(current, None)
            if nxt is None:
                dx, dy = _step(previous, current, width)
                nxt = at_saddle.pop((current, (-dy, dx)))
            previous, current = current, nxt
        for loop in _split_at_repeats(walk):
            ring = _drop_collinear([divmod(v, width)[::-1] for v in loop])
            if len(ring) >= 4:
                rings.append(ring)
    return rings


def _leaves(vertex: int, previous: int, width: int, following: dict, at_saddle: dict) -> bool:
    """Whether the walk goes on from ``vertex`` (back at the start: only through a saddle
    whose turn leads to a run not yet walked)."""
    if vertex in following:
        return True
    dx, dy = _step(previous, vertex, width)
    return (vertex, (-dy, dx)) in at_saddle


def _step(a: int, b: int, width: int) -> tuple[int, int]:
    (ai, aj), (bi, bj) = divmod(a, width), divmod(b, width)
    return (int(np.sign(bj - aj)), int(np.sign(bi - ai)))


def _split_at_repeats(walk: list[int]) -> Iterator[list[int]]:
    """Simple loops of a closed walk that may visit a vertex more than once."""
    stack: list[int] = []
    position: dict[int, int] = {}
    for v in walk:
        if v in position:
            at = position[v]
            loop = stack[at:]
            for u in loop[1:]:
                del position[u]
            del stack[at + 1 :]
            yield loop
        else:
            position[v] = len(stack)
            stack.append(v)
    if stack:
        yield stack


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    n = len(ring)
    out = []
    for k in range(n):
        (ax, ay), (bx, by), (cx, cy) = ring[k - 1], ring[k], ring[(k + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            out.append(ring[k])
    return out


def signed_area(ring: Ring) -> float:
    """Shoelace area in lattice units (cells): positive for outer rings, negative for holes."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


def _first_edge_to_the_right(rings: list[Ring], width: int):
    """An index of every ring's vertical edges by cell row: ``query(i, j)`` gives, for cell rows
    ``i`` and lattice columns ``j`` (arrays), the ring of the first vertical edge right of ``j``."""
    pieces = [[], [], [], []]
    for k, ring in enumerate(rings):
        a = np.asarray(ring, dtype=np.int64)
        b = np.concatenate([a[1:], a[:1]])
        vertical = a[:, 0] == b[:, 0]
        pieces[0].append(a[vertical, 0])
        pieces[1].append(np.minimum(a[vertical, 1], b[vertical, 1]))
        pieces[2].append(np.maximum(a[vertical, 1], b[vertical, 1]))
        pieces[3].append(np.full(int(vertical.sum()), k, dtype=np.int64))
    j, lo, hi, ring_of = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in pieces)
    # One entry per (cell row, edge): memory follows the length of the borders.
    lengths = hi - lo
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keys = (np.repeat(lo, lengths) + offsets) * (width + 1) + np.repeat(j, lengths)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], np.repeat(ring_of, lengths)[order]

    def query(i: np.ndarray, jq: np.ndarray) -> np.ndarray:
        at = np.searchsorted(keys, np.asarray(i) * (width + 1) + np.asarray(jq), side="right")
        return owners[at]

    return query


def group_polygons(rings: Iterable[Ring], saddles: Iterable[int] = (), width: int = 1) -> list[list[list[Ring]]]:
    """Rings -> regions: each a list of polygons ``[outer, *holes]``.

    A hole belongs to the outer ring of the region around it: walking right from the hole's
    rightmost edge through that region, the first border met is the region's outer ring or
    another of its holes, further right (whose owner is then found the same way). Polygons that
    meet at a corner (a saddle vertex) form one region (a MultiPolygon).
    """
    rings = list(rings)
    areas = np.array([signed_area(r) for r in rings])
    is_shell = areas > 0
    owner = np.where(is_shell, np.arange(len(rings)), -1)
    holes = np.flatnonzero(~is_shell)
    if len(holes):
        query = _first_edge_to_the_right(rings, width)
        probe_i, probe_j = np.empty(len(holes), np.int64), np.empty(len(holes), np.int64)
        for n, h in enumerate(holes):
            a = np.asarray(rings[h], dtype=np.int64)
            b = np.concatenate([a[1:], a[:1]])
            vertical = np.flatnonzero(a[:, 0] == b[:, 0])
            right = vertical[np.argmax(a[vertical, 0])]
            probe_j[n], probe_i[n] = a[right, 0], min(a[right, 1], b[right, 1])
        hit = query(probe_i, probe_j)
        # Resolve from the rightmost holes leftwards: a hole's hit lies further right.
        for n in np.argsort(-probe_j, kind="stable"):
            owner[holes[n]] = owner[hit[n]]
    shells = np.flatnonzero(is_shell)
    index = {int(k): n for n, k in enumerate(shells)}
    polygons: list[list[Ring]] = [[rings[k]] for k in shells]
    owned: list[tuple[int, Ring]] = [(n, rings[k]) for n, k in enumerate(shells)]
    for h in holes:
        n = index[int(owner[h])]
        polygons[n].append(rings[h])
        owned.append((n, rings[h]))
    # Regions: union-find over polygons meeting at a corner (a saddle vertex), whether at their
    # outer rings or where an island touches the rim of a hole.
    parent = list(range(len(polygons)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    corner = {(v % width, v // width) for v in saddles}
    seen: dict[tuple[int, int], int] = {}
    for k, ring in owned:
        for vertex in ring:
            if vertex in corner:
                if vertex in seen:
                    parent[find(k)] = find(seen[vertex])
                else:
                    seen[vertex] = k
    regions: dict[int, list[list[Ring]]] = {}
    for k in range(len(polygons)):
        regions.setdefault(find(k), []).append(polygons[k])
    return list(regions.values())


# ---------------------------------------------------------------------------------------------
# Level-0 coordinates and features
# ---------------------------------------------------------------------------------------------


def lattice_positions(heatmap: HeatmapData, bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 x of every cell-border column and y of every cell-border row, clipped to the slide
    (whole numbers as integers, so the usual even stride at scale 1 writes no decimals)."""
    grid = heatmap.grid
    rows, cols = grid.shape
    half = PATCH_SIZE / 2 - grid.stride / 2
    xs = grid.origin[0] + (half + grid.stride * np.arange(cols + 1)) * grid.scale
    ys = grid.origin[1] + (half + grid.stride * np.arange(rows + 1)) * grid.scale
    return _compact(np.clip(xs, 0, bounds[0])), _compact(np.clip(ys, 0, bounds[1]))


def _compact(values: np.ndarray) -> np.ndarray:
    rounded = np.round(values, 3)
    return rounded.astype(np.int64) if np.all(rounded == np.floor(rounded)) else rounded


def _level0_ring(ring: Ring, xs: np.ndarray, ys: np.ndarray) -> list[list[float]] | None:
    jj, ii = np.asarray(ring, dtype=np.int64).T
    points = np.stack([xs[jj], ys[ii]], axis=1)
    # Clipping at the slide edge can merge neighbouring vertices: keep each position once.
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep]
    if len(points) < 3:
        return None
    points = points.tolist()
    return points + [points[0]]  # GeoJSON rings repeat their first position


def region_geometries(heatmap: HeatmapData, threshold: float, bounds: tuple[int, int]) -> list[dict]:
    """GeoJSON geometries (Polygon or MultiPolygon) of the regions with ``p >= threshold``."""
    edges = boundary_edges(heatmap, threshold)
    saddles = {v for v, _ in edges.at_saddle}
    rings = trace_rings(edges)
    xs, ys = lattice_positions(heatmap, bounds)
    geometries = []
    for region in group_polygons(rings, saddles, edges.width):
        polygons = []
        for polygon in region:
            converted = [_level0_ring(r, xs, ys) for r in polygon]
            if converted[0] is None:
                continue
            polygons.append([r for r in converted if r is not None])
        if len(polygons) == 1:
            geometries.append({"type": "Polygon", "coordinates": polygons[0]})
        elif polygons:
            geometries.append({"type": "MultiPolygon", "coordinates": polygons})
    return geometries


def tumour_features(heatmap: HeatmapData, threshold: float, bounds: tuple[int, int]) -> list[dict]:
    """One QuPath annotation (class Tumor) per region."""
    properties = {"objectType": "annotation", "classification": {"name": TUMOUR_CLASS, "color": list(TUMOUR_COLOUR)}}
    return [{"type": "Feature", "geometry": g, "properties": properties} for g in region_geometries(heatmap, threshold, bounds)]


def tile_features(heatmap: HeatmapData, cell_size: int, bounds: tuple[int, int], threshold: float) -> Iterator[dict]:
    """Square tiles of ``cell_size`` level-0 px (a grid anchored at the slide's top-left) as
    QuPath detections with the mean probability of the cells whose centres fall inside.

    Tiles whose cells are all NaN (background, not computed) are left out; tiles with a mean of
    at least ``threshold`` are classified Tumor. Read block by block (whole tile rows).
    """
    grid = heatmap.grid
    rows, cols = grid.shape
    if rows == 0 or cols == 0:
        return
    size = int(cell_size)
    centre_x, centre_y = grid.cell_centre_level0(np.arange(rows), np.arange(cols))
    tile_of_col = np.floor(np.asarray(centre_x, dtype=np.float64) / size).astype(np.int64)
    tile_of_row = np.floor(np.asarray(centre_y, dtype=np.float64) / size).astype(np.int64)
    # Blocks of whole tiles, about BLOCK_CELLS cells on a side.
    tiles_per_block = max(1, int(BLOCK_CELLS * grid.stride * grid.scale // size))
    width, height = bounds
    for ty0 in range(int(tile_of_row[0]), int(tile_of_row[-1]) + 1, tiles_per_block):
        r0, r1 = np.searchsorted(tile_of_row, [ty0, ty0 + tiles_per_block])
        if r1 <= r0:
            continue
        for tx0 in range(int(tile_of_col[0]), int(tile_of_col[-1]) + 1, tiles_per_block):
            c0, c1 = np.searchsorted(tile_of_col, [tx0, tx0 + tiles_per_block])
            if c1 <= c0:
                continue
            cells = heatmap.read(slice(int(r0), int(r1)), slice(int(c0), int(c1)))
            finite = np.isfinite(cells)
            ty = tile_of_row[r0:r1] - ty0
            tx = tile_of_col[c0:c1] - tx0
            n_ty, n_tx = int(ty[-1]) + 1, int(tx[-1]) + 1
            flat = (ty[:, None] * n_tx + tx[None, :])[finite]
            sums = np.bincount(flat, weights=cells[finite].astype(np.float64), minlength=n_ty * n_tx)
            counts = np.bincount(flat, minlength=n_ty * n_tx)
            for k in np.flatnonzero(counts):
                y_tile, x_tile = divmod(int(k), n_tx)
                x0, y0 = (tx0 + x_tile) * size, (ty0 + y_tile) * size
                x1, y1 = min(x0 + size, width), min(y0 + size, height)
                mean = float(sums[k] / counts[k])
                properties: dict = {"objectType": "detection"}
                if mean >= threshold:
                    properties["classification"] = {"name": TUMOUR_CLASS, "color": list(TUMOUR_COLOUR)}
                properties["measurements"] = {PROBABILITY_MEASUREMENT: round(mean, 6)}
                ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
                yield {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def write_feature_collection(path: str | Path, features: Iterable[dict], *, force: bool = False) -> int:
    """Write a FeatureCollection feature by feature (atomically); returns the number written."""
    from viewer.atomic import atomic_output

    count = 0
    with atomic_output(path, force=force) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for feature in features:
            f.write(",\n" if count else "\n")
            f.write(json.dumps(feature, separators=(",", ":")))
            count += 1
        f.write("\n]}\n")
    return count


def check_threshold(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"threshold must be between 0 and 1, got {value}")
    return float(value)

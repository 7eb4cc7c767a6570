"""Ignore regions in training and evaluation: windows whose centre lies in one count as neither label.

A user marks an ``ignore`` region (:data:`viewer.annotations.IGNORE_CLASS`) where the
annotation cannot be trusted (a fold, a blurred or unannotated area). Its windows are removed
from *both* classes everywhere a label is read from the annotations:

* training: no tumour window is centred on a point inside it, no non-tumour window (uniform,
  hard, off-centre or mined) has its centre inside it;
* evaluation: its tumour points give no patch, its windows are no negative patch, and its
  heatmap cells are neither positive nor negative windows of the heatmap AUC.

"Inside" is decided at the window *centre* ``(x0 + 16, y0 + 16)``, the pixel a heatmap cell is
drawn at, so what the user sees hatched is exactly what is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from viewer import PATCH_SIZE


def ignored_centres(xy: np.ndarray, regions: Sequence) -> np.ndarray:
    """Which (x, y) positions lie in an ignore region (all False without regions, at no cost)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not regions or not len(xy):
        return np.zeros(len(xy), dtype=bool)
    from viewer.annotations import ignored

    return ignored(xy, regions)


def ignored_window_mask(regions: Sequence, shape: tuple[int, int], stride: int) -> np.ndarray | None:
    """Boolean (rows, cols): windows of a stride-``stride`` grid whose centre is in an ignore
    region; ``None`` when there are no ignore regions (the common case costs nothing).

    ``stride=1`` gives the mask over every top-left pixel, used to sample training negatives.
    """
    from viewer.annotations import IGNORE_CLASS

    regions = [r for r in regions if r.name == IGNORE_CLASS]
    if not regions:
        return None
    rows, cols = shape
    half = PATCH_SIZE / 2.0
    # Only the window centres inside the regions' bounding box are tested: a small region on a
    # large image costs what the region covers.
    x0 = min(r.bounds()[0] for r in regions)
    y0 = min(r.bounds()[1] for r in regions)
    x1 = max(r.bounds()[2] for r in regions)
    y1 = max(r.bounds()[3] for r in regions)
    c0, c1 = max(int(np.floor((x0 - half) / stride)), 0), min(int(np.ceil((x1 - half) / stride)), cols - 1)
    r0, r1 = max(int(np.floor((y0 - half) / stride)), 0), min(int(np.ceil((y1 - half) / stride)), rows - 1)
    mask = np.zeros((rows, cols), dtype=bool)
    if c0 > c1 or r0 > r1:
        return mask
    cc, rr = np.meshgrid(np.arange(c0, c1 + 1) * stride + half, np.arange(r0, r1 + 1) * stride + half)
    inside = ignored_centres(np.stack([cc.ravel(), rr.ravel()], axis=1), regions)
    mask[r0 : r1 + 1, c0 : c1 + 1] = inside.reshape(cc.shape)
    return mask

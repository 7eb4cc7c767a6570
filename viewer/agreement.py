"""How well a heatmap agrees with the annotations of an image (Qt-free; the GUI shows it).

* Per class: the mean heatmap probability at the class's annotated points. Each point samples
  the cell whose window centre ``(stride*c + 16, stride*r + 16)`` is nearest to it; points
  whose nearest centre falls outside the heatmap (within 16 - stride/2 px of the left/top
  border, or past the last window on the right/bottom) are skipped, and so are points whose
  cell is NaN (not computed yet).
* The heatmap's ROC AUC against the tumour points, with exactly the positive/negative window
  definition of ``histoviewer evaluate`` (:func:`viewer.metrics.heatmap_window_labels`);
  NaN cells are ignored, so a partially computed heatmap gives the AUC of what is done.
  Windows centred in ``ignore`` regions count as neither label, and tumour points inside them
  give no positive window (:mod:`viewer.dataset.ignore`, as in ``evaluate``); the per-class
  means still include every point the user placed.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from viewer import DEFAULT_STRIDE, PATCH_SIZE
from viewer.annotations import IGNORE_CLASS, TUMOUR_CLASS, Annotations
from viewer.heatmap.engine import heatmap_shape
from viewer.metrics import all_class_points, heatmap_scores_and_labels, roc_auc


@dataclass(frozen=True)
class ClassAgreement:
    name: str
    points: int
    """Annotated points of the class."""
    sampled: int
    """Points that fell on a computed (non-NaN) heatmap cell."""
    mean_probability: float
    """Mean P(tumour) at the sampled points; NaN when none were sampled."""


@dataclass(frozen=True)
class AgreementResult:
    classes: tuple[ClassAgreement, ...]
    auc: float
    """Heatmap ROC AUC against the tumour points; NaN when positives or negatives are missing."""
    positive_windows: int
    negative_windows: int
    stride: int

    def by_class(self) -> dict[str, ClassAgreement]:
        return {c.name: c for c in self.classes}


def sample_at_points(heatmap: np.ndarray, points: np.ndarray, stride: int = DEFAULT_STRIDE) -> np.ndarray:
    """Heatmap value at the cell whose window centre is nearest each point; NaN if outside.

    ``points`` is (N, 2) pixel (x, y); returns (N,) float64.
    """
    hm = np.asarray(heatmap, dtype=np.float64)
    rows, cols = hm.shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    half = PATCH_SIZE / 2.0
    # floor(v + 0.5): ties go to the right/lower cell, deterministically.
    c = np.floor((pts[:, 0] - half) / stride + 0.5).astype(np.int64)
    r = np.floor((pts[:, 1] - half) / stride + 0.5).astype(np.int64)
    inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    out = np.full(len(pts), np.nan)
    out[inside] = hm[r[inside], c[inside]]
    return out


def agreement(
    heatmap: np.ndarray,
    annotations: Annotations,
    image_width: int,
    image_height: int,
    stride: int = DEFAULT_STRIDE,
) -> AgreementResult:
    """Per-class mean probability at annotated points and the heatmap AUC (see module docs)."""
    hm = np.asarray(heatmap, dtype=np.float64)
    expected = heatmap_shape(image_height, image_width, stride)
    if hm.shape != expected:
        raise ValueError(
            f"heatmap shape {hm.shape} does not match a {image_width}x{image_height} image at stride {stride} "
            f"(expected {expected})"
        )
    per_class = []
    for name in annotations.classes:
        pts = annotations.pixel_points(name, image_width, image_height)
        values = sample_at_points(hm, pts, stride)
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else math.nan
        per_class.append(ClassAgreement(name, int(len(pts)), int(finite.size), mean))
    tumour = annotations.pixel_points(TUMOUR_CLASS, image_width, image_height)
    everything = all_class_points(annotations, image_width, image_height)
    # Windows centred in ignore regions count as neither label, as in 'histoviewer evaluate'.
    from viewer.dataset.ignore import ignored_centres, ignored_window_mask

    ignore = [r for r in annotations.regions if r.name == IGNORE_CLASS]
    if ignore:
        tumour = tumour[~ignored_centres(tumour, ignore)]
    labels, scores = heatmap_scores_and_labels(hm, tumour, everything, stride,
                                               ignored_window_mask(ignore, hm.shape, stride))
    return AgreementResult(
        classes=tuple(per_class),
        auc=roc_auc(labels, scores) if labels.size else math.nan,
        positive_windows=int((labels == 1).sum()),
        negative_windows=int((labels == 0).sum()),
        stride=int(stride),
    )


CSV_COLUMNS = ("row", "class", "points", "sampled_points", "mean_probability", "auc", "positive_windows", "negative_windows")


def agreement_csv_text(result: AgreementResult) -> str:
    """The CSV that :func:`agreement_to_csv` writes: one row per class, then one AUC row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in result.classes:
        writer.writerow(["class", c.name, c.points, c.sampled, _num(c.mean_probability), "", "", ""])
    writer.writerow(["heatmap_auc", TUMOUR_CLASS, "", "", "", _num(result.auc), result.positive_windows, result.negative_windows])
    return buf.getvalue()


def agreement_to_csv(result: AgreementResult, path: str | Path, force: bool = True) -> None:
    """Write :func:`agreement_csv_text` atomically (empty cells mean 'not applicable')."""
    from viewer.atomic import atomic_output

    text = agreement_csv_text(result)
    with atomic_output(path, force=force, suffix=".csv") as tmp:
        tmp.write_text(text, encoding="utf-8")


def _num(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"

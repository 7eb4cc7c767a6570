"""Classification metrics and the heatmap window labelling shared by evaluate and agreement.

Pure numpy (no scikit-learn): ROC AUC via the rank-sum (Mann-Whitney U) formula with average
ranks for ties, so it equals the area under the exact ROC curve, ties counted as half.

The heatmap labelling (:func:`heatmap_window_labels`) is the single definition used by
``histoviewer evaluate`` (heatmap AUC) and by :mod:`viewer.agreement` (the GUI panel):

* **positive**: the window's *centre* ``(stride*c + 16, stride*r + 16)`` lies within
  :data:`POSITIVE_RADIUS` px (Euclidean, inclusive) of a tumour point;
* **negative**: no annotated point of *any* class lies inside the window expanded by
  :data:`NEGATIVE_MARGIN` px on every side, i.e. no point with
  ``x0 - 4 <= px <= x0 + 32 + 4`` and ``y0 - 4 <= py <= y0 + 32 + 4`` (closed bounds);
* everything else is ignored (label -1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from viewer import DEFAULT_STRIDE, PATCH_SIZE

POSITIVE_RADIUS = 8.0
"""A heatmap window is a positive when its centre is at most this many px from a tumour point."""

NEGATIVE_MARGIN = 4.0
"""A window is a negative when no annotated point lies inside it expanded by this many px."""

IGNORE = -1
"""Label of windows that are neither positive nor negative."""


def _as_1d(values, name: str) -> np.ndarray:
    """``values`` as a flat float64 array; a ValueError that names the argument otherwise."""
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers ({exc})") from None


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive).

    Ties between a positive and a negative score count one half (average ranks). Returns NaN
    when either class is absent. NaN scores are not allowed (filter them first).
    """
    y = _as_1d(labels, "labels")
    s = _as_1d(scores, "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end), 1-based
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def confusion_matrix(labels, predictions) -> list[list[int]]:
    """2x2 confusion matrix ``[[TN, FP], [FN, TP]]`` (rows = truth, columns = prediction)."""
    y = _as_1d(labels, "labels").astype(int)
    p = _as_1d(predictions, "predictions").astype(int)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length ({y.size} vs {p.size})")
    tn = int(((y == 0) & (p == 0)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    tp = int(((y == 1) & (p == 1)).sum())
    return [[tn, fp], [fn, tp]]


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Fraction of windows classified correctly with ``score >= threshold`` as tumour."""
    y = _as_1d(labels, "labels")
    s = _as_1d(scores, "scores")
    if y.size == 0:
        return float("nan")
    return float(((s >= threshold).astype(int) == y.astype(int)).mean())


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """accuracy, auc, confusion and counts in one JSON-ready dict."""
    y = _as_1d(labels, "labels")
    s = _as_1d(scores, "scores")
    pred = (s >= threshold).astype(int)
    return {
        "accuracy": _finite_or_none(accuracy(y, s, threshold)),
        "auc": _finite_or_none(roc_auc(y, s)),
        "confusion": confusion_matrix(y, pred),
        "confusion_layout": "[[TN, FP], [FN, TP]] (rows truth, columns prediction at threshold)",
        "threshold": threshold,
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# --------------------------------------------------------------------------- heatmap labelling


def clear_window_mask(
    points: np.ndarray, shape: tuple[int, int], stride: int = DEFAULT_STRIDE, margin: float = NEGATIVE_MARGIN
) -> np.ndarray:
    """Boolean (rows, cols): True where window (r, c) has no point inside it expanded by ``margin``.

    ``points`` is (N, 2) pixel (x, y). Window (r, c) spans x in [stride*c, stride*c + 32]; the
    point blocks it when ``stride*c - margin <= x <= stride*c + 32 + margin`` (same for y).
    ``stride=1`` gives the mask over every top-left pixel, used to sample training negatives.
    """
    rows, cols = shape
    blocked = np.zeros((rows + 1, cols + 1), dtype=np.int32)  # 2-D difference array
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    span = PATCH_SIZE + margin
    for x, y in pts:
        c0 = max(int(np.ceil((x - span) / stride)), 0)
        c1 = min(int(np.floor((x + margin) / stride)), cols - 1)
        r0 = max(int(np.ceil((y - span) / stride)), 0)
        r1 = min(int(np.floor((y + margin) / stride)), rows - 1)
        if c0 > c1 or r0 > r1:
            continue
        blocked[r0, c0] += 1
        blocked[r0, c1 + 1] -= 1
        blocked[r1 + 1, c0] -= 1
        blocked[r1 + 1, c1 + 1] += 1
    counts = blocked.cumsum(axis=0).cumsum(axis=1)[:rows, :cols]
    return counts == 0


def near_centre_mask(
    points: np.ndarray, shape: tuple[int, int], stride: int = DEFAULT_STRIDE, radius: float = POSITIVE_RADIUS
) -> np.ndarray:
    """Boolean (rows, cols): True where window centre is within ``radius`` px of any point."""
    rows, cols = shape
    mask = np.zeros((rows, cols), dtype=bool)
    half = PATCH_SIZE / 2.0
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for x, y in pts:
        c0 = max(int(np.ceil((x - half - radius) / stride)), 0)
        c1 = min(int(np.floor((x - half + radius) / stride)), cols - 1)
        r0 = max(int(np.ceil((y - half - radius) / stride)), 0)
        r1 = min(int(np.floor((y - half + radius) / stride)), rows - 1)
        if c0 > c1 or r0 > r1:
            continue
        cc = np.arange(c0, c1 + 1) * stride + half
        rr = np.arange(r0, r1 + 1) * stride + half
        d2 = (cc[None, :] - x) ** 2 + (rr[:, None] - y) ** 2
        mask[r0 : r1 + 1, c0 : c1 + 1] |= d2 <= radius * radius + 1e-9
    return mask


def heatmap_window_labels(
    tumour_points: np.ndarray,
    all_points: np.ndarray,
    shape: tuple[int, int],
    stride: int = DEFAULT_STRIDE,
) -> np.ndarray:
    """int8 (rows, cols): 1 positive, 0 negative, -1 ignored (see the module docstring).

    ``tumour_points`` and ``all_points`` (every class, tumour included) are (N, 2) pixel (x, y).
    """
    labels = np.full(shape, IGNORE, dtype=np.int8)
    labels[clear_window_mask(all_points, shape, stride)] = 0
    labels[near_centre_mask(tumour_points, shape, stride)] = 1
    return labels


def heatmap_scores_and_labels(
    heatmap: np.ndarray, tumour_points: np.ndarray, all_points: np.ndarray, stride: int = DEFAULT_STRIDE,
    ignored: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (labels, scores) of the labelled, already-computed (non-NaN) cells of one heatmap.

    ``ignored``: a boolean grid of the heatmap's shape, True for windows that count as neither
    label whatever the points say (windows centred in an ignore region, see
    :func:`viewer.dataset.ignore.ignored_window_mask`)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    labels = heatmap_window_labels(tumour_points, all_points, heatmap.shape, stride)
    if ignored is not None:
        labels[np.asarray(ignored, dtype=bool)] = IGNORE
    keep = (labels != IGNORE) & np.isfinite(heatmap)
    return labels[keep].astype(np.int8), heatmap[keep]


def heatmap_auc(
    heatmap: np.ndarray, tumour_points: np.ndarray, all_points: np.ndarray, stride: int = DEFAULT_STRIDE
) -> float:
    """ROC AUC of one heatmap against the window labels; NaN cells are ignored."""
    labels, scores = heatmap_scores_and_labels(heatmap, tumour_points, all_points, stride)
    return roc_auc(labels, scores)


def pooled_heatmap_auc(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """AUC over the (labels, scores) of several heatmaps pooled together (from
    :func:`heatmap_scores_and_labels`): the one pooled heatmap AUC of evaluate and train."""
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for lab, sc in pairs:
        labels.append(np.asarray(lab))
        scores.append(np.asarray(sc))
    if not labels:
        return float("nan")
    return roc_auc(np.concatenate(labels), np.concatenate(scores))


def all_class_points(annotations, width: int, height: int, classes: Sequence[str] | None = None) -> np.ndarray:
    """(N, 2) pixel points of every class of ``annotations`` stacked together."""
    names = list(classes) if classes is not None else list(annotations.classes)
    arrays = [annotations.pixel_points(name, width, height) for name in names]
    arrays = [a for a in arrays if len(a)]
    return np.concatenate(arrays, axis=0) if arrays else np.empty((0, 2))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_intervals(
    patches: Sequence[tuple[np.ndarray, np.ndarray]],
    windows: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
) -> dict:
    """Percentile bootstrap intervals of the pooled patch accuracy and AUC and, with ``windows``,
    of the pooled heatmap AUC, resampling whole *units* (images) with replacement.

    ``patches`` and ``windows`` hold one ``(labels, scores)`` pair per unit, in the same order.
    Each resample draws as many units as there are, with replacement, from
    ``numpy.random.default_rng(seed)``, and recomputes every figure over the drawn units pooled
    (a unit drawn twice counts twice). With few units the interval is coarse: 4 images allow
    only 35 distinct resamples.
    """
    n_units = len(patches)
    if n_units == 0 or resamples < 1:
        raise ValueError("the bootstrap needs at least one unit and one resample")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(int(resamples), n_units))
    counts = np.zeros((int(resamples), n_units))
    np.add.at(counts, (np.repeat(np.arange(int(resamples)), n_units), draws.ravel()), 1.0)
    labels = [_as_1d(y, "labels") for y, _ in patches]
    scores = [_as_1d(s, "scores") for _, s in patches]
    correct = np.array([((s >= threshold).astype(int) == y.astype(int)).sum() for y, s in zip(labels, scores)], float)
    sizes = np.array([y.size for y in labels], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (counts @ correct) / (counts @ sizes)
    out = {"method": "percentile bootstrap", "resamples": int(resamples), "seed": int(seed), "level": level,
           "units": n_units}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out["accuracy"] = _percentiles(acc, q)
    out["auc"] = _percentiles(_weighted_aucs(labels, scores, counts), q)
    if windows is not None:
        out["heatmap_auc"] = _percentiles(_weighted_aucs([_as_1d(y, "labels") for y, _ in windows],
                                                         [_as_1d(s, "scores") for _, s in windows], counts), q)
    return out


def _percentiles(values: np.ndarray, q: list[float]) -> list[float] | None:
    finite = values[np.isfinite(values)]
    return [round(float(v), 6) for v in np.percentile(finite, q)] if finite.size else None


def _weighted_aucs(labels: list[np.ndarray], scores: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The pooled ROC AUC for every row of ``counts`` (units x weights), units weighted by count.

    One sort for all resamples: the scores are cut into runs of equal value; per run and unit the
    positives and negatives are counted; a resample's AUC is then the Mann-Whitney sum over runs
    of ``P_run * (negatives below + N_run / 2)``, ties counting one half as in :func:`roc_auc`."""
    n_units = len(labels)
    s = np.concatenate(scores)
    y = np.concatenate(labels) == 1
    unit = np.concatenate([np.full(v.size, i) for i, v in enumerate(labels)])
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    run = np.concatenate([[0], np.cumsum(s_sorted[1:] != s_sorted[:-1])])
    n_runs = int(run[-1]) + 1 if run.size else 0
    key = run * n_units + unit[order]
    pos = np.bincount(key[y[order]], minlength=n_runs * n_units).reshape(n_runs, n_units).astype(np.float32)
    neg = np.bincount(key[~y[order]], minlength=n_runs * n_units).reshape(n_runs, n_units).astype(np.float32)
    out = np.empty(len(counts))
    chunk = max(1, min(64, 4_000_000 // max(n_runs, 1)))  # bounds the (runs x resamples) arrays to ~32 MB
    for start in range(0, len(counts), chunk):
        w = counts[start : start + chunk].T.astype(np.float32)  # (units, resamples)
        p, n = (pos @ w).astype(np.float64), (neg @ w).astype(np.float64)
        below = np.cumsum(n, axis=0) - n
        u = (p * (below + 0.5 * n)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + chunk] = u / (p.sum(axis=0) * n.sum(axis=0))
    return out

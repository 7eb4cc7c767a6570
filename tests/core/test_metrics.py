"""viewer.metrics: ROC AUC with ties, confusion, accuracy, and the heatmap window labelling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viewer.heatmap import heatmap_shape
from viewer.metrics import (
    IGNORE,
    accuracy,
    binary_metrics,
    clear_window_mask,
    confusion_matrix,
    heatmap_auc,
    heatmap_window_labels,
    near_centre_mask,
    roc_auc,
)


def brute_force_auc(labels, scores) -> float:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    total = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_auc_perfect_inverse_and_chance():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_ties_count_half():
    # one positive tied with one of two negatives: (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)


def test_auc_single_class_is_nan_and_mismatch_raises():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(roc_auc([], []))
    with pytest.raises(ValueError):
        roc_auc([1, 0], [0.5])
    with pytest.raises(ValueError):
        roc_auc([1, 0], [0.5, float("nan")])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])), min_size=2, max_size=40
    )
)
def test_auc_matches_pairwise_definition(pairs):
    labels = [p[0] for p in pairs]
    scores = [p[1] for p in pairs]
    if len(set(labels)) < 2:
        assert math.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_confusion_and_accuracy():
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.7, 0.4, 0.5, 0.9]
    assert confusion_matrix(y, [int(v >= 0.5) for v in s]) == [[1, 1], [1, 2]]
    assert accuracy(y, s) == pytest.approx(3 / 5)
    m = binary_metrics(y, s)
    assert m["confusion"] == [[1, 1], [1, 2]] and m["n_positive"] == 3 and m["n_negative"] == 2
    assert m["accuracy"] == pytest.approx(0.6)


def brute_clear(points, shape, stride, margin=4.0):
    rows, cols = shape
    out = np.ones(shape, bool)
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * stride, r * stride
            for x, y in points:
                if x0 - margin <= x <= x0 + 32 + margin and y0 - margin <= y <= y0 + 32 + margin:
                    out[r, c] = False
    return out


def brute_near(points, shape, stride, radius=8.0):
    rows, cols = shape
    out = np.zeros(shape, bool)
    for r in range(rows):
        for c in range(cols):
            cx, cy = c * stride + 16, r * stride + 16
            out[r, c] = any((cx - x) ** 2 + (cy - y) ** 2 <= radius**2 for x, y in points)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 120), st.floats(0, 100)), max_size=6),
    st.sampled_from([1, 4, 8]),
)
def test_window_masks_match_brute_force(points, stride):
    shape = heatmap_shape(100, 120, stride)
    pts = np.array(points, dtype=float).reshape(-1, 2)
    assert np.array_equal(clear_window_mask(pts, shape, stride), brute_clear(points, shape, stride))
    assert np.array_equal(near_centre_mask(pts, shape, stride), brute_near(points, shape, stride))


def test_labels_of_a_single_known_point():
    # Tumour point exactly at the centre of window (r=3, c=5) on a stride-8 grid.
    shape = heatmap_shape(160, 200, 8)
    x, y = 5 * 8 + 16, 3 * 8 + 16
    labels = heatmap_window_labels(np.array([[x, y]]), np.array([[x, y]]), shape, 8)
    positives = set(zip(*np.nonzero(labels == 1)))
    # centres within 8 px: the cell itself and its 4 neighbours (diagonals are 11.3 px away)
    assert positives == {(3, 5), (2, 5), (4, 5), (3, 4), (3, 6)}
    # Blocked windows: 8c - 4 <= 56 <= 8c + 36  ->  c in 3..7 (and r in 1..5 for y = 40).
    assert labels[3, 2] == 0 and labels[3, 8] == 0  # clear of the expanded window: negative
    assert labels[3, 3] == IGNORE and labels[3, 7] == IGNORE  # touch the point, centre 16 px away
    assert labels[0, 5] == 0 and labels[1, 5] == IGNORE and labels[6, 5] == 0 and labels[5, 5] == IGNORE


def test_other_classes_block_negatives_but_are_not_positives():
    shape = heatmap_shape(160, 200, 8)
    other = np.array([[56.0, 40.0]])
    labels = heatmap_window_labels(np.empty((0, 2)), other, shape, 8)
    assert not (labels == 1).any()
    assert labels[3, 5] == IGNORE and labels[3, 2] == 0


def test_heatmap_auc_ignores_nan_cells():
    shape = heatmap_shape(160, 200, 8)
    pt = np.array([[56.0, 40.0]])
    labels = heatmap_window_labels(pt, pt, shape, 8)
    hm = np.where(labels == 1, 0.9, 0.1).astype(np.float32)
    assert heatmap_auc(hm, pt, pt, 8) == 1.0
    hm[labels == 0] = np.nan  # negatives not computed yet -> AUC undefined
    assert math.isnan(heatmap_auc(hm, pt, pt, 8))
    hm2 = np.where(labels == 1, 0.9, 0.1).astype(np.float32)
    hm2[0, 0] = np.nan
    hm2[labels == 1][0:1] = 0.0
    assert heatmap_auc(hm2, pt, pt, 8) == 1.0


def test_as_1d_names_the_argument_it_cannot_read():
    with pytest.raises(ValueError, match="scores must be numbers"):
        roc_auc([0, 1], ["low", "high"])
    with pytest.raises(ValueError, match="labels must be numbers"):
        roc_auc([{"a": 1}, 0], [0.1, 0.2])


def test_pooled_heatmap_auc_is_the_auc_of_the_concatenated_windows():
    from viewer.metrics import pooled_heatmap_auc

    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 2, 40), rng.random(40)) for _ in range(3)]
    assert pooled_heatmap_auc(pairs) == pytest.approx(
        roc_auc(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])))
    assert math.isnan(pooled_heatmap_auc([]))


def _pooled_with_repeats(units, counts):
    labels = np.concatenate([np.tile(units[i][0], int(k)) for i, k in enumerate(counts)])
    scores = np.concatenate([np.tile(units[i][1], int(k)) for i, k in enumerate(counts)])
    return labels, scores


def test_weighted_bootstrap_auc_equals_the_auc_of_the_repeated_units():
    """A resample that draws unit 0 twice and unit 2 once is scored as if those windows were
    really there twice: the one-sort weighted AUC must equal roc_auc on the repeated data, ties included."""
    from viewer.metrics import _weighted_aucs

    rng = np.random.default_rng(1)
    units = [(rng.integers(0, 2, 60), np.round(rng.random(60), 1)) for _ in range(3)]  # many ties
    counts = np.array([[1, 1, 1], [2, 0, 1], [0, 3, 0], [0, 1, 2]], float)
    got = _weighted_aucs([u[0] for u in units], [u[1] for u in units], counts)
    for row, value in zip(counts, got):
        assert value == pytest.approx(roc_auc(*_pooled_with_repeats(units, row)), abs=1e-12)


def test_bootstrap_intervals_are_seeded_contain_the_pooled_figure_and_widen_with_spread():
    from viewer.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)
    # Four "images": two easy (scores follow the labels), two hard (scores are noise).
    units = []
    for easy in (True, True, False, False):
        y = rng.integers(0, 2, 200)
        s = np.clip(y * 0.6 + rng.normal(0.2, 0.15, 200), 0, 1) if easy else rng.random(200)
        units.append((y, s))
    a = bootstrap_intervals(units, units, resamples=500, seed=7)
    b = bootstrap_intervals(units, units, resamples=500, seed=7)
    assert a == b and a["resamples"] == 500 and a["seed"] == 7 and a["units"] == 4
    pooled = roc_auc(np.concatenate([u[0] for u in units]), np.concatenate([u[1] for u in units]))
    lo, hi = a["heatmap_auc"]
    assert lo < pooled < hi and hi - lo > 0.1  # easy and hard images: a wide interval
    same = bootstrap_intervals([units[0]] * 4, None, resamples=200, seed=7)
    assert same["accuracy"][0] == same["accuracy"][1] and "heatmap_auc" not in same  # identical units: no spread

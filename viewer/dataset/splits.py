"""Splits into train / val / test: by image (this project's default) or by patch (the paper's)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) counts of a 70/15/15 cut of ``n`` items.

    val and test get ``round(0.15 * n)`` each, at least one each when ``n >= 3``; with 2 items
    one train and one val, no test; with 1 item train only.
    """
    n_test = int(round(SPLIT_FRACTIONS[2] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    if n >= 3:
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    elif n == 2:
        n_test, n_val = 0, 1
    else:
        n_test, n_val = 0, 0
    return n - n_val - n_test, n_val, n_test


def split_images(names: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic 70/15/15 split of image names: whole images, never patches.

    Depends only on ``seed`` and the *set* of names (they are sorted first, shuffled with
    ``numpy.random.default_rng(seed)``, then cut test / val / train; see :func:`split_sizes`).
    """
    ordered = sorted(set(names))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    _n_train, n_val, n_test = split_sizes(len(ordered))
    test = sorted(shuffled[:n_test])
    val = sorted(shuffled[n_test : n_test + n_val])
    train = sorted(shuffled[n_test + n_val :])
    return {"train": train, "val": val, "test": test}


def split_patches(n_patches: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The paper's protocol: a random 70/15/15 split of *patches* pooled from every image.

    Returns sorted int64 indices into the pooled patch list per part; the parts are disjoint
    and cover every patch. Patches of one image (even overlapping windows of one nucleus's
    neighbourhood) land on both sides, so test figures are optimistic next to an image split.
    """
    perm = np.random.default_rng([int(seed), 70_15_15]).permutation(int(n_patches))
    _n_train, n_val, n_test = split_sizes(int(n_patches))
    return {
        "train": np.sort(perm[n_test + n_val :]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "test": np.sort(perm[:n_test]),
    }

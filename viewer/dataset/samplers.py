"""What one training epoch sees: fresh windows drawn from whole images, or fixed patches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from viewer import PATCH_SIZE
from viewer.dataset.augment import colour_jitter, dihedral, stain_jitter
from viewer.dataset.images import LabelledImage
from viewer.dataset.patches import PatchSet, extract_windows, negative_top_lefts, to_model_input, tumour_top_lefts


@dataclass
class SamplerConfig:
    negatives_per_positive: float = 1.0
    """Fresh non-tumour windows drawn per tumour point, every epoch."""
    jitter: float = 6.0
    """Tumour windows are centred on the point + a random offset within this radius (px)."""
    hard_fraction: float = 0.0
    """Share of the negatives drawn near (but clear of) annotated points, the hard ones."""
    augment: bool = True
    colour_strength: float = 1.0
    stain_sigma: float = 0.0
    """HED stain jitter strength (0 = off), see :func:`stain_jitter`."""
    balance_images: bool = False
    """Every training image contributes the same number of tumour windows per epoch (the mean
    count, drawn with replacement), so sparse/pale images weigh as much as dense ones."""
    mined_fraction: float = 0.0
    """Share of the negatives drawn from the image's clear stride-8 windows with probability
    proportional to the current model's score (online hard-negative mining); needs
    :meth:`ImageSampler.set_scores` to have been called, else they are drawn uniformly."""
    offcentre_fraction: float = 0.0
    """Share of the negatives that are *off-centre* windows: centred 12-24 px from a tumour
    point, with no annotated point within 12 px of the centre (:func:`offcentre_top_lefts`)."""


OFFCENTRE_INNER = 12.0
"""Off-centre negatives keep every annotated point at least this far from the window centre:
beyond the heatmap's 8 px positive radius plus a 4 px gap (windows 8-20 px off a point are
neither positives nor negatives in the heatmap AUC, so these labels never contradict it)."""
OFFCENTRE_OUTER = 24.0


def offcentre_top_lefts(image: LabelledImage, count: int, rng: np.random.Generator) -> np.ndarray:
    """(<= count, 2) top-lefts of windows centred 12-24 px from a random tumour point.

    The tumour nucleus is inside (or at the edge of) such a window but not at its centre. A
    heatmap cell is painted at its window's centre, so the model has to learn "tumour *here*",
    not "tumour somewhere in these 32 px"; uniform negatives rarely show it that difference.
    """
    points = image.tumour_points
    if count <= 0 or len(points) == 0:
        return np.empty((0, 2), dtype=np.int64)
    n = 4 * count
    base = points[rng.integers(0, len(points), size=n)]
    r = rng.uniform(OFFCENTRE_INNER, OFFCENTRE_OUTER, size=n)
    a = rng.uniform(0, 2 * np.pi, size=n)
    tl = tumour_top_lefts(base + np.stack([r * np.cos(a), r * np.sin(a)], axis=1), image.width, image.height)
    centres = tl.astype(np.float64) + PATCH_SIZE / 2.0
    d2 = ((centres[:, None, :] - image.all_points[None, :, :]) ** 2).sum(-1)
    ok = d2.min(axis=1) >= OFFCENTRE_INNER**2
    if image.ignore_regions:
        from viewer.dataset.ignore import ignored_centres

        ok &= ~ignored_centres(centres, image.ignore_regions)
    return tl[ok][:count]


class ImageSampler:
    """Draws a fresh, augmented, class-balanced training set from whole images every epoch."""

    def __init__(self, images: Sequence[LabelledImage], config: SamplerConfig | None = None) -> None:
        self.images = list(images)
        self.config = config or SamplerConfig()
        self._hard: dict[str, np.ndarray] = {}
        self._mined: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def set_scores(self, image_name: str, heatmap: np.ndarray, stride: int) -> None:
        """Remember the current model's heatmap of a training image for hard-negative mining."""
        from viewer.metrics import clear_window_mask

        image = next(img for img in self.images if img.name == image_name)
        clear = clear_window_mask(image.all_points, heatmap.shape, stride) & np.isfinite(heatmap)
        ignored = image.ignored_windows(heatmap.shape, stride)
        if ignored is not None:
            clear &= ~ignored
        rows, cols = np.nonzero(clear)
        weights = heatmap[rows, cols].astype(np.float64)
        total = weights.sum()
        if total <= 0:
            self._mined.pop(image_name, None)
            return
        self._mined[image_name] = (np.stack([cols * stride, rows * stride], axis=1), weights / total)

    def _hard_pool(self, image: LabelledImage) -> np.ndarray:
        """Clear top-lefts whose window centre is within 48 px of some annotated point."""
        if image.name not in self._hard:
            from viewer.metrics import near_centre_mask

            shape = (image.height - PATCH_SIZE + 1, image.width - PATCH_SIZE + 1)
            near = near_centre_mask(image.all_points, shape, stride=1, radius=48.0).ravel()
            pool = image.clear_top_lefts
            self._hard[image.name] = pool[near[pool]]
        return self._hard[image.name]

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 [0, 1], y float32) for one epoch, shuffled."""
        cfg = self.config
        xs, ys = [], []
        counts = [len(image.tumour_points) for image in self.images]
        per_image = int(round(np.mean(counts))) if counts else 0
        for image in self.images:
            points = image.tumour_points
            if cfg.balance_images and len(points):
                points = points[rng.integers(0, len(points), size=per_image)]
            n_pos = len(points)
            if n_pos:
                r = cfg.jitter * np.sqrt(rng.random(n_pos))
                a = rng.uniform(0, 2 * np.pi, n_pos)
                jitter = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
                tl = tumour_top_lefts(points, image.width, image.height, jitter)
                xs.append(extract_windows(image.pixels, tl))
                ys.append(np.ones(len(tl), np.float32))
            n_neg = int(round(cfg.negatives_per_positive * max(n_pos, 1)))
            n_hard = int(round(cfg.hard_fraction * n_neg))
            n_off = int(round(cfg.offcentre_fraction * n_neg)) if len(image.tumour_points) else 0
            n_mined = int(round(cfg.mined_fraction * n_neg)) if image.name in self._mined else 0
            tls = [negative_top_lefts(image, n_neg - n_hard - n_off - n_mined, rng)]
            if n_mined:
                top_lefts, p = self._mined[image.name]
                tls.append(top_lefts[rng.choice(len(p), size=n_mined, p=p)])
            if n_off:
                tls.append(offcentre_top_lefts(image, n_off, rng))
            if n_hard:
                pool = self._hard_pool(image)
                if pool.size:
                    flat = rng.choice(pool, size=min(n_hard, pool.size), replace=False)
                    cols = image.width - PATCH_SIZE + 1
                    tls.append(np.stack([flat % cols, flat // cols], axis=1))
            tl = np.concatenate(tls, axis=0)
            xs.append(extract_windows(image.pixels, tl))
            ys.append(np.zeros(len(tl), np.float32))
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        order = rng.permutation(len(y))
        x, y = x[order], y[order]
        if cfg.augment:
            x = dihedral(x, rng)
        xf = to_model_input(x)
        if cfg.augment:
            if cfg.stain_sigma > 0:
                xf = stain_jitter(xf, rng, cfg.stain_sigma)
            xf = colour_jitter(xf, rng, cfg.colour_strength)
        return xf, y


class FixedSampler:
    """Training set from a prepared npz: the same patches every epoch, re-augmented."""

    def __init__(self, patches: PatchSet, augment: bool = True, colour_strength: float = 1.0) -> None:
        self.patches = patches
        self.augment = augment
        self.colour_strength = colour_strength

    def epoch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(len(self.patches))
        x = self.patches.x[order]
        if self.augment:
            x = dihedral(x, rng)
        xf = to_model_input(x)
        if self.augment:
            xf = colour_jitter(xf, rng, self.colour_strength)
        return xf, self.patches.y[order].astype(np.float32)

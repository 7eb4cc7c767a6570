"""BreCaHAD patches for training and evaluation: discovery, image-level splits, patch sampling.

Layout expected (the one BreCaHAD ships)::

    DIR/images/<name>.tif          RGB H&E image (any format viewer.slide opens)
    DIR/groundTruth/<name>.json    BreCaHAD points, normalised (x, y) per class

Definitions used everywhere (prepare, train, evaluate):

* **Tumour patch**: the 32x32 window whose centre pixel ``(x0 + 16, y0 + 16)`` is the annotated
  tumour point rounded to the nearest pixel. Points closer than 16 px to the border are *shifted
  inside* (the window is clamped to the image), so every point yields a patch and still lies
  inside it; the point is then off-centre by at most 16 px. This keeps "one patch per tumour
  point" exact for evaluation.
* **Non-tumour patch**: a 32x32 window with no annotated point of *any* class inside the window
  expanded by 4 px (:func:`viewer.metrics.clear_window_mask`, the same rule as the heatmap AUC
  negatives). Sampled uniformly among all such top-left positions, seeded per image.
* **Split**: by *image*, never by patch: the image names are sorted, shuffled with
  ``numpy.random.default_rng(seed)`` and cut 70/15/15 (val and test get ``round(0.15 * n)``
  images each, at least one each when there are at least 3 images; train gets the rest).
* **Pixels**: stored as uint8 (npz files, in-memory images); the model always sees float32
  ``pixels / 255`` in [0, 1] (:func:`to_model_input`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from viewer import PATCH_SIZE
from viewer.errors import InputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
IMAGE_GLOBS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg")
HALF = PATCH_SIZE // 2
NPZ_FORMAT = "histoviewer-patches-1"


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ImageEntry:
    """One image of a dataset folder and its ground truth file."""

    name: str
    image_path: Path
    annotation_path: Path


def find_dataset(data_dir: str | Path) -> list[ImageEntry]:
    """List the annotated images of a BreCaHAD-layout folder, sorted by name.

    Raises :class:`InputError` (one line) when the folder is missing, lacks ``images/`` or
    ``groundTruth/``, or holds no image with a matching JSON file.
    """
    root = Path(data_dir)
    if not root.exists():
        raise InputError("dataset folder not found", root)
    if not root.is_dir():
        raise InputError("is not a folder; expected a BreCaHAD dataset folder with images/ and groundTruth/", root)
    images_dir, truth_dir = root / "images", root / "groundTruth"
    if not images_dir.is_dir():
        raise InputError("has no images/ folder; expected BreCaHAD layout images/*.tif + groundTruth/*.json", root)
    if not truth_dir.is_dir():
        raise InputError("has no groundTruth/ folder; expected BreCaHAD layout images/*.tif + groundTruth/*.json", root)
    seen: dict[str, ImageEntry] = {}
    for pattern in IMAGE_GLOBS:
        for image_path in sorted(images_dir.glob(pattern)):
            truth = truth_dir / f"{image_path.stem}.json"
            if image_path.stem not in seen and truth.is_file():
                seen[image_path.stem] = ImageEntry(image_path.stem, image_path, truth)
    if not seen:
        raise InputError("contains no image in images/ with a matching groundTruth/<name>.json", root)
    return [seen[name] for name in sorted(seen)]


def select_entries(entries: Sequence[ImageEntry], names: Sequence[str], where: str | Path) -> list[ImageEntry]:
    """The entries named in ``names`` (in that order); InputError if any is missing."""
    by_name = {e.name: e for e in entries}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(
            f"lacks {len(missing)} image(s) of the recorded split (e.g. {missing[0]}); "
            "pass the dataset the model was trained on, or --split all",
            where,
        )
    return [by_name[n] for n in names]


# --------------------------------------------------------------------------- split


def split_images(names: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic 70/15/15 split of image names (see the module docstring).

    Depends only on ``seed`` and the *set* of names (they are sorted first). With 2 images:
    one train, one val, no test; with 1 image: train only.
    """
    ordered = sorted(set(names))
    n = len(ordered)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    n_test = int(round(SPLIT_FRACTIONS[2] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    if n >= 3:
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    elif n == 2:
        n_test, n_val = 0, 1
    else:
        n_test, n_val = 0, 0
    test = sorted(shuffled[:n_test])
    val = sorted(shuffled[n_test : n_test + n_val])
    train = sorted(shuffled[n_test + n_val :])
    return {"train": train, "val": val, "test": test}


# --------------------------------------------------------------------------- images


@dataclass(eq=False)
class LabelledImage:
    """An opened image with its tumour points and all-class points in pixels."""

    name: str
    pixels: np.ndarray
    tumour_points: np.ndarray
    all_points: np.ndarray
    notes: tuple[str, ...] = field(default=())

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @cached_property
    def clear_top_lefts(self) -> np.ndarray:
        """Flat indices ``y0 * (W - 31) + x0`` of every non-tumour window (stride 1), int32."""
        from viewer.metrics import clear_window_mask

        shape = (self.height - PATCH_SIZE + 1, self.width - PATCH_SIZE + 1)
        mask = clear_window_mask(self.all_points, shape, stride=1)
        return np.flatnonzero(mask.ravel()).astype(np.int32)


def load_labelled(entry: ImageEntry) -> LabelledImage:
    """Open an image and its annotations (pixel coordinates)."""
    from viewer.annotations import TUMOUR_CLASS, load_annotations
    from viewer.metrics import all_class_points
    from viewer.slide import open_slide

    slide = open_slide(entry.image_path)
    ann = load_annotations(entry.annotation_path)
    w, h = slide.width, slide.height
    return LabelledImage(
        name=entry.name,
        pixels=slide.read_all(),
        tumour_points=ann.pixel_points(TUMOUR_CLASS, w, h),
        all_points=all_class_points(ann, w, h),
        notes=tuple(slide.notes) + tuple(ann.notes),
    )


def image_rng(seed: int, name: str, salt: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, image name, salt): stable whatever else is loaded."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), int(salt)])


# --------------------------------------------------------------------------- windows


def tumour_top_lefts(points: np.ndarray, width: int, height: int, jitter: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) int top-left (x0, y0) of the windows centred on ``points`` (+ optional jitter).

    Windows that would leave the image are shifted inside (clamped).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if jitter is not None:
        pts = pts + jitter
    xy = np.rint(pts).astype(np.int64) - HALF
    xy[:, 0] = np.clip(xy[:, 0], 0, width - PATCH_SIZE)
    xy[:, 1] = np.clip(xy[:, 1], 0, height - PATCH_SIZE)
    return xy


def negative_top_lefts(image: LabelledImage, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) int top-lefts of distinct non-tumour windows drawn uniformly (fewer if scarce)."""
    pool = image.clear_top_lefts
    count = int(min(count, pool.size))
    if count <= 0:
        return np.empty((0, 2), dtype=np.int64)
    flat = rng.choice(pool, size=count, replace=False)
    cols = image.width - PATCH_SIZE + 1
    return np.stack([flat % cols, flat // cols], axis=1).astype(np.int64)


def extract_windows(pixels: np.ndarray, top_lefts: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 copies of the windows at ``top_lefts`` (x0, y0)."""
    tl = np.asarray(top_lefts, dtype=np.int64).reshape(-1, 2)
    out = np.empty((len(tl), PATCH_SIZE, PATCH_SIZE, pixels.shape[2]), dtype=np.uint8)
    for i, (x0, y0) in enumerate(tl):
        out[i] = pixels[y0 : y0 + PATCH_SIZE, x0 : x0 + PATCH_SIZE]
    return out


def to_model_input(patches_uint8: np.ndarray) -> np.ndarray:
    """uint8 patches -> float32 in [0, 1], what the model sees."""
    return np.asarray(patches_uint8, dtype=np.float32) / np.float32(255.0)


@dataclass
class PatchSet:
    """Patches of one or more images: uint8 pixels, labels, provenance."""

    x: np.ndarray  # (N, 32, 32, 3) uint8
    y: np.ndarray  # (N,) uint8, 1 = tumour
    image_index: np.ndarray  # (N,) int32 index into ``names``
    top_left: np.ndarray  # (N, 2) int32 (x0, y0)
    names: list[str]

    @classmethod
    def empty(cls) -> PatchSet:
        return cls(
            np.empty((0, PATCH_SIZE, PATCH_SIZE, 3), np.uint8),
            np.empty((0,), np.uint8),
            np.empty((0,), np.int32),
            np.empty((0, 2), np.int32),
            [],
        )

    def __len__(self) -> int:
        return int(self.y.size)


def evaluation_patches(image: LabelledImage, seed: int = 0, negatives_per_positive: float = 1.0) -> PatchSet:
    """The evaluation protocol for one image: one patch per tumour point (centred, clamped at
    the border) and ``round(negatives_per_positive * N)`` seeded non-tumour windows."""
    pos = tumour_top_lefts(image.tumour_points, image.width, image.height)
    n_neg = int(round(negatives_per_positive * len(pos)))
    neg = negative_top_lefts(image, n_neg, image_rng(seed, image.name, salt=1))
    tl = np.concatenate([pos, neg], axis=0)
    y = np.concatenate([np.ones(len(pos), np.uint8), np.zeros(len(neg), np.uint8)])
    return PatchSet(
        x=extract_windows(image.pixels, tl),
        y=y,
        image_index=np.zeros(len(y), np.int32),
        top_left=tl.astype(np.int32),
        names=[image.name],
    )


def concat_patchsets(sets: Sequence[PatchSet]) -> PatchSet:
    if not sets:
        return PatchSet.empty()
    names: list[str] = []
    idx: list[np.ndarray] = []
    for s in sets:
        idx.append(s.image_index + len(names))
        names.extend(s.names)
    return PatchSet(
        x=np.concatenate([s.x for s in sets]),
        y=np.concatenate([s.y for s in sets]),
        image_index=np.concatenate(idx).astype(np.int32),
        top_left=np.concatenate([s.top_left for s in sets]).astype(np.int32),
        names=names,
    )


# --------------------------------------------------------------------------- prepare / npz


def prepare_patches(
    data_dir: str | Path,
    seed: int = 0,
    max_images: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, PatchSet], dict[str, list[str]]]:
    """Evaluation-protocol patches for every split of ``data_dir``: ({split: PatchSet}, split)."""
    entries = find_dataset(data_dir)
    if max_images is not None:
        entries = entries[: max(int(max_images), 1)]
    split = split_images([e.name for e in entries], seed)
    by_name = {e.name: e for e in entries}
    out: dict[str, PatchSet] = {}
    for part in SPLITS:
        sets = []
        for name in split[part]:
            image = load_labelled(by_name[name])
            sets.append(evaluation_patches(image, seed))
            if progress:
                progress(f"{part:5s} {name}: {int(sets[-1].y.sum())} tumour, {int((sets[-1].y == 0).sum())} non-tumour")
        out[part] = concat_patchsets(sets)
    return out, split


def save_patches_npz(path: str | Path, patches: dict[str, PatchSet], split: dict[str, list[str]], seed: int, force: bool = True) -> None:
    """Write the prepared patches atomically as a compressed npz.

    Keys per split S: ``x_S`` (N,32,32,3) uint8 (divide by 255 for the model), ``y_S`` (N,) uint8,
    ``image_S`` (N,) int32 index into ``names_S``, ``top_left_S`` (N,2) int32 (x0, y0),
    ``names_S`` image names of the split. Plus ``seed``, ``format`` and ``pixel_scale`` (255).
    """
    from viewer.atomic import atomic_output

    arrays: dict[str, np.ndarray] = {
        "format": np.array(NPZ_FORMAT),
        "seed": np.array(int(seed)),
        "pixel_scale": np.array(255.0, dtype=np.float32),
    }
    for part in SPLITS:
        ps = patches.get(part, PatchSet.empty())
        arrays[f"x_{part}"] = ps.x
        arrays[f"y_{part}"] = ps.y
        arrays[f"image_{part}"] = ps.image_index
        arrays[f"top_left_{part}"] = ps.top_left
        arrays[f"names_{part}"] = np.array(split.get(part, []), dtype=str)
    with atomic_output(path, force=force, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_patches_npz(path: str | Path) -> tuple[dict[str, PatchSet], dict[str, list[str]], int]:
    """Read an npz written by :func:`save_patches_npz` -> (patches, split, seed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("patch file not found", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != NPZ_FORMAT:
                raise InputError(f"is not a patch file written by 'histoviewer prepare' (format {NPZ_FORMAT})", path)
            patches, split = {}, {}
            for part in SPLITS:
                names = [str(n) for n in data[f"names_{part}"]]
                split[part] = names
                patches[part] = PatchSet(
                    x=data[f"x_{part}"], y=data[f"y_{part}"], image_index=data[f"image_{part}"],
                    top_left=data[f"top_left_{part}"], names=names,
                )
            seed = int(data["seed"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot be read as a patch npz ({type(exc).__name__})", path) from exc
    return patches, split, seed


# --------------------------------------------------------------------------- training sampling


def dihedral(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random one of the 8 flips/90-degree rotations per patch (histology has no up or left)."""
    out = np.empty_like(patches)
    k = rng.integers(0, 4, size=len(patches))
    flip = rng.random(len(patches)) < 0.5
    for i in range(len(patches)):
        p = np.rot90(patches[i], k[i])
        out[i] = p[:, ::-1] if flip[i] else p
    return out


def colour_jitter(x: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Mild stain/colour jitter on float patches in [0, 1] (in place-safe, returns a new array).

    Per patch: per-channel gain 1 +- 0.06, per-channel offset +- 0.03, contrast 1 +- 0.1 around
    the patch mean, then clipped to [0, 1]. Mimics stain-intensity and scanner differences.
    """
    n = len(x)
    if n == 0 or strength <= 0:
        return x
    gain = 1.0 + strength * rng.uniform(-0.06, 0.06, size=(n, 1, 1, 3))
    offset = strength * rng.uniform(-0.03, 0.03, size=(n, 1, 1, 3))
    contrast = 1.0 + strength * rng.uniform(-0.10, 0.10, size=(n, 1, 1, 1))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    out = (x - mean) * contrast + mean
    out = out * gain + offset
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001, as in scikit-image).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain_jitter(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.1, bias: float = 0.02) -> np.ndarray:
    """HED stain augmentation (Tellez et al. 2018) on float patches in [0, 1].

    Pixels go to optical density, are unmixed into haematoxylin/eosin/DAB concentrations, each
    concentration is scaled by ``1 + U(-sigma, sigma)`` and shifted by ``U(-bias, bias)`` per
    patch, and mixed back. Simulates paler/darker nuclear and cytoplasmic staining.
    """
    n = len(x)
    if n == 0 or sigma <= 0 and bias <= 0:
        return x
    od = -np.log(np.clip(x, 1.0 / 255.0, 1.0))
    conc = od @ _HED_FROM_RGB
    alpha = 1.0 + rng.uniform(-sigma, sigma, size=(n, 1, 1, 3))
    beta = rng.uniform(-bias, bias, size=(n, 1, 1, 3))
    od2 = (conc * alpha + beta) @ _RGB_FROM_HED
    return np.clip(np.exp(-od2), 0.0, 1.0).astype(np.float32)


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

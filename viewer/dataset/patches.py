"""32x32 windows: tumour and non-tumour positions, the evaluation patches, and npz files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from viewer import PATCH_SIZE
from viewer.dataset.images import LabelledImage, find_dataset, image_rng, load_labelled
from viewer.dataset.splits import SPLITS, split_images
from viewer.errors import InputError

HALF = PATCH_SIZE // 2
NPZ_FORMAT = "histoviewer-patches-1"


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


def prepare_patches(
    data_dir: str | Path,
    seed: int = 0,
    max_images: int | None = None,
    progress: Callable[[str], None] | None = None,
    split_seed: int = 0,
) -> tuple[dict[str, PatchSet], dict[str, list[str]]]:
    """Evaluation-protocol patches for every split of ``data_dir``: ({split: PatchSet}, split).

    ``split_seed`` chooses the images of each part, ``seed`` the non-tumour windows."""
    entries = find_dataset(data_dir)
    if max_images is not None:
        entries = entries[: max(int(max_images), 1)]
    split = split_images([e.name for e in entries], split_seed)
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


def save_patches_npz(path: str | Path, patches: dict[str, PatchSet], split: dict[str, list[str]], seed: int,
                     force: bool = True, split_seed: int = 0) -> None:
    """Write the prepared patches atomically as a compressed npz.

    Keys per split S: ``x_S`` (N,32,32,3) uint8 (divide by 255 for the model), ``y_S`` (N,) uint8,
    ``image_S`` (N,) int32 index into ``names_S``, ``top_left_S`` (N,2) int32 (x0, y0),
    ``names_S`` image names of the split. Plus ``seed`` (of the non-tumour windows), ``split_seed``,
    ``format`` and ``pixel_scale`` (255).
    """
    from viewer.atomic import atomic_output

    arrays: dict[str, np.ndarray] = {
        "format": np.array(NPZ_FORMAT),
        "seed": np.array(int(seed)),
        "split_seed": np.array(int(split_seed)),
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


def npz_split_seed(path: str | Path) -> int | None:
    """The split seed a patch npz was prepared with (``None`` for files written before it was
    recorded)."""
    with np.load(path, allow_pickle=False) as data:
        return int(data["split_seed"]) if "split_seed" in data.files else None

"""The dataset folder: discovery of annotated images, opening them, and the folder's fingerprint."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from viewer import PATCH_SIZE
from viewer.errors import InputError

IMAGE_GLOBS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg")

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


@dataclass(eq=False)
class LabelledImage:
    """An opened image with its tumour points and all-class points in pixels."""

    name: str
    pixels: np.ndarray
    tumour_points: np.ndarray
    all_points: np.ndarray
    notes: tuple[str, ...] = field(default=())
    ignore_regions: tuple = field(default=())
    """The image's ``ignore`` regions (:class:`viewer.annotations.Region`): their windows count as
    neither label (:mod:`viewer.dataset.ignore`). ``tumour_points`` already excludes the points
    inside them; ``all_points`` keeps them."""

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
        ignored = self.ignored_windows(shape, stride=1)
        if ignored is not None:
            mask &= ~ignored
        return np.flatnonzero(mask.ravel()).astype(np.int32)

    def ignored_windows(self, shape: tuple[int, int], stride: int) -> np.ndarray | None:
        """Boolean grid of the windows centred in an ignore region (None without any)."""
        from viewer.dataset.ignore import ignored_window_mask

        return ignored_window_mask(self.ignore_regions, shape, stride)


def load_labelled(entry: ImageEntry) -> LabelledImage:
    """Open an image and its annotations (pixel coordinates)."""
    from viewer.annotations import IGNORE_CLASS, TUMOUR_CLASS, image_regions, load_annotations
    from viewer.dataset.ignore import ignored_centres
    from viewer.metrics import all_class_points
    from viewer.slide import open_slide

    slide = open_slide(entry.image_path)
    ann = load_annotations(entry.annotation_path)
    w, h = slide.width, slide.height
    # Ignore regions come from the regions sidecar beside the JSON (what the viewer saves).
    ignore = tuple(r for r in image_regions(entry.image_path, entry.annotation_path) if r.name == IGNORE_CLASS)
    tumour = ann.pixel_points(TUMOUR_CLASS, w, h)
    if ignore:
        tumour = tumour[~ignored_centres(tumour, ignore)]
    return LabelledImage(
        name=entry.name,
        pixels=slide.read_all(),
        tumour_points=tumour,
        all_points=all_class_points(ann, w, h),
        notes=tuple(slide.notes) + tuple(ann.notes),
        ignore_regions=ignore,
    )


def image_rng(seed: int, name: str, salt: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, image name, salt): stable whatever else is loaded."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), int(salt)])


def dataset_fingerprint(entries: Sequence[ImageEntry]) -> dict:
    """What identifies the data a model was trained on: every image and annotation file's name
    and size in bytes, and a SHA-256 over that list (cheap: no pixel is read)."""
    files = [
        {"name": e.name, "image": e.image_path.name, "image_bytes": e.image_path.stat().st_size,
         "annotation_bytes": e.annotation_path.stat().st_size}
        for e in entries
    ]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f['name']}\t{f['image']}\t{f['image_bytes']}\t{f['annotation_bytes']}\n".encode())
    return {"images": files, "sha256": digest.hexdigest()}

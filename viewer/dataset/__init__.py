"""BreCaHAD patches for training and evaluation: discovery, splits, patches, augmentation, sampling.

Modules by job: :mod:`~viewer.dataset.images` (the folder, opening images, its fingerprint),
:mod:`~viewer.dataset.splits` (by image, or the paper's by patch), :mod:`~viewer.dataset.patches`
(windows, the evaluation patches, npz files), :mod:`~viewer.dataset.augment` and
:mod:`~viewer.dataset.samplers` (what a training epoch sees). Every public name is importable
from ``viewer.dataset`` itself.

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
* **Split**: by *image* by default: the image names are sorted, shuffled with
  ``numpy.random.default_rng(seed)`` and cut 70/15/15 (val and test get ``round(0.15 * n)``
  images each, at least one each when there are at least 3 images; train gets the rest).
  ``histoviewer train --split patches`` reproduces the paper instead: a random 70/15/15 split
  of the patches pooled from every image (:func:`split_patches`).
* **Pixels**: stored as uint8 (npz files, in-memory images); the model always sees float32
  ``pixels / 255`` in [0, 1] (:func:`to_model_input`).
"""


from viewer.dataset.augment import colour_jitter, dihedral, stain_jitter
from viewer.dataset.images import (
    IMAGE_GLOBS,
    ImageEntry,
    LabelledImage,
    dataset_fingerprint,
    find_dataset,
    image_rng,
    load_labelled,
    select_entries,
)
from viewer.dataset.patches import (
    HALF,
    NPZ_FORMAT,
    PatchSet,
    concat_patchsets,
    evaluation_patches,
    extract_windows,
    load_patches_npz,
    negative_top_lefts,
    npz_split_seed,
    prepare_patches,
    save_patches_npz,
    to_model_input,
    tumour_top_lefts,
)
from viewer.dataset.samplers import (
    OFFCENTRE_INNER,
    OFFCENTRE_OUTER,
    FixedSampler,
    ImageSampler,
    SamplerConfig,
    offcentre_top_lefts,
)
from viewer.dataset.splits import SPLIT_FRACTIONS, SPLITS, split_images, split_patches, split_sizes

__all__ = [
    "FixedSampler", "HALF", "IMAGE_GLOBS", "ImageEntry", "ImageSampler", "LabelledImage", "NPZ_FORMAT",
    "OFFCENTRE_INNER", "OFFCENTRE_OUTER", "PatchSet", "SPLITS", "SPLIT_FRACTIONS", "SamplerConfig",
    "colour_jitter", "concat_patchsets", "dataset_fingerprint", "dihedral", "evaluation_patches",
    "extract_windows", "find_dataset", "image_rng", "load_labelled", "load_patches_npz",
    "negative_top_lefts", "npz_split_seed", "offcentre_top_lefts", "prepare_patches", "save_patches_npz",
    "select_entries", "split_images", "split_patches", "split_sizes", "stain_jitter",
    "to_model_input", "tumour_top_lefts",
]

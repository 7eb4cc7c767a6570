"""Shared test fixtures.

``shared_data_dir``: the real BreCaHAD subset at ``../shared/data/brecahad-subset`` (relative to
the repository root). Tests that need it skip with a clear reason when it is absent (a user's
fresh checkout) and *fail* when it is absent under CI (``CI=true``).

``synthetic_dataset``: a factory writing a tiny BreCaHAD-layout folder (TIFF images + JSON) in
``tmp_path``: pink "stroma" with dark purple "tumour nuclei" at the annotated points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "brecahad-subset"


def shared_data_path() -> Path:
    """Path of the shared BreCaHAD subset, or skip (fail under CI=true) when it is absent."""
    if (SHARED_DATA / "images").is_dir() and (SHARED_DATA / "groundTruth").is_dir():
        return SHARED_DATA
    reason = (
        f"real BreCaHAD data not found at {SHARED_DATA} "
        "(expected ../shared/data/brecahad-subset beside the repository, with images/ and groundTruth/)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; it is required under CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def shared_data_dir() -> Path:
    """Path to ../shared/data/brecahad-subset; skips (fails under CI=true) when absent."""
    return shared_data_path()


def write_synthetic_dataset(
    root: Path,
    n_images: int = 6,
    width: int = 160,
    height: int = 128,
    points_per_image: int = 6,
    seed: int = 0,
    other_class_points: int = 1,
) -> Path:
    """Write ``root/images/synth_NN.tif`` + ``root/groundTruth/synth_NN.json``; returns root.

    Tumour points are dark purple disks (radius 7) on a noisy pink background; one extra
    ``non_tumor`` point per image (no drawing) exercises the any-class negative rule.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "groundTruth").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n_images):
        img = np.empty((height, width, 3), np.float64)
        img[...] = (235, 180, 205)
        img += rng.normal(0, 6, img.shape)
        pts = []
        for _ in range(points_per_image):
            x, y = rng.uniform(20, width - 20), rng.uniform(20, height - 20)
            pts.append((x, y))
            disk = (xx - x) ** 2 + (yy - y) ** 2 <= 49
            img[disk] = (90, 40, 120) + rng.normal(0, 6, (int(disk.sum()), 3))
        others = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(other_class_points)]
        name = f"synth_{i:02d}"
        tifffile.imwrite(root / "images" / f"{name}.tif", np.clip(img, 0, 255).astype(np.uint8), photometric="rgb")
        data = {c: [] for c in ("mitosis", "non_mitosis", "apoptosis", "tumor", "non_tumor", "lumen", "non_lumen")}
        data["tumor"] = [{"x": x / width, "y": y / height} for x, y in pts]
        data["non_tumor"] = [{"x": x / width, "y": y / height} for x, y in others]
        (root / "groundTruth" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    return root


@pytest.fixture
def synthetic_dataset(tmp_path):
    """Factory: ``synthetic_dataset(**kwargs)`` -> Path of a tiny BreCaHAD-layout folder."""

    def make(name: str = "synthetic", **kwargs) -> Path:
        return write_synthetic_dataset(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def no_bf16(monkeypatch):
    """Pretend this CPU has no bfloat16 units (the detector is looked up at run time)."""
    from viewer.heatmap import engine, precision

    monkeypatch.setattr(precision, "bfloat16_support", lambda flags=None: (False, "this CPU has neither AVX512_BF16 nor AMX"))
    monkeypatch.setattr(engine, "_FALLBACK_WARNED", False)


@pytest.fixture
def with_bf16(monkeypatch):
    """Pretend this CPU has bfloat16 units (TensorFlow then runs bfloat16 even where it would emulate it)."""
    from viewer.heatmap import precision

    monkeypatch.setattr(precision, "bfloat16_support", lambda flags=None: (True, "the CPU has AVX512_BF16"))

"""What File › Export… writes, through the same core functions as ``histoviewer export``.

These run in a worker thread on snapshots taken on the main thread, so a heatmap tile arriving
during the export cannot change the file half-way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viewer.annotations import Annotations
from viewer.overlay import OverlayStyle, compose, save_overlay


def write_overlay(
    pixels: np.ndarray, heatmap: np.ndarray | None, annotations: Annotations | None,
    style: OverlayStyle, path: Path, force: bool,
) -> Path:
    """Compose at full resolution and save; returns the path written."""
    composite = compose(pixels, heatmap=heatmap, annotations=annotations, style=style)
    save_overlay(composite, path, force=force)
    return path


def write_heatmap(
    heatmap: np.ndarray, path: Path, stride: int, image_shape: tuple[int, ...], image_path: Path,
    model_path: str | None, force: bool,
) -> Path:
    """Save the heatmap (.npy or float TIFF, by suffix) and its JSON sidecar; returns the array's path."""
    from viewer.heatmap import save_heatmap
    from viewer.model import bundled_model_path

    array_path, _sidecar = save_heatmap(
        heatmap, path, stride=stride, image_shape=image_shape, image_path=image_path,
        # The sidecar records the model's SHA-256, so name the bundled file explicitly.
        model_path=model_path if model_path else bundled_model_path(), force=force,
    )
    return array_path

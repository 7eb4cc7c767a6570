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
    heatmap: np.ndarray, path: Path, stride: int, image_shape: tuple[int, ...],
    model_path: str | None, force: bool,
) -> Path:
    """Save the heatmap array and its JSON geometry sidecar; returns the array's path."""
    from viewer.heatmap import save_heatmap

    save_heatmap(heatmap, path, stride=stride, image_shape=image_shape, model_path=model_path, force=force)
    return path

"""Display pyramid for large images: each level halves the previous one by 2x2 averaging.

Pure numpy and Qt-free so it can run in the worker that opens the file. Only images larger
than :data:`PYRAMID_MIN_SIDE` get one; smaller images are drawn directly from the full array.
"""

from __future__ import annotations

import numpy as np

PYRAMID_MIN_SIDE = 4096
"""Images with a side above this are shown through a pyramid (level of detail)."""

_SMALLEST_SIDE = 512


def build_pyramid(pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return ``(pixels, half, quarter, ...)`` down to about 512 px, or just ``(pixels,)``."""
    levels = [pixels]
    if max(pixels.shape[:2]) <= PYRAMID_MIN_SIDE:
        return tuple(levels)
    while max(levels[-1].shape[:2]) > _SMALLEST_SIDE * 2:
        levels.append(_half(levels[-1]))
    return tuple(levels)


def _half(level: np.ndarray) -> np.ndarray:
    # Averaging (not striding) avoids the moiré that nuclei patterns show when decimated.
    h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
    block = level[:h, :w].reshape(h // 2, 2, w // 2, 2, level.shape[2])
    total = block.sum(axis=(1, 3), dtype=np.uint16)
    out = ((total + 2) >> 2).astype(np.uint8)
    out.setflags(write=False)
    return out

"""The tissue-mask layer: where tissue was detected, as a translucent tint over the slide.

The mask is small (a low-resolution level, at most a few thousand pixels a side), so it is one
RGBA image placed over level-0 pixels by its downsample. Glass is left clear.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF

from viewer.gui.canvas import Z_HEATMAP, Canvas

TISSUE_TINT = (40, 160, 255, 90)
"""RGBA of tissue: a light blue, distinct from every heatmap colormap's low end."""


class TissueLayer:
    def __init__(self, canvas: Canvas) -> None:
        self.item = pg.ImageItem(axisOrder="row-major")
        canvas.add_item(self.item, Z_HEATMAP - 1)  # under the heatmap, over the image
        self.item.setVisible(False)
        self.mask = None

    def set_mask(self, mask) -> None:
        """Show a :class:`viewer.slide.tissue.TissueMask` (None clears)."""
        self.mask = mask
        if mask is None:
            self.item.clear()
            return
        # One 32-bit RGBA word per pixel, not a boolean-indexed assignment of 4 bytes: ~15x
        # faster on a 50k slide's mask, and this runs on the main thread when a run starts.
        tint = np.frombuffer(bytes(TISSUE_TINT), dtype=np.uint32)[0]
        rgba = (mask.mask.astype(np.uint32) * tint).view(np.uint8).reshape(mask.mask.shape + (4,))
        self.item.setImage(rgba, autoLevels=False, levels=None)
        dx, dy = mask.downsample if isinstance(mask.downsample, tuple) else (mask.downsample, mask.downsample)
        self.item.setRect(QRectF(0, 0, mask.mask.shape[1] * dx, mask.mask.shape[0] * dy))

    def set_visible(self, visible: bool) -> None:
        self.item.setVisible(bool(visible) and self.mask is not None)

"""The slide canvas: a tiled, multi-resolution view of one slide, with overlays.

- :mod:`view`: the :class:`Canvas` widget (zoom, pan, fit, cursor) in level-0 pixels;
- :mod:`tile_layer`: the image, drawn as tiles of the level that matches the zoom;
- :mod:`tile_grid`: which tiles cover what (pure geometry);
- :mod:`tile_loader`: reading tiles on worker threads;
- :mod:`minimap` and :mod:`scale_bar`: overlays in the canvas corners.
"""

from viewer.gui.canvas.view import BACKGROUND, MAX_ZOOM, MIN_RANGE, ZOOM_STEP, Z_ANNOTATIONS, Z_HEATMAP, Z_IMAGE, Canvas

__all__ = ["BACKGROUND", "MAX_ZOOM", "MIN_RANGE", "ZOOM_STEP", "Z_ANNOTATIONS", "Z_HEATMAP", "Z_IMAGE", "Canvas"]

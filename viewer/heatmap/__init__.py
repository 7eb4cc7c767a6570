"""Tumour-probability heatmaps: the grid geometry, the one tiled engine, heatmap files and stores.

- :mod:`viewer.heatmap.engine`: geometry, :func:`iter_heatmap_tiles` (the single generator every
  caller drains), :func:`compute_heatmap`, ``.npy``/``.tif`` files with a JSON sidecar;
- :mod:`viewer.heatmap.store`: the chunked, resumable zarr store for whole slides.
"""

from viewer.heatmap.engine import *  # noqa: F401,F403 - the public engine API
from viewer.heatmap.engine import _STATS  # noqa: F401 - counters the tests read

"""HistoViewer: an H&E slide viewer with a progressive ConvNet tumour heatmap.

The package is split into a Qt-free core (everything outside ``viewer.gui``) and a thin Qt shell
in ``viewer.gui``. The CLI and the GUI call the same core functions.
"""

__version__ = "0.1.0"

PATCH_SIZE = 32
"""Side of the square window the ConvNet classifies, in pixels (the paper's 32x32 patches)."""

DEFAULT_STRIDE = 8
"""Step between neighbouring heatmap windows, in pixels (the paper's heatmap step)."""

"""What the user chose to see: one immutable value shared by the canvas, the panel and export.

Export turns this value into the core's :class:`~viewer.overlay.OverlayStyle`, so an exported
figure shows exactly the layers, opacity, colormap, threshold and classes on screen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP
from viewer.overlay import OverlayStyle

_CORE_DEFAULTS = OverlayStyle()


@dataclass(frozen=True)
class LayerState:
    show_image: bool = True
    show_annotations: bool = True
    hidden_classes: frozenset[str] = field(default_factory=frozenset)
    show_heatmap: bool = True
    opacity: float = _CORE_DEFAULTS.opacity
    colormap: str = DEFAULT_COLORMAP
    threshold: float = _CORE_DEFAULTS.threshold
    """Likely tumour only (p >= 0.5) to start with, the default of `histoviewer export` too
    (:data:`viewer.overlay.DEFAULT_THRESHOLD`); exports take whatever is set."""
    smooth: bool = False
    """Draw the heatmap with bilinear filtering (presentation) instead of exact cells."""
    overview_max: bool = False
    """At low zoom, draw each block of cells by its maximum (small tumour foci stay visible)
    instead of its mean."""
    show_tissue: bool = False
    """Show the tissue mask of the last whole-slide run."""

    def overlay_style(self, classes: Iterable[str], stride: int, legend: bool = False) -> OverlayStyle:
        """The core style that renders this state (classes = all classes of the annotations)."""
        classes = tuple(classes)
        visible = tuple(c for c in classes if c not in self.hidden_classes)
        return replace(
            _CORE_DEFAULTS,
            legend=legend,
            show_heatmap=self.show_heatmap,
            show_annotations=self.show_annotations,
            opacity=self.opacity,
            colormap=self.colormap,
            threshold=self.threshold,
            # None = every class, exactly what `histoviewer export` draws.
            visible_classes=None if len(visible) == len(classes) else visible,
            stride=stride,
        )

    def to_settings(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_classes"] = sorted(self.hidden_classes)
        return values

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> LayerState:
        """Build a state from saved values, ignoring anything unknown or out of range."""
        state = cls()
        known = {k: v for k, v in values.items() if k in state.__dataclass_fields__}
        if known.get("colormap") not in COLORMAPS:
            known.pop("colormap", None)
        if "hidden_classes" in known:
            known["hidden_classes"] = frozenset(known["hidden_classes"])
        return replace(state, **known)

"""Keeps the Agreement dock in step with the annotations and the heatmap.

The table is recomputed when the annotations change or a run starts, ends or is cleared; while
a run is going it only says so, since the partial heatmap changes with every tile. The result
is kept for the dock's Export CSV….
"""

from __future__ import annotations

from viewer.agreement import AgreementResult, agreement
from viewer.gui.agreement_panel import AgreementPanel
from viewer.gui.document import Document
from viewer.gui.heatmap_controller import HeatmapController


class AgreementController:
    def __init__(self, panel: AgreementPanel, document: Document, heatmaps: HeatmapController) -> None:
        self._panel = panel
        self._document = document
        self._heatmaps = heatmaps
        self.result: AgreementResult | None = None

    def update(self) -> None:
        """Recompute the agreement table (after a run ends or the annotations change)."""
        self.result = None
        annotations, heatmaps = self._document.annotations, self._heatmaps
        if annotations is None or heatmaps.heatmap is None:
            self._panel.show_result(None, "Needs annotations and a heatmap.")
            return
        if heatmaps.runner.is_running():
            self._panel.show_result(None, "Waiting for the heatmap to finish…")
            return
        slide = self._document.opened.slide
        self.result = agreement(heatmaps.heatmap, annotations, slide.width, slide.height, stride=heatmaps.stride)
        note = "" if heatmaps.complete else "Partial heatmap: only computed cells are compared."
        self._panel.show_result(self.result, note)

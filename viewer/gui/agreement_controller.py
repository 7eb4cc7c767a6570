"""Keeps the Agreement dock in step with the annotations and the heatmap.

The table is recomputed when the annotations change or a run starts, ends or is cleared; while
a run is going it only says so, since the partial heatmap changes with every tile. The result
is kept for the dock's Export CSV…. After Analysis › Improve Model, the figures of the image
with the previous model are shown beside the new ones (:meth:`AgreementController.set_before`)
until another image opens.
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
        self.before: tuple[object, str, AgreementResult] | None = None
        """(image, model name, its result): the figures before a fine-tune, for this image only."""

    def set_before(self, model_name: str | None) -> None:
        """Keep the figures on screen now as "before" (None forgets them)."""
        opened = self._document.opened
        if model_name is None or self.result is None or opened is None:
            self.before = None
        else:
            self.before = (opened.slide.path, model_name, self.result)

    def update(self) -> None:
        """Recompute the agreement table (after a run ends or the annotations change)."""
        self.result = None
        annotations, heatmaps = self._document.annotations, self._heatmaps
        opened = self._document.opened
        if self.before is not None and (opened is None or opened.slide.path != self.before[0]):
            self.before = None  # another image: its "before" means nothing here
        before = self.before[1:] if self.before is not None else None
        if annotations is None or heatmaps.heatmap is None:
            self._panel.show_result(None, "Needs annotations and a heatmap.")
            return
        if heatmaps.runner.is_running():
            self._panel.show_result(None, "Waiting for the heatmap to finish…")
            return
        slide = self._document.opened.slide
        self.result = agreement(heatmaps.heatmap, annotations, slide.width, slide.height, stride=heatmaps.stride)
        note = "" if heatmaps.complete else "Partial heatmap: only computed cells are compared."
        self._panel.show_result(self.result, note, before=before)

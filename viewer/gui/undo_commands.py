"""Undo commands for annotation edits: each keeps the annotations before and after.

The values are immutable snapshots that share the arrays of untouched classes (see
:mod:`viewer.annotations.edits`), so a command costs about the size of what it changed, and
undo or redo puts back exactly the earlier state, selection included.
"""

from __future__ import annotations

from typing import Protocol

from PySide6.QtGui import QUndoCommand

from viewer.annotations import Annotations
from viewer.annotations.edits import Selection


class EditTarget(Protocol):
    def show_state(self, annotations: Annotations, selection: Selection) -> None: ...


class AnnotationEdit(QUndoCommand):
    """Replace the annotations with ``after``; undo puts ``before`` back."""

    def __init__(self, target: EditTarget, text: str, before: Annotations, after: Annotations,
                 selection_before: Selection, selection_after: Selection) -> None:
        super().__init__(text)
        self._target = target
        self.before, self.after = before, after
        self._selection_before, self._selection_after = selection_before, selection_after

    def redo(self) -> None:
        self._target.show_state(self.after, self._selection_after)

    def undo(self) -> None:
        self._target.show_state(self.before, self._selection_before)

"""viewer.annotations.edits: each edit gives the expected new value and leaves the old one intact."""

from __future__ import annotations

import numpy as np
import pytest

from viewer.annotations import CLASSES, IGNORE_CLASS, Annotations, Region
from viewer.annotations.edits import Selection, add_points, add_region, delete, move, points_in_rect, reclass

SIZE = (1000, 500)


@pytest.fixture
def ann() -> Annotations:
    points = {name: np.empty((0, 2)) for name in CLASSES}
    points["tumor"] = np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])
    points["mitosis"] = np.array([[0.5, 0.5]])
    return Annotations(points=points, regions=(Region.polygon("tumor", [[0, 0], [100, 0], [100, 100]]),))


def test_add_points_appends_selects_and_shares_other_classes(ann):
    new, selection = add_points(ann, "lumen", np.array([[0.4, 0.6]]))
    assert new.normalised("lumen").tolist() == [[0.4, 0.6]] and selection.points == {"lumen": (0,)}
    assert new.points["tumor"] is ann.points["tumor"]  # untouched classes are shared, not copied
    assert len(ann.normalised("lumen")) == 0  # the old value is unchanged (undo relies on it)
    with pytest.raises(ValueError):
        new.points["lumen"][0, 0] = 1.0  # snapshots are read-only


def test_move_in_pixels_clamped_to_the_image(ann):
    selection = Selection.of({"tumor": [0, 2]}, [0])
    new = move(ann, selection, 100.0, -60.0, SIZE)
    np.testing.assert_allclose(new.normalised("tumor"), [[0.2, 0.0], [0.2, 0.2], [0.4, 0.18]])
    np.testing.assert_allclose(new.regions[0].rings[0], [[100, -60], [200, -60], [200, 40]])
    assert ann.normalised("tumor")[0].tolist() == [0.1, 0.1]


def test_delete_points_and_regions(ann):
    new = delete(ann, Selection.of({"tumor": [1], "mitosis": [0]}, [0]))
    assert new.normalised("tumor").tolist() == [[0.1, 0.1], [0.3, 0.3]]
    assert len(new.normalised("mitosis")) == 0 and "mitosis" in new.classes and new.regions == ()


def test_reclass_keeps_the_selection_on_the_moved_items(ann):
    selection = Selection.of({"tumor": [0, 2], "mitosis": [0]}, [0])
    new, after = reclass(ann, selection, "mitosis")
    assert new.normalised("tumor").tolist() == [[0.2, 0.2]]
    assert new.normalised("mitosis").tolist() == [[0.5, 0.5], [0.1, 0.1], [0.3, 0.3]]
    assert after.points == {"mitosis": (0, 1, 2)} and after.regions == (0,)
    assert new.regions[0].name == "mitosis"
    ignored, _ = reclass(ann, Selection.of(regions=[0]), IGNORE_CLASS)
    assert ignored.regions[0].name == IGNORE_CLASS and ignored.points["tumor"] is ann.points["tumor"]


def test_rubber_band_and_new_regions(ann):
    found = points_in_rect(ann, (50, 20, 250, 120), SIZE)
    assert found.points == {"tumor": (0, 1)} and found.regions == ()
    assert points_in_rect(ann, (-1, -1, 101, 101), SIZE).regions == (0,)
    assert points_in_rect(ann, (0, 0, 1000, 500), SIZE, classes={"mitosis"}).points == {"mitosis": (0,)}
    new, selection = add_region(ann, Region.polygon(IGNORE_CLASS, [[5, 5], [9, 5], [9, 9]]))
    assert len(new.regions) == 2 and selection.regions == (1,) and len(ann.regions) == 1


def test_same_as_is_exact(ann):
    assert ann.same_as(ann.with_points({}))
    assert not ann.same_as(ann.with_points({"tumor": ann.normalised("tumor") + 1e-12}))
    assert not ann.same_as(ann.with_regions([]))

"""Regions in exported overlays: painted as on the canvas, the same in one pass and in blocks."""

from __future__ import annotations

import numpy as np

from viewer.annotations import CLASSES, IGNORE_CLASS, Annotations, Region, class_colour
from viewer.export.render import OverlayRenderer, render_overlay
from viewer.overlay import REGION_FILL, OverlayStyle, compose
from viewer.slide.plain import PlainSlide


def annotated(w: int, h: int) -> Annotations:
    points = {name: np.empty((0, 2)) for name in CLASSES}
    points["tumor"] = np.array([[0.5, 0.5]])
    angles = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    blob = np.stack([60 + 35 * np.cos(angles), 70 + 25 * np.sin(angles)], axis=1)
    ring = np.array([[120, 20], [180, 20], [180, 130], [120, 130]], float)
    hole = np.array([[140, 60], [160, 60], [160, 90], [140, 90]], float)
    return Annotations(points=points, regions=(Region.polygon("tumor", blob), Region(IGNORE_CLASS, (ring, hole))))


def test_regions_are_tinted_hatched_and_outlined_the_same_in_blocks():
    h, w = 150, 190
    image = np.full((h, w, 3), 200, np.uint8)
    ann = annotated(w, h)
    style = OverlayStyle(show_heatmap=False, marker_radius=5)
    expected = compose(image, None, ann, style)
    tumour = np.array(class_colour("tumor"), float)
    tint = np.rint(200 * (1 - REGION_FILL) + tumour * REGION_FILL).astype(np.uint8)
    assert (expected[70, 40] == tint).all()  # inside the blob, away from its marker: tinted
    assert (expected[70, 25] == class_colour("tumor")).all() or (expected[70, 26] == class_colour("tumor")).all()
    assert (expected[5, 5] == 200).all() and (expected[75, 150] == 200).all()  # outside, and in the hole
    ignore = expected[30:120, 125:135]
    assert (ignore == 40).all(axis=2).any() and (ignore == 200).all(axis=2).any()  # hatched, not filled
    slide = PlainSlide("img.tif", image)
    np.testing.assert_array_equal(np.concatenate([s for _, s in render_overlay(slide, None, ann, style, rows=7)]),
                                  expected)
    renderer = OverlayRenderer.for_region(slide, None, ann, style)
    tiled = np.concatenate([np.concatenate([renderer.block(x, y, min(23, w - x), min(19, h - y))
                                            for x in range(0, w, 23)], axis=1) for y in range(0, h, 19)])
    np.testing.assert_array_equal(tiled, expected)


def test_hidden_classes_and_hidden_annotations_leave_regions_out():
    h, w = 150, 190
    image = np.full((h, w, 3), 200, np.uint8)
    ann = annotated(w, h)
    only_points = compose(image, None, ann, OverlayStyle(show_heatmap=False, visible_classes=("tumor",)))
    assert (only_points[30:120, 125:135] == 200).all()  # the ignore region is hidden with its class
    nothing = compose(image, None, ann, OverlayStyle(show_heatmap=False, show_annotations=False))
    assert (nothing == 200).all()

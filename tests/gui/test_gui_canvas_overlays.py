"""Overlays of the canvas: the overview (minimap) and the scale bar, and their View menu toggles."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt

from viewer.gui.canvas import Canvas
from viewer.gui.canvas.scale_bar import format_length, nice_length

from .synthetic_slides import SyntheticSlide

WAIT_MS = 15_000


@pytest.fixture
def canvas(qtbot) -> Canvas:
    canvas = Canvas()
    qtbot.addWidget(canvas)
    canvas.resize(800, 600)
    canvas.show()
    qtbot.waitExposed(canvas)
    return canvas


def show(qtbot, canvas: Canvas, slide: SyntheticSlide) -> None:
    canvas.set_slide(slide)
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)


def test_minimap_appears_when_zoomed_in_and_a_click_moves_the_view(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide()
    show(qtbot, canvas, slide)
    minimap = canvas.minimap
    qtbot.waitUntil(lambda: minimap.has_thumbnail, timeout=WAIT_MS)
    assert not minimap.isVisible()  # the whole slide is in view: nothing to add
    canvas.zoom_to(0.25)
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)
    assert minimap.isVisible()
    # In the top-right corner, inside the canvas.
    assert minimap.geometry().right() < canvas.width() and minimap.y() < 50
    assert minimap.x() > canvas.width() / 2
    target = minimap.to_widget(12_000, 3_000).toPoint()
    qtbot.mouseClick(minimap, Qt.MouseButton.LeftButton, pos=target)
    centre = canvas.view.viewRect().center()
    cell = slide.width / minimap.image_rect().width()  # one minimap pixel in level-0 pixels
    assert abs(centre.x() - 12_000) <= 2 * cell and abs(centre.y() - 3_000) <= 2 * cell
    assert abs(canvas.zoom_level() - 0.25) < 0.01  # the zoom stays
    # Dragging follows the mouse.
    qtbot.mousePress(minimap, Qt.MouseButton.LeftButton, pos=target)
    qtbot.mouseMove(minimap, pos=target + QPoint(-40, 20))
    qtbot.mouseRelease(minimap, Qt.MouseButton.LeftButton, pos=target + QPoint(-40, 20))
    moved = canvas.view.viewRect().center()
    assert moved.x() < centre.x() - 30 * cell and moved.y() > centre.y() + 15 * cell
    # The outline follows the view.
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)
    assert minimap._view == canvas.view.viewRect()


def test_minimap_can_be_switched_off(qtbot, canvas: Canvas) -> None:
    show(qtbot, canvas, SyntheticSlide())
    qtbot.waitUntil(lambda: canvas.minimap.has_thumbnail, timeout=WAIT_MS)
    canvas.zoom_to(0.5)
    qtbot.waitUntil(canvas.minimap.isVisible, timeout=WAIT_MS)
    canvas.set_overview_enabled(False)
    assert not canvas.minimap.isVisible()
    canvas.set_overview_enabled(True)
    assert canvas.minimap.isVisible()


@pytest.mark.parametrize(("um_per_px", "length", "label"), [
    (0.25, 20, "20 µm"), (0.5, 50, "50 µm"), (1.0, 100, "100 µm"), (2.5, 200, "200 µm"), (4.0, 500, "500 µm"),
    (8.0, 1000, "1 mm"), (16.0, 2000, "2 mm"), (0.01, 1, "1 µm"), (0.004, 0.5, "0.5 µm"),
])
def test_nice_lengths(um_per_px: float, length: float, label: str) -> None:
    assert nice_length(um_per_px) == pytest.approx(length)
    assert format_length(nice_length(um_per_px)) == label
    assert length / um_per_px <= 160


def test_scale_bar_shows_a_round_length_for_a_known_pixel_size(qtbot, canvas: Canvas) -> None:
    show(qtbot, canvas, SyntheticSlide(mpp=(0.25, 0.25)))
    bar = canvas.scale_bar
    canvas.zoom_to(1.0)  # 0.25 µm per screen pixel: 160 px hold 40 µm, so 20 µm
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)
    assert bar.isVisible() and bar.text() == "20 µm"
    assert bar.bar_width() == pytest.approx(20 / (0.25 / canvas.zoom_level()))
    canvas.zoom_to(0.1)  # 2.5 µm per screen pixel: 200 µm
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)
    assert bar.text() == "200 µm"
    canvas.fit()  # ~21 level-0 px per screen px: ~5 µm per px, so 500 µm
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)
    assert bar.text() == "500 µm"
    # Bottom-left corner.
    assert bar.x() < 50 and bar.geometry().bottom() > canvas.height() - 50
    canvas.set_scale_bar_enabled(False)
    assert not bar.isVisible()
    canvas.set_scale_bar_enabled(True)
    assert bar.isVisible()


def test_no_scale_bar_without_a_pixel_size(qtbot, canvas: Canvas) -> None:
    show(qtbot, canvas, SyntheticSlide(mpp=(0.25, 0.25)))
    assert canvas.scale_bar.isVisible()
    show(qtbot, canvas, SyntheticSlide(mpp=None))
    assert not canvas.scale_bar.isVisible() and canvas.scale_bar.text() == ""


def test_view_menu_toggles_are_remembered(qtbot, make_window) -> None:
    window = make_window()
    assert window.show_overview_action.isChecked() and window.show_scale_bar_action.isChecked()
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    view_menu_texts = [a.text() for a in view_menu.actions()]
    assert "&Overview" in view_menu_texts and "Scale &Bar" in view_menu_texts
    window.show_overview_action.trigger()
    window.show_scale_bar_action.trigger()
    assert not window.canvas._overview_enabled and not window.canvas.scale_bar._enabled
    window.close()
    again = make_window()
    assert not again.show_overview_action.isChecked() and not again.show_scale_bar_action.isChecked()
    assert not again.canvas._overview_enabled

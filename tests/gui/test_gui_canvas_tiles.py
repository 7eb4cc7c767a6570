"""The tiled canvas: which tiles of which level are read, stale requests, cache bound, the resident
coarsest level, corrupt tiles, sharpness at 100 %, and switching slides while tiles load.

Slides are procedural (:mod:`synthetic_slides`) and count their reads per level, so the tests
check exactly what was decoded, not timings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF
from PySide6.QtGui import QImage

from viewer.gui.canvas import Canvas
from viewer.gui.canvas.tile_grid import TileKey, grid_size, tile_rect, tiles_in_rect
from viewer.gui.canvas.tile_layer import PLACEHOLDER_GREY
from viewer.gui.canvas.tile_loader import READ_THREADS
from viewer.slide.plain import PlainSlide

from .synthetic_slides import TILE, SyntheticSlide

WAIT_MS = 15_000


@pytest.fixture
def canvas(qtbot) -> Canvas:
    canvas = Canvas()
    qtbot.addWidget(canvas)  # closing it joins the reading threads
    canvas.resize(800, 600)
    canvas.show()
    qtbot.waitExposed(canvas)
    return canvas


def wait_drawn(qtbot, canvas: Canvas) -> None:
    qtbot.waitUntil(canvas.is_drawn, timeout=WAIT_MS)


def expected_tiles(canvas: Canvas, level: int) -> set[tuple[int, int, int, int, int]]:
    """The regions of ``level`` under the view, computed here from the view rectangle alone."""
    slide, rect = canvas.slide, canvas.view.viewRect()
    info = slide.levels[level]
    d = info.downsample
    left, top = max(rect.left(), 0) / d, max(rect.top(), 0) / d
    right, bottom = min(rect.right() / d, info.width), min(rect.bottom() / d, info.height)
    regions = set()
    for row in range(int(top // TILE), math.ceil(bottom / TILE)):
        for column in range(int(left // TILE), math.ceil(right / TILE)):
            x, y = column * TILE, row * TILE
            regions.add((level, x, y, min(TILE, info.width - x), min(TILE, info.height - y)))
    return regions


def grabbed_rgb(canvas: Canvas) -> np.ndarray:
    """The canvas as it is on screen, (h, w, 3) uint8."""
    image = canvas.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def regions_read(slide: SyntheticSlide, level: int) -> set[tuple[int, int, int, int, int]]:
    return {r for r in slide.regions if r[0] == level}


def test_fit_reads_the_coarsest_level_first_and_only_visible_tiles(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide()  # 16384 x 12288; levels 1, 4, 16, 64
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    # Fit in 800 px: ~21 level-0 px per screen px, so level 2 (16x) is drawn over level 3 (64x).
    assert canvas.tile_layer.level == 2
    assert slide.regions[0][0] == 3  # the coarsest level is read before anything else
    assert slide.reads == {3: 1, 2: 4}  # 256 x 192 is one tile; 1024 x 768 is 2 x 2
    assert regions_read(slide, 2) == expected_tiles(canvas, 2)
    assert slide.thumbnails == 1
    # A stale tick of the view timer does not read anything again.
    canvas._update_view()
    wait_drawn(qtbot, canvas)
    assert slide.reads == {3: 1, 2: 4}


@pytest.mark.parametrize(("zoom", "level"), [(1.0, 0), (0.5, 0), (0.2, 1)])
def test_zoomed_in_reads_only_the_visible_tiles_of_the_matching_level(qtbot, canvas: Canvas, zoom: float,
                                                                        level: int) -> None:
    slide = SyntheticSlide()
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    canvas.centre_on(5000.0, 4000.0)
    canvas.zoom_to(zoom)
    wait_drawn(qtbot, canvas)
    assert canvas.tile_layer.level == level
    expected = expected_tiles(canvas, level)
    assert 2 <= len(expected) <= 12
    assert regions_read(slide, level) == expected
    assert slide.reads[level] == len(expected)  # each read once
    # Nothing of the levels in between (fit drew level 2; nothing of level 1 was needed at 100 %).
    for other in range(len(slide.levels) - 1):
        if other not in (level, 2):
            assert slide.reads[other] == 0
    assert canvas.tile_layer.shown_tiles() >= set(canvas.tile_layer.visible_tiles)


def test_a_pan_in_progress_drops_stale_requests(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide(gated_levels={0})
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    layer = canvas.tile_layer
    canvas.centre_on(3000.0, 3000.0)
    canvas.zoom_to(0.5)  # still level 0 (2 level-0 px per screen px), 12+ tiles
    qtbot.waitUntil(lambda: layer.requested[0] > 0 and not layer._pending, timeout=WAIT_MS)
    first = set(layer.visible_tiles)
    assert len(first) > READ_THREADS  # more requests than threads: some wait in the queue
    # The workers hold the first READ_THREADS tiles at the gate; pan far away meanwhile.
    qtbot.waitUntil(lambda: sum(slide.reads.values()) >= 5 + READ_THREADS, timeout=WAIT_MS)
    canvas.centre_on(12000.0, 9000.0)
    qtbot.waitUntil(lambda: layer.requested[0] >= len(first) + 1 and not layer._pending, timeout=WAIT_MS)
    second = set(layer.visible_tiles)
    assert not first & second
    slide.gate.set()
    wait_drawn(qtbot, canvas)
    assert layer.requested[0] == len(first) + len(second)
    # Only the tiles already being read when the pan happened were decoded; the rest were dropped.
    assert slide.reads[0] == READ_THREADS + len(second)
    assert layer.dropped == len(first) - READ_THREADS
    assert regions_read(slide, 0) >= expected_tiles(canvas, 0)
    assert layer.shown_tiles() >= second


def test_cache_stays_within_its_bytes_and_the_coarsest_level_stays_resident(qtbot) -> None:
    tile_bytes = TILE * TILE * 3
    canvas = Canvas(tile_cache_bytes=6 * tile_bytes)
    qtbot.addWidget(canvas)
    canvas.resize(800, 600)
    canvas.show()
    qtbot.waitExposed(canvas)
    slide = SyntheticSlide()
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    layer = canvas.tile_layer
    coarsest = set(layer.coarsest_tiles)
    canvas.zoom_to(1.0)
    for x, y in ((1000, 1000), (4000, 1000), (8000, 6000), (15000, 11000), (1000, 1000)):
        canvas.centre_on(float(x), float(y))
        wait_drawn(qtbot, canvas)
        assert layer.cache.bytes <= 6 * tile_bytes
        assert coarsest <= set(layer.cache.keys())  # pinned: never evicted
        assert coarsest <= layer.shown_tiles()  # and always drawn underneath
    # The scene holds a bounded pool of items, not one per tile ever seen.
    assert layer.item_count <= len(layer.visible_tiles) + len(coarsest) + 48


def test_a_corrupt_tile_is_drawn_grey_and_reported(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide(broken={(0, 9, 7)})  # the level-0 tile around (4864, 3840)
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    canvas.centre_on(9.5 * TILE, 7.5 * TILE)
    with qtbot.waitSignal(canvas.tile_failed, timeout=WAIT_MS) as failed:
        canvas.zoom_to(1.0)
    message = failed.args[0]
    assert "column 9, row 7 of level 0" in message and "synthetic.tif" in message and "\n" not in message
    wait_drawn(qtbot, canvas)
    layer = canvas.tile_layer
    assert TileKey(0, 9, 7) in layer.failed_tiles() and TileKey(0, 9, 7) in layer.shown_tiles()
    assert layer.pixel_at(int(9.5 * TILE), int(7.5 * TILE)) is None  # no readout from a grey square
    # On screen: grey in the middle (the broken tile), the pattern next to it.
    image = canvas.grab().toImage()
    centre = canvas.mapFromScene(canvas.view.mapViewToScene(QPointF(9.5 * TILE, 7.5 * TILE)))
    colour = image.pixelColor(centre)
    assert (colour.red(), colour.green(), colour.blue()) == (PLACEHOLDER_GREY,) * 3
    beside = canvas.mapFromScene(canvas.view.mapViewToScene(QPointF(9 * TILE - 100, 7.5 * TILE)))
    assert image.pixelColor(beside).blue() == slide.tint
    # The viewer keeps working: the next pan reads other tiles, the grey one is not retried.
    reads = slide.reads[0]
    canvas.centre_on(3000.0, 3000.0)
    wait_drawn(qtbot, canvas)
    assert slide.reads[0] > reads
    assert layer.failed_tiles() == {TileKey(0, 9, 7)}


def test_one_corrupt_file_tile_greys_out_only_itself(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide(broken={(0, 18, 14)})
    slide.tile_size = (256, 256)  # display tiles hold 2 x 2 file tiles; the broken one is the top-left of (9, 7)
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    canvas.centre_on(9.5 * TILE, 7.5 * TILE)
    with qtbot.waitSignal(canvas.tile_failed, timeout=WAIT_MS) as failed:
        canvas.zoom_to(1.0)
    assert "column 9, row 7 of level 0 can be read only in part" in failed.args[0]
    assert "synthetic.tif" in failed.args[0]
    wait_drawn(qtbot, canvas)
    layer = canvas.tile_layer
    assert layer.damaged_tiles() == {TileKey(0, 9, 7)} and not layer.failed_tiles()
    assert layer.pixel_at(9 * TILE + 300, 7 * TILE + 300) is None  # no readout from a damaged tile
    screen = grabbed_rgb(canvas)

    def on_screen(x: float, y: float) -> tuple[int, int, int]:
        point = canvas.mapFromScene(canvas.view.mapViewToScene(QPointF(x, y)))
        return tuple(int(v) for v in screen[point.y(), point.x()])

    assert on_screen(9 * TILE + 128, 7 * TILE + 128) == (PLACEHOLDER_GREY,) * 3  # the broken quarter
    for x, y in ((9 * TILE + 384, 7 * TILE + 128), (9 * TILE + 128, 7 * TILE + 384), (9 * TILE + 384, 7 * TILE + 384)):
        assert on_screen(x, y) == tuple(int(v) for v in slide.pattern(0, int(x), int(y), 1, 1)[0, 0])


def test_a_second_slide_replaces_one_still_loading(qtbot, canvas: Canvas) -> None:
    first = SyntheticSlide(tint=10, gated_levels={0, 1, 2, 3})  # every read waits
    second = SyntheticSlide(tint=250, width=8000, height=6000)
    canvas.set_slide(first)
    qtbot.waitUntil(lambda: sum(first.reads.values()) >= 1, timeout=WAIT_MS)
    canvas.set_slide(second)
    first.gate.set()  # the first slide's reads finish late
    wait_drawn(qtbot, canvas)
    qtbot.wait(50)  # let any late result of the first slide arrive
    layer = canvas.tile_layer
    assert layer.slide is second and canvas.image_size == (8000, 6000)
    assert layer.shown_tiles() and all(int(item.image[0, 0, 2]) == 250 for item in layer._items.values())
    assert all(int(pixels[0, 0, 2]) == 250 for pixels in (layer.cache.get(k) for k in layer.cache.keys()))


def test_small_image_is_pixel_exact_at_100_percent(qtbot, canvas: Canvas) -> None:
    # A BreCaHAD-sized image: level 0 plus one virtual half-size level.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1024, 1360, 3), dtype=np.uint8)  # noise: any blur would show
    slide = PlainSlide("noise.png", pixels)
    assert [level.virtual for level in slide.levels] == [False, True]
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    canvas.zoom_to(1.0)
    canvas.centre_on(700.0, 500.0)
    wait_drawn(qtbot, canvas)
    assert canvas.tile_layer.level == 0
    shown = grabbed_rgb(canvas)[200:400, 300:500]  # a patch from the middle of the screen
    # Where the patch should be in the image, from the view; search +-2 px for rounding.
    corner = canvas.view.mapSceneToView(canvas.mapToScene(300, 200))
    best = max(
        (np.mean(np.all(pixels[y : y + 200, x : x + 200] == shown, axis=-1)), x, y)
        for y in range(round(corner.y()) - 2, round(corner.y()) + 3)
        for x in range(round(corner.x()) - 2, round(corner.x()) + 3)
    )
    assert best[0] > 0.99  # every screen pixel is one image pixel: nothing blurred or resampled
    # The readout comes from the decoded tile.
    assert canvas.tile_layer.pixel_at(700, 500) == tuple(int(v) for v in pixels[500, 700])


def test_tile_grid_follows_the_file_tiles() -> None:
    slide = SyntheticSlide(width=5000, height=3000, downsamples=(1, 4))
    slide.tile_size = (240, 240)  # NDPI-like: two file tiles per display tile
    assert grid_size(slide, 0) == (480, 480)
    slide.tile_size = (4096, 16)  # strips: split, not 48 MB reads
    assert grid_size(slide, 0) == (512, 512)
    slide.tile_size = (512, 512)
    keys = tiles_in_rect(slide, 0, 1000, 1000, 1600, 1400)
    assert set(keys) == {TileKey(0, c, r) for c in (1, 2, 3) for r in (1, 2)}
    assert keys[0] == TileKey(0, 2, 2)  # nearest the centre (1300, 1200) first
    assert tiles_in_rect(slide, 0, -500, -500, 0, 0) == []  # outside the image
    # Level 1 is 1250 x 750: its tile (2, 1) is an edge tile, clipped, drawn 4x larger.
    assert tile_rect(slide, TileKey(1, 2, 1)) == (4096.0, 2048.0, (1250 - 1024) * 4.0, (750 - 512) * 4.0)


def test_window_shows_a_slide_before_any_tile_is_decoded(qtbot, make_window, monkeypatch, tmp_path: Path) -> None:
    import viewer.gui.document as document

    path = tmp_path / "big.svs"
    path.write_bytes(b"not read")
    slide = SyntheticSlide(width=100_000, height=80_000, downsamples=(1, 4, 16, 64, 128), gated_levels={0, 1, 2, 3, 4},
                           mpp=(0.25, 0.25), name="big.svs")
    monkeypatch.setattr(document, "open_slide", lambda p: slide)
    window = make_window()
    try:
        with qtbot.waitSignal(window.image_opened, timeout=WAIT_MS):
            window.open_image(path)
        # On screen while every read is still held: opening read no pixels at all.
        assert window.stack.currentWidget() is window.canvas and window.opened.slide is slide
        assert window.windowTitle().startswith("big.svs")
        assert canvas_reads_started(slide)
        window._show_cursor(50_000, 40_000)  # no tile yet: position without RGB, and no blocking read
        assert window.status.position_label.text().split() == ["x", "50000", "y", "40000"]
        assert window.status.rgb_label.text() == ""
    finally:
        slide.gate.set()
    wait_drawn(qtbot, window.canvas)
    assert window.canvas.tile_layer.level == 3  # 100k px fitted into ~1000 px
    assert slide.reads[0] == slide.reads[1] == slide.reads[2] == 0


def canvas_reads_started(slide: SyntheticSlide) -> bool:
    """Reads may have started (held at the gate); none has finished, so nothing was decoded."""
    return set(slide.reads) <= {len(slide.levels) - 1, len(slide.levels) - 2}


def test_window_reports_a_corrupt_tile_in_the_status_bar(qtbot, make_window, monkeypatch, tmp_path: Path) -> None:
    import viewer.gui.document as document

    path = tmp_path / "damaged.svs"
    path.write_bytes(b"not read")
    slide = SyntheticSlide(width=4000, height=3000, downsamples=(1, 4), broken={(1, 0, 0)}, name="damaged.svs")
    monkeypatch.setattr(document, "open_slide", lambda p: slide)
    window = make_window()
    with qtbot.waitSignal(window.canvas.tile_failed, timeout=WAIT_MS):
        window.open_image(path)
    assert "damaged.svs" in window.status.currentMessage() and "grey" in window.status.currentMessage()
    assert window.opened.slide is slide


def test_opening_a_second_image_while_the_first_opens_ends_on_the_second(
    qtbot, make_window, monkeypatch, small_image: Path, tiled_image: Path
) -> None:
    import threading

    import viewer.gui.document_controller as controller

    gate, done = threading.Event(), threading.Event()
    real = controller.read_image

    def slow(path, annotations=None):
        try:
            if Path(path) == small_image:
                gate.wait(30)  # the first file takes long to open
            return real(path, annotations)
        finally:
            if Path(path) == small_image:
                done.set()

    monkeypatch.setattr(controller, "read_image", slow)
    window = make_window()
    window.open_image(small_image)
    with qtbot.waitSignal(window.image_opened, timeout=WAIT_MS):
        window.open_image(tiled_image)
    gate.set()
    qtbot.waitUntil(done.is_set, timeout=WAIT_MS)
    qtbot.wait(100)  # the first open's late result reaches the main thread, and is dropped
    assert window.opened.slide.path == tiled_image
    assert window.canvas.slide is window.opened.slide and window.canvas.image_size == (900, 700)
    assert window.windowTitle().startswith("tiled.tif")
    wait_drawn(qtbot, window.canvas)


def test_random_pans_and_zooms_end_with_exactly_the_visible_tiles(qtbot, canvas: Canvas) -> None:
    slide = SyntheticSlide()
    canvas.set_slide(slide)
    wait_drawn(qtbot, canvas)
    layer = canvas.tile_layer
    rng = np.random.default_rng(7)
    for step in range(25):
        canvas.centre_on(float(rng.uniform(0, slide.width)), float(rng.uniform(0, slide.height)))
        canvas.zoom_to(float(np.exp(rng.uniform(np.log(0.03), np.log(4.0)))))
        if step % 3 == 0:
            wait_drawn(qtbot, canvas)
        else:
            qtbot.wait(int(rng.integers(0, 60)))  # sometimes moving on before the tiles came
    wait_drawn(qtbot, canvas)
    # On screen: the resident coarsest level and the visible tiles of the current level, nothing else.
    assert layer.shown_tiles() == set(layer.visible_tiles) | set(layer.coarsest_tiles)
    # Nothing was decoded twice: the cache (512 MB here) kept everything read.
    assert sum(slide.reads.values()) == sum(layer.requested.values()) - layer.dropped
    assert len(set(slide.regions)) == len(slide.regions)

"""The image layer: a slide drawn as tiles of the pyramid level that matches the zoom.

Like ASAP, QuPath and napari, the canvas never holds the whole image. For the current view it
picks the level with about one level pixel per screen pixel, works out which of that level's
tiles are visible, and reads the missing ones on worker threads (:mod:`tile_loader`). Decoded
tiles live in a byte-bounded LRU cache (:class:`~viewer.cache.ByteLRU`).

- The coarsest level (at most ~1024 px a side, a few tiles) is read first, kept resident
  (pinned in the cache) and always drawn underneath, so there is never a hole while finer
  tiles arrive; cached tiles of intermediate levels fill in above it meanwhile.
- A tile is requested only once it has stayed visible for :data:`REQUEST_DELAY_MS` (as napari
  does), so a pan in progress requests nothing for the tiles it sweeps past; a request that is
  no longer visible when a worker picks it up is dropped without decoding, and results for a
  slide that is no longer shown are ignored.
- Tiles are drawn by a small pool of reused ``pg.ImageItem`` objects, one per tile on screen,
  so the scene holds dozens of items, not thousands. Items are placed in level-0 pixels, the
  coordinates every other layer draws in.
- A tile that cannot be decoded is drawn grey and reported once through :attr:`tile_failed`;
  when it spans several tiles of the file, the readable ones are still shown.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QRectF, QTimer, Signal
from PySide6.QtGui import QPainter

from viewer.cache import ByteLRU
from viewer.errors import ImageError, InputError
from viewer.gui.canvas.tile_grid import (
    TileKey, all_tiles, coarsest_level, covering_tiles, grid_size, level_for_view, tile_rect, tile_region,
    tiles_in_rect,
)
from viewer.gui.canvas.tile_loader import ReadJob, TileLoader
from viewer.slide.source import SlideSource

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
REQUEST_DELAY_MS = 75
"""A tile must stay visible this long before it is requested (napari waits ~100 ms)."""

PLACEHOLDER_GREY = 160
_PLACEHOLDER = np.full((1, 1, 3), PLACEHOLDER_GREY, np.uint8)  # stretched over the tile's rectangle
_MAX_SPARE_ITEMS = 48

# Stacking inside the layer: the resident coarsest level at the bottom, cached tiles of
# intermediate levels above it (finer ones higher), tiles of the wanted level on top.
_Z_BASE, _Z_FALLBACK, _Z_TARGET = 0.0, 1.0, 2.0


class TileItem(pg.ImageItem):
    """One tile on screen. Drawn with smooth (bilinear) sampling while minified: a level is
    shown at 1 to 2 (or 4) level pixels per screen pixel, and nearest-neighbour sampling there
    turns nuclei into speckle. Magnified or at 100 % it stays nearest-neighbour, so pixels stay
    crisp squares and 100 % is pixel-exact."""

    def paint(self, painter: QPainter, *args: object) -> None:
        minified = abs(painter.deviceTransform().m11()) < 0.99
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, minified)
        super().paint(painter, *args)


def _read_tile(slide: SlideSource, level: int, region: tuple[int, int, int, int]
               ) -> tuple[np.ndarray, ImageError | None]:
    """Worker thread: decode one display tile; returns it with the error of any part that could
    not be decoded (drawn grey). Raises when nothing of it could be read. The array is made
    read-only because the cache shares it."""
    try:
        pixels, problem = slide.read_region(level, *region), None
    except ImageError as exc:
        pixels, problem = _salvage(slide, level, region, exc), exc
    pixels.setflags(write=False)
    return pixels, problem


def _salvage(slide: SlideSource, level: int, region: tuple[int, int, int, int], error: ImageError) -> np.ndarray:
    """Read a display tile file tile by file tile, so one corrupt file tile greys out only itself
    and not the (up to 3) good ones sharing its display tile. Re-raises ``error`` if none reads."""
    x, y, w, h = region
    fw, fh = slide.tile_size
    if slide.levels[level].virtual or (w <= fw and h <= fh):
        raise error  # one file tile (or a built level): nothing to save
    out = np.full((h, w, 3), PLACEHOLDER_GREY, np.uint8)
    readable = False
    for py in range(0, h, fh):
        for px in range(0, w, fw):
            pw, ph = min(fw, w - px), min(fh, h - py)
            try:
                out[py : py + ph, px : px + pw] = slide.read_region(level, x + px, y + py, pw, ph)
                readable = True
            except ImageError:
                pass
    if not readable:
        raise error
    return out


def _failure_text(slide: SlideSource, key: TileKey, exc: BaseException, partly: bool = False) -> str:
    where = f"Tile column {key.column}, row {key.row} of level {key.level}"
    if partly:
        return f"{where} can be read only in part; the rest is shown grey: {exc}"
    if isinstance(exc, InputError):  # names the file already
        return f"{where} cannot be read and is shown grey: {exc}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"{where} of {slide.name} cannot be read and is shown grey: {reason}"


class TileLayer(QObject):
    """Draws one slide as tiles into ``root`` (an item the canvas adds to its view)."""

    tile_failed = Signal(str)
    """One line saying which tile could not be decoded."""
    tiles_changed = Signal()
    """New tiles were drawn (or a slide was set): for tests and scripts that wait for the picture."""

    def __init__(self, loader: TileLoader, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.root = pg.ItemGroup()
        self.cache: ByteLRU[np.ndarray] = ByteLRU(cache_bytes)
        self.requested: Counter[int] = Counter()
        """Tiles requested per level since the slide was set (tests and benchmarks read it)."""
        self.dropped = 0
        """Requests dropped undecoded because their tile was no longer wanted."""
        self._loader = loader
        self._slide: SlideSource | None = None
        self._generation = 0
        self._coarse: list[TileKey] = []
        self._target_level = 0
        self._visible: list[TileKey] = []
        self._wanted: frozenset[tuple[int, TileKey]] = frozenset()  # read by worker threads
        self._in_flight: set[TileKey] = set()
        self._pending: dict[TileKey, float] = {}  # tile -> when it became visible (monotonic s)
        self._failed: set[TileKey] = set()  # nothing readable: drawn as a grey square
        self._damaged: set[TileKey] = set()  # partly grey: no colour readout from them
        self._items: dict[TileKey, TileItem] = {}
        self._shown: dict[TileKey, np.ndarray] = {}  # what each item holds (outlives cache eviction)
        self._spare: list[TileItem] = []
        self._request_timer = QTimer(self, singleShot=True)
        self._request_timer.timeout.connect(self._request_due)
        # Tiles arriving together are drawn in one pass.
        self._redraw_timer = QTimer(self, singleShot=True, interval=0)
        self._redraw_timer.timeout.connect(self._redraw)

    # State ----------------------------------------------------------------------------------
    @property
    def slide(self) -> SlideSource | None:
        return self._slide

    @property
    def generation(self) -> int:
        """Changes with every :meth:`set_slide`; reads carry it so late results can be ignored."""
        return self._generation

    @property
    def level(self) -> int:
        """The level drawn for the current zoom."""
        return self._target_level

    @property
    def visible_tiles(self) -> list[TileKey]:
        """Tiles of :attr:`level` in view, nearest the centre first."""
        return list(self._visible)

    @property
    def coarsest_tiles(self) -> list[TileKey]:
        return list(self._coarse)

    @property
    def item_count(self) -> int:
        """ImageItems in the scene (shown and spare)."""
        return len(self._items) + len(self._spare)

    def shown_tiles(self) -> set[TileKey]:
        return set(self._items)

    def failed_tiles(self) -> set[TileKey]:
        """Tiles drawn as grey squares: nothing of them could be decoded."""
        return set(self._failed)

    def damaged_tiles(self) -> set[TileKey]:
        """Tiles of which some file tiles could not be decoded (those parts are grey)."""
        return set(self._damaged)

    def is_idle(self) -> bool:
        """Nothing waiting to be requested, being read, or waiting to be drawn."""
        return not (self._pending or self._in_flight or self._redraw_timer.isActive())

    def is_complete(self) -> bool:
        """Every visible tile of the current level (and the coarsest level) is drawn."""
        return all(key in self._items for key in self._visible + self._coarse)

    # Slide ----------------------------------------------------------------------------------
    def set_slide(self, slide: SlideSource | None) -> None:
        """Show ``slide`` (None: nothing). Its coarsest level is requested at once."""
        self._generation += 1
        self._slide = slide
        self.cache.clear()
        self.requested.clear()
        self.dropped = 0
        self._in_flight.clear()
        self._pending.clear()
        self._failed.clear()
        self._damaged.clear()
        self._visible = []
        self._request_timer.stop()
        for key in list(self._items):
            self._release(key)
        if slide is None:
            self._coarse, self._wanted = [], frozenset()
            return
        coarsest = coarsest_level(slide)
        self._target_level = coarsest
        self._coarse = all_tiles(slide, coarsest)
        self._wanted = frozenset((self._generation, key) for key in self._coarse)
        for key in self._coarse:  # no delay: this is the picture while everything else loads
            self._submit(key)
        self.tiles_changed.emit()

    def update_view(self, left: float, top: float, right: float, bottom: float,
                    level0_per_screen_px: float) -> None:
        """The view now shows the level-0 rectangle given, at ``level0_per_screen_px``."""
        slide = self._slide
        if slide is None:
            return
        self._target_level = level = level_for_view(slide, level0_per_screen_px)
        self._visible = tiles_in_rect(slide, level, left, top, right, bottom)
        self._wanted = frozenset((self._generation, key) for key in self._coarse + self._visible)
        now = time.monotonic()
        # Tiles that left the view are forgotten here: a pan in progress cancels their requests.
        self._pending = {key: self._pending.get(key, now) for key in self._visible if self._missing(key)}
        if self._pending and not self._request_timer.isActive():
            self._request_timer.start(REQUEST_DELAY_MS)
        self._redraw()

    def shut_down(self) -> None:
        self._request_timer.stop()
        self._pending.clear()
        self._wanted = frozenset()

    # Pixel readout --------------------------------------------------------------------------
    def pixel_at(self, x: int, y: int) -> tuple[int, int, int] | None:
        """Level-0 RGB at ``(x, y)`` if its tile is already decoded, else None (never reads)."""
        slide = self._slide
        if slide is None or not (0 <= x < slide.width and 0 <= y < slide.height):
            return None
        tw, th = grid_size(slide, 0)
        key = TileKey(0, int(x) // tw, int(y) // th)
        if key in self._failed or key in self._damaged:
            return None
        pixels = self._shown.get(key)
        if pixels is None:
            pixels = self.cache.get(key)
        if pixels is None:
            return None
        return tuple(int(v) for v in pixels[int(y) - key.row * th, int(x) - key.column * tw])

    # Requests -------------------------------------------------------------------------------
    def _missing(self, key: TileKey) -> bool:
        return not (key in self._items or key in self._in_flight or key in self._failed or key in self.cache)

    def _request_due(self) -> None:
        now = time.monotonic()
        delay = REQUEST_DELAY_MS / 1000
        for key in [k for k in self._visible if k in self._pending]:  # nearest the centre first
            if now - self._pending[key] >= delay * 0.9:
                del self._pending[key]
                if self._missing(key):
                    self._submit(key)
        if self._pending:
            wait = min(self._pending.values()) + delay - now
            self._request_timer.start(max(1, round(wait * 1000)))

    def _submit(self, key: TileKey) -> None:
        slide, generation = self._slide, self._generation
        assert slide is not None
        marker = (generation, key)
        job = ReadJob(
            generation, key,
            read=partial(_read_tile, slide, key.level, tile_region(slide, key)),
            deliver=self._on_tile,
            wanted=lambda: marker in self._wanted,  # runs on the worker thread: a frozenset lookup
        )
        if self._loader.submit(job):
            self._in_flight.add(key)
            self.requested[key.level] += 1

    def _on_tile(self, job: ReadJob, result: tuple[np.ndarray, ImageError | None] | None,
                 error: BaseException | None, dropped: bool) -> None:
        if job.generation != self._generation:
            return  # a tile of the slide shown before: ignored
        key: TileKey = job.key
        self._in_flight.discard(key)
        if dropped:
            self.dropped += 1
            if key in self._visible and self._missing(key):  # panned back meanwhile
                self._pending[key] = time.monotonic()
                if not self._request_timer.isActive():
                    self._request_timer.start(REQUEST_DELAY_MS)
            return
        if error is not None:
            self._failed.add(key)
            self.tile_failed.emit(_failure_text(self._slide, key, error))
        else:
            pixels, problem = result
            if problem is not None:
                self._damaged.add(key)
                self.tile_failed.emit(_failure_text(self._slide, key, problem, partly=True))
            self.cache.put(key, pixels, pin=key.level == coarsest_level(self._slide))
        # Draw it now, before later arrivals could evict it from a small cache; the coalesced
        # redraw then retires the stand-ins it replaces.
        if key not in self._items and (key in self._coarse or key in self._visible):
            if self._show(self._slide, key):
                self._items[key].setZValue(_Z_BASE if key in self._coarse else _Z_TARGET)
                self.tiles_changed.emit()
        self._redraw_timer.start()

    # Drawing --------------------------------------------------------------------------------
    def _available(self, key: TileKey) -> bool:
        return key in self._items or key in self._failed or key in self.cache

    def _redraw(self) -> None:
        slide = self._slide
        if slide is None:
            return
        coarsest = coarsest_level(slide)
        wanted: dict[TileKey, float] = {key: _Z_BASE for key in self._coarse if self._available(key)}
        for key in self._visible:
            if key.level == coarsest:
                continue
            if self._available(key):
                wanted[key] = _Z_TARGET
                continue
            # Meanwhile: the finest level between this one and the base whose cached tiles cover it.
            for level in range(key.level + 1, coarsest):
                cover = covering_tiles(slide, key, level)
                if cover and all(self._available(k) for k in cover):
                    for k in cover:
                        wanted.setdefault(k, _Z_FALLBACK + (coarsest - level) / 100)
                    break
        for key in [k for k in self._items if k not in wanted]:
            self._release(key)
        added = False
        for key, z in wanted.items():
            if key not in self._items:
                if not self._show(slide, key):
                    continue
                added = True
            self._items[key].setZValue(z)
        if added:
            self.tiles_changed.emit()

    def _show(self, slide: SlideSource, key: TileKey) -> bool:
        pixels = _PLACEHOLDER if key in self._failed else self.cache.get(key)
        if pixels is None:  # evicted by a put since the check: requested again on the next view change
            return False
        item = self._spare.pop() if self._spare else None
        if item is None:
            item = TileItem(axisOrder="row-major")
            item.setParentItem(self.root)
        item.setImage(pixels, autoLevels=False, levels=None)
        item.setRect(QRectF(*tile_rect(slide, key)))
        item.show()
        self._items[key] = item
        self._shown[key] = pixels
        return True

    def _release(self, key: TileKey) -> None:
        item = self._items.pop(key)
        self._shown.pop(key, None)
        item.hide()
        item.clear()  # let the pixels go: the cache decides what stays in memory
        if len(self._spare) < _MAX_SPARE_ITEMS:
            self._spare.append(item)
        else:
            item.setParentItem(None)
            if item.scene() is not None:
                item.scene().removeItem(item)

"""A tiled pyramidal RGB TIFF written tile by tile, as whole-slide viewers expect.

Layout (OpenSlide's "generic tiled TIFF", which QuPath and ASAP open as a pyramid): level 0 in
the first page, each further level half the size of the one before in the following pages
(NewSubfileType = reduced image), all tiled (256 or 512 px), JPEG or deflate compressed, until
a level fits in one tile. Every level is *rendered* at its own downsample by the caller's
function (not shrunk from the level above), so nothing needs more than one row of tiles in
memory. The pixel size is written as the TIFF resolution (pixels per centimetre) when known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

TILE_SIZES = (256, 512)
COMPRESSIONS = {"jpeg": "jpeg", "deflate": "zlib"}
"""User-facing names -> tifffile's. JPEG: small, lossy (quality :data:`JPEG_QUALITY`); deflate: exact."""

JPEG_QUALITY = 90

ROW_BLOCK_PIXELS = 1 << 20
"""Rendered at once within one row of tiles: up to this many pixels (several tiles side by side)."""

BlockRenderer = Callable[[int, int, int, int], np.ndarray]
"""``render(ox, oy, w, h) -> (h, w, 3) uint8`` for one level."""


def pyramid_sizes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Level sizes: halving (rounded up) until a level fits in one tile."""
    sizes = [(int(width), int(height))]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def _tiles(render: BlockRenderer, width: int, height: int, tile: int, on_rows: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    """Tiles of one level in TIFF order (row by row, left to right), each (tile, tile, 3); the
    part beyond the image is white (invisible, and cheap to compress)."""
    per_block = max(1, ROW_BLOCK_PIXELS // (tile * tile))
    for ty in range(0, height, tile):
        th = min(tile, height - ty)
        for bx in range(0, width, tile * per_block):
            bw = min(tile * per_block, width - bx)
            block = render(bx, ty, bw, th)
            for tx in range(0, bw, tile):
                piece = np.full((tile, tile, 3), 255, dtype=np.uint8)
                part = block[:, tx : tx + tile]
                piece[: part.shape[0], : part.shape[1]] = part
                yield piece
        if on_rows is not None:
            on_rows(th)


def write_pyramid(
    path: str | Path,
    width: int,
    height: int,
    level_renderer: Callable[[int], BlockRenderer],
    *,
    tile: int = 512,
    compression: str = "jpeg",
    mpp: tuple[float, float] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
) -> list[tuple[int, int]]:
    """Write the pyramid to ``path`` (use a temporary file, see :mod:`viewer.atomic`).

    ``level_renderer(k)`` returns the block renderer of level ``k`` (downsample ``2**k`` of
    level 0). ``mpp``: µm per level-0 output pixel, or ``None``. ``on_rows(level, rows)`` is
    called after each row of tiles (progress). Returns the level sizes written.
    """
    import tifffile

    if tile not in TILE_SIZES:
        raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    sizes = pyramid_sizes(width, height, tile)
    raw = sum(w * h * 3 for w, h in sizes)
    codec = COMPRESSIONS[compression]
    options = {"compressionargs": {"level": JPEG_QUALITY}} if codec == "jpeg" else {"compressionargs": {"level": 6}}
    # Classic TIFF offsets stop at 4 GB; compressed data is usually far smaller, but only BigTIFF
    # is safe for a large uncompressed size (OpenSlide, QuPath and ASAP all read it).
    with tifffile.TiffWriter(path, bigtiff=raw > 2**31) as tif:
        for k, (w, h) in enumerate(sizes):
            resolution = {}
            if mpp is not None:
                factor = 2**k
                resolution = {
                    "resolution": (1e4 / (mpp[0] * factor), 1e4 / (mpp[1] * factor)),
                    "resolutionunit": "CENTIMETER",
                }
            report = None if on_rows is None else (lambda rows, k=k: on_rows(k, rows))
            tif.write(
                _tiles(level_renderer(k), w, h, tile, report),
                shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression=codec, subfiletype=1 if k else 0, metadata=None,
                software="histoviewer", maxworkers=1, **resolution, **options,
            )
    return sizes

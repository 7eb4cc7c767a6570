"""Synthetic whole-slide images for tests: deterministic writers and ways to damage them.

Every writer streams tiles or strips into tifffile, so a 30k x 30k slide is written without
holding it in memory. Pixel content comes from a *source*:

- ``None``: :func:`synthetic_tissue` (H&E-like, defined per pixel coordinate, any tile of a huge
  virtual image can be made on its own);
- a NumPy array ``(H, W, 3)`` (or ``(H, W)`` grey, ``(H, W, 4)`` RGBA): written as level 0, lower
  levels are its block averages (exact expectations for tests);
- a callable ``source(x0, y0, w, h, downsample=d) -> (h, w, c) uint8`` in the coordinates of a
  level whose level-0 pixels per pixel is ``d`` (``d = 1`` for level 0).

Damage helpers edit a written file in place (or copy it): :func:`truncated_copy`,
:func:`corrupt_tile`, :func:`remove_tiles`, :func:`patch_dimensions`.

Import as ``from slide_factory import ...`` (``tests/`` is on ``sys.path`` through conftest).
"""

from __future__ import annotations

import math
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

Source = Callable[..., np.ndarray]

GLASS = (240, 240, 240)
"""Background colour of synthetic slides: bright glass, not pure white (so it differs from the
white that readers return outside the image)."""

_STROMA = np.array([232.0, 160.0, 196.0], np.float32)
_STROMA_DARK = np.array([205.0, 110.0, 160.0], np.float32)
_NUCLEUS = np.array([80.0, 45.0, 125.0], np.float32)
_GLASS = np.array(GLASS, np.float32)

_CELL = 18
"""Side of the lattice cell holding at most one nucleus, in level-0 pixels."""


# --------------------------------------------------------------------------- content


def _hash(*parts: np.ndarray | int) -> np.ndarray:
    """A well-mixed uint32 hash of integer arrays (broadcast), the same for any tiling."""
    h = np.uint32(0x9E3779B9)
    with np.errstate(over="ignore"):
        for k, part in enumerate(parts):
            v = np.asarray(part).astype(np.int64).astype(np.uint32)
            h = h ^ (v * np.uint32(0x85EBCA6B + 2 * k))
            h = h ^ (h >> np.uint32(15))
            h = h * np.uint32(0x2C1B3C6D)
            h = h ^ (h >> np.uint32(12))
            h = h * np.uint32(0x297A2D39)
            h = h ^ (h >> np.uint32(15))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def synthetic_tissue(x0: int, y0: int, w: int, h: int, seed: int = 0, *, downsample: float = 1.0) -> np.ndarray:
    """An (h, w, 3) uint8 H&E-like tile whose top-left pixel is (x0, y0).

    White glass ~(240, 240, 240) around pink stroma blobs with dark purple nuclei. Each pixel is a
    function of its own coordinates and ``seed`` only, so tiles made separately agree at their
    borders. ``downsample`` samples the same virtual slide for a level with that many level-0
    pixels per pixel (pixel centres are sampled: coarse levels look like the slide, not exactly
    its box average).
    """
    d = float(downsample)
    xs = ((np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * d - 0.5).astype(np.float32)
    ys = ((np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * d - 0.5).astype(np.float32)
    rng = np.random.default_rng(seed)
    # Tissue outline: a sum of separable waves (cheap: an outer product per term).
    field = np.zeros((h, w), np.float32)
    for _ in range(4):
        fx, fy = rng.uniform(1 / 3000, 1 / 700, 2)
        px, py = rng.uniform(0, 2 * math.pi, 2)
        field += np.outer(np.sin(ys * np.float32(2 * math.pi * fy) + np.float32(py)), np.sin(xs * np.float32(2 * math.pi * fx) + np.float32(px)))
    tissue = field > -0.15
    # Stroma texture: finer waves mixing light and dark pink.
    fx, fy = rng.uniform(1 / 90, 1 / 40, 2)
    texture = 0.5 + 0.25 * np.outer(np.sin(ys * np.float32(2 * math.pi * fy)), np.ones_like(xs)) + 0.25 * np.sin(
        np.add.outer(ys * np.float32(0.6), xs) * np.float32(2 * math.pi * fx)
    )
    out = _GLASS + tissue[..., None] * ((_STROMA - _GLASS) + texture[..., None] * (_STROMA_DARK - _STROMA))
    # Nuclei: at most one disc per lattice cell, its centre and radius hashed from the cell.
    cx = np.floor(xs / _CELL).astype(np.int64)
    cy = np.floor(ys / _CELL).astype(np.int64)
    ucx, inv_x = np.unique(cx, return_inverse=True)
    ucy, inv_y = np.unique(cy, return_inverse=True)
    cell_hash = _hash(ucy[:, None], ucx[None, :], seed)
    present = _unit(cell_hash) < 0.45
    radius = 3.0 + 2.5 * _unit(_hash(cell_hash, 1))
    centre_x = ucx[None, :] * _CELL + radius + (_CELL - 2 * radius) * _unit(_hash(cell_hash, 2))
    centre_y = ucy[:, None] * _CELL + radius + (_CELL - 2 * radius) * _unit(_hash(cell_hash, 3))
    dx = xs[None, :] - centre_x[inv_y[:, None], inv_x[None, :]]
    dy = ys[:, None] - centre_y[inv_y[:, None], inv_x[None, :]]
    r = radius[inv_y[:, None], inv_x[None, :]]
    nucleus = tissue & present[inv_y[:, None], inv_x[None, :]] & (dx * dx + dy * dy <= r * r)
    out[nucleus] = _NUCLEUS
    # Grain, so JPEG has something to do and pixel mix-ups show.
    grain = _hash(np.floor(ys).astype(np.int64)[:, None], np.floor(xs).astype(np.int64)[None, :], seed + 7)
    out += (_unit(grain) * np.float32(12.0) - np.float32(6.0))[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- level geometry


def level_sizes(width: int, height: int, levels: int | str, *, factor: int = 2, stop_at: int = 256, floor: bool = False) -> list[tuple[int, int, int]]:
    """``[(width, height, downsample), ...]`` of a pyramid, level 0 first.

    ``levels='auto'`` adds levels until the longer side is at most ``stop_at``. Sizes are rounded
    up (libvips) or down (``floor=True``, Aperio)."""
    sizes = [(width, height, 1)]
    d = 1
    while True:
        if levels == "auto":
            if max(sizes[-1][:2]) <= stop_at:
                break
        elif len(sizes) >= int(levels):
            break
        d *= factor
        w = width // d if floor else -(-width // d)
        h = height // d if floor else -(-height // d)
        if w < 1 or h < 1:
            break
        sizes.append((w, h, d))
    return sizes


def _as_source(source: Source | np.ndarray | None, seed: int) -> Callable[[int, int, int, int, int], np.ndarray]:
    """``f(x0, y0, w, h, d)`` for any kind of source; arrays are block-averaged per level."""
    if source is None:
        return lambda x0, y0, w, h, d: synthetic_tissue(x0, y0, w, h, seed, downsample=d)
    if callable(source):
        return lambda x0, y0, w, h, d: np.asarray(source(x0, y0, w, h, downsample=d))
    array = np.asarray(source)
    cache: dict[int, np.ndarray] = {}

    def from_array(x0: int, y0: int, w: int, h: int, d: int) -> np.ndarray:
        if d not in cache:
            cache[d] = block_average(array, d)
        return cache[d][y0 : y0 + h, x0 : x0 + w]

    return from_array


def block_average(array: np.ndarray, d: int) -> np.ndarray:
    """Mean of each d x d block (partial blocks at the right and bottom edges averaged over what
    they hold), rounded; the lower pyramid levels written for an array source."""
    if d == 1:
        return array
    h, w = array.shape[:2]
    oh, ow = -(-h // d), -(-w // d)
    pad = [(0, oh * d - h), (0, ow * d - w)] + [(0, 0)] * (array.ndim - 2)
    values = np.pad(array.astype(np.float64), pad)
    counts = np.pad(np.ones((h, w)), pad[:2])
    shape = (oh, d, ow, d) + array.shape[2:]
    total = values.reshape(shape).sum(axis=(1, 3))
    n = counts.reshape(oh, d, ow, d).sum(axis=(1, 3))
    if array.ndim == 3:
        n = n[..., None]
    return np.floor(total / n + 0.5).astype(array.dtype)


def _tiles(tile_source: Callable, width: int, height: int, d: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, each cut from the source on its own."""
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            w, h = min(tile, width - tx), min(tile, height - ty)
            block = np.asarray(tile_source(tx, ty, w, h, d), dtype=np.uint8)
            if block.ndim == 2:
                block = block[..., None]
            yield block


def _samples_of(tile_source: Callable) -> int:
    probe = np.asarray(tile_source(0, 0, 1, 1, 1))
    return 1 if probe.ndim == 2 else int(probe.shape[-1])


def _photometric_kwargs(samples: int) -> dict:
    if samples == 1:
        return {"photometric": "minisblack"}
    if samples == 4:
        return {"photometric": "rgb", "extrasamples": [2]}  # unassociated alpha
    return {"photometric": "rgb"}


def _shape(height: int, width: int, samples: int) -> tuple[int, ...]:
    return (height, width) if samples == 1 else (height, width, samples)


def _compression_kwargs(compression: str | None, quality: int = 90) -> dict:
    if compression is None:
        return {}
    if compression == "jpeg":
        return {"compression": "jpeg", "compressionargs": {"level": quality}}
    return {"compression": compression}


def _resolution_kwargs(mpp: float | tuple[float, float] | None, d: float) -> dict:
    """Resolution tags (pixels per centimetre) of a level with downsample ``d``."""
    if mpp is None:
        return {}
    mx, my = (mpp, mpp) if np.isscalar(mpp) else mpp
    return {"resolution": (1e4 / (mx * d), 1e4 / (my * d)), "resolutionunit": "CENTIMETER"}


# --------------------------------------------------------------------------- writers


def write_pyramidal_tiff(
    path: str | Path,
    width: int,
    height: int,
    *,
    tile: int = 256,
    levels: int | str = 3,
    compression: str | None = "jpeg",
    quality: int = 90,
    mpp: float | tuple[float, float] | None = None,
    subifds: bool = False,
    ome: bool = False,
    source: Source | np.ndarray | None = None,
    seed: int = 0,
    bigtiff: bool | None = None,
    description: str | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF; returns ``path``.

    Level 0 then each level half the size of the one before (``levels`` counts level 0;
    ``'auto'``: down to one tile). Lower levels are separate reduced pages after level 0 (a
    generic pyramidal TIFF, like ``vips tiffsave --pyramid``) or, with ``subifds=True``, SubIFDs
    of level 0 (OME-TIFF style; ``ome=True`` adds OME-XML with PhysicalSizeX/Y when ``mpp`` is
    given). ``mpp`` also writes resolution tags (pixels per centimetre).
    """
    path = Path(path)
    if ome and not subifds:
        raise ValueError("OME-TIFF pyramids are written as SubIFDs: pass subifds=True")
    tile_source = _as_source(source, seed)
    samples = _samples_of(tile_source)
    sizes = level_sizes(width, height, levels, stop_at=tile)
    raw = sum(w * h * samples for w, h, _ in sizes)
    bigtiff = raw > 3_500_000_000 if bigtiff is None else bigtiff
    common = {"tile": (tile, tile), "dtype": np.uint8, **_photometric_kwargs(samples), **_compression_kwargs(compression, quality)}
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as writer:
        for index, (w, h, d) in enumerate(sizes):
            kwargs = dict(common, shape=_shape(h, w, samples), **_resolution_kwargs(mpp, d))
            if index == 0:
                if ome:
                    meta = {"axes": "YXS" if samples > 1 else "YX"}
                    if mpp is not None:
                        mx, my = (mpp, mpp) if np.isscalar(mpp) else mpp
                        meta.update(PhysicalSizeX=mx, PhysicalSizeXUnit="µm", PhysicalSizeY=my, PhysicalSizeYUnit="µm")
                    kwargs["metadata"] = meta
                else:
                    kwargs["metadata"] = None
                    if description is not None:
                        kwargs["description"] = description
                if subifds and len(sizes) > 1:
                    kwargs["subifds"] = len(sizes) - 1
            else:
                kwargs.update(subfiletype=1, metadata=None)
            writer.write(_tiles(tile_source, w, h, d, tile), **kwargs)
    return path


def write_svs_like(
    path: str | Path,
    width: int,
    height: int,
    *,
    mpp: float = 0.2520,
    app_mag: int = 40,
    tile: int = 240,
    levels: int | str = "auto",
    with_associated: bool = True,
    quality: int = 85,
    source: Source | np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """Write an Aperio-SVS-like file; returns ``path``.

    As real SVS files are laid out (and as tifffile's SVS series and OpenSlide expect): level 0
    (JPEG tiles, ImageDescription ``Aperio Image Library ...|AppMag = 40|MPP = 0.2520``), a
    stripped JPEG thumbnail page, reduced levels (4x apart, tiled, ordinary subfile type), then
    a label (LZW strips, subfile type 1) and a macro photo of the whole glass (JPEG strips,
    subfile type 9).
    """
    path = Path(path)
    tile_source = _as_source(source, seed)
    sizes = level_sizes(width, height, levels, factor=4, stop_at=4 * tile, floor=True)
    head = "Aperio Image Library v12.0.15"
    fields = (
        f"AppMag = {app_mag}|StripeWidth = 2040|ScanScope ID = SS1234|Filename = synthetic|"
        f"Date = 01/02/24|Time = 10:11:12|User = 00000000-0000-0000-0000-000000000000|"
        f"MPP = {mpp:.4f}|Left = 25.0|Top = 18.0|LineCameraSkew = 0.0|LineAreaXOffset = 0.0|"
        f"LineAreaYOffset = 0.0|Focus Offset = 0.0|ImageID = 1|OriginalWidth = {width}|"
        f"Originalheight = {height}|Filtered = 5|ICC Profile = ScanScope v1"
    )
    tiled = {"tile": (tile, tile), "dtype": np.uint8, "photometric": "rgb", "metadata": None, **_compression_kwargs("jpeg", quality)}
    raw = sum(w * h * 3 for w, h, _ in sizes)
    with tifffile.TiffWriter(path, bigtiff=raw > 3_500_000_000) as writer:
        for index, (w, h, d) in enumerate(sizes):
            if index == 0:
                text = f"{head}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}|{fields}"
            else:
                text = f"{head}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) -> {w}x{h} JPEG/RGB Q={quality}"
            writer.write(_tiles(tile_source, w, h, d, tile), shape=(h, w, 3), description=text, **tiled)
            if index == 0:
                # The thumbnail comes right after level 0 in every SVS file.
                d_thumb = max(1, math.ceil(max(width, height) / 768))
                tw, th = max(1, width // d_thumb), max(1, height // d_thumb)
                thumb = np.asarray(tile_source(0, 0, tw, th, d_thumb), dtype=np.uint8)
                writer.write(
                    thumb, photometric="rgb", metadata=None, rowsperstrip=16, **_compression_kwargs("jpeg", quality),
                    description=f"{head}\r\n{width}x{height} -> {tw}x{th} - |{fields}",
                )
        if with_associated:
            label = label_image(seed)
            writer.write(
                label, photometric="rgb", compression="lzw", subfiletype=1, metadata=None, rowsperstrip=64,
                description=f"{head}\r\nlabel {label.shape[1]}x{label.shape[0]}",
            )
            macro = macro_image(tile_source, width, height)
            writer.write(
                macro, photometric="rgb", subfiletype=9, metadata=None, rowsperstrip=64, **_compression_kwargs("jpeg", quality),
                description=f"{head}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
            )
    return path


def label_image(seed: int = 0, size: tuple[int, int] = (300, 280)) -> np.ndarray:
    """A slide label: white with a black 'barcode' of seeded bars; (h, w, 3) uint8."""
    h, w = size
    out = np.full((h, w, 3), 250, np.uint8)
    rng = np.random.default_rng(seed + 11)
    x = 20
    while x < w - 20:
        bar = int(rng.integers(2, 7))
        out[40 : h // 2, x : x + bar] = 10
        x += bar + int(rng.integers(2, 6))
    out[h // 2 + 30 : h // 2 + 50, 20 : w - 20] = (30, 30, 160)  # a pen line under the barcode
    return out


def macro_image(tile_source: Callable, width: int, height: int, size: tuple[int, int] = (200, 560)) -> np.ndarray:
    """A photo of the whole glass: the label area on the left, the tissue on the right."""
    h, w = size
    out = np.full((h, w, 3), 200, np.uint8)
    out[:, : w // 4] = (245, 245, 235)
    area_w = w - w // 4 - 10
    d = max(1, math.ceil(max(width / area_w, height / (h - 10))))
    tw, th = max(1, width // d), max(1, height // d)
    out[5 : 5 + th, w // 4 + 5 : w // 4 + 5 + tw] = np.asarray(tile_source(0, 0, tw, th, d), dtype=np.uint8)[..., :3]
    return out


def write_plain_tiff(
    path: str | Path,
    width: int,
    height: int,
    *,
    rowsperstrip: int = 64,
    compression: str | None = None,
    source: Source | np.ndarray | None = None,
    seed: int = 0,
    mpp: float | tuple[float, float] | None = None,
    bigtiff: bool | None = None,
) -> Path:
    """Write a striped, non-pyramidal RGB TIFF (``compression`` None or ``'zlib'``) strip by strip.

    Uncompressed strips are laid out contiguously (as most writers do)."""
    path = Path(path)
    if compression not in (None, "zlib"):
        raise ValueError("write_plain_tiff writes uncompressed or zlib strips")
    tile_source = _as_source(source, seed)
    samples = _samples_of(tile_source)
    bigtiff = width * height * samples > 3_500_000_000 if bigtiff is None else bigtiff

    def strips() -> Iterator[bytes]:
        for y in range(0, height, rowsperstrip):
            block = np.ascontiguousarray(tile_source(0, y, width, min(rowsperstrip, height - y), 1), dtype=np.uint8)
            yield block.tobytes() if compression is None else zlib.compress(block.tobytes(), 6)

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as writer:
        writer.write(
            strips(), shape=_shape(height, width, samples), dtype=np.uint8, rowsperstrip=rowsperstrip,
            compression=compression, metadata=None, **_photometric_kwargs(samples), **_resolution_kwargs(mpp, 1),
        )
    return path


def read_level(path: str | Path, level: int = 0) -> np.ndarray:
    """The whole of one level of the file's first series, decoded by tifffile (expected pixels)."""
    return tifffile.imread(path, series=0, level=level)


# --------------------------------------------------------------------------- damage


def truncated_copy(src: str | Path, dst: str | Path, keep: float | int = 0.5) -> Path:
    """Copy the first part of ``src`` to ``dst``: ``keep`` bytes (int) or that fraction (float)."""
    data = Path(src).read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    Path(dst).write_bytes(data[:n])
    return Path(dst)


def _level_page(tif: tifffile.TiffFile, level: int) -> tifffile.TiffPage:
    page = tif.series[0].levels[level].keyframe
    assert isinstance(page, tifffile.TiffPage)
    return page


def tile_extent(path: str | Path, level: int = 0, index: int = 0) -> tuple[int, int]:
    """``(offset, bytecount)`` of tile/strip ``index`` (row-major) of a level, in the file."""
    with tifffile.TiffFile(path) as tif:
        page = _level_page(tif, level)
        return int(page.dataoffsets[index]), int(page.databytecounts[index])


def corrupt_tile(path: str | Path, level: int = 0, index: int = 0) -> tuple[int, int]:
    """Overwrite the start of one compressed tile's data with zeros so its decoder fails
    (JPEG loses its start-of-image marker, deflate its header). Returns the tile's (col, row)."""
    with tifffile.TiffFile(path) as tif:
        page = _level_page(tif, level)
        if page.compression == 1:
            raise ValueError("corrupt_tile needs a compressed level; uncompressed bytes always decode")
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        per_row = page.chunked[1] if len(page.chunked) > 1 else 1
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * min(count, 64))
    return index % per_row, index // per_row


def remove_tiles(path: str | Path, level: int = 0, indices: list[int] | None = None) -> None:
    """Zero the offsets and byte counts of some (default: all) tiles or strips of a level,
    as if the writer had never stored them."""
    with tifffile.TiffFile(path) as tif:
        page = _level_page(tif, level)
        name = "TileOffsets" if page.is_tiled else "StripOffsets"
        counts_name = "TileByteCounts" if page.is_tiled else "StripByteCounts"
        patches = []
        for tag_name in (name, counts_name):
            tag = page.tags[tag_name]
            size = struct.calcsize(tif.byteorder + tag.dataformat[-1])
            chosen = range(tag.count) if indices is None else indices
            patches += [(tag.valueoffset + i * size, b"\0" * size) for i in chosen]
    with open(path, "r+b") as fh:
        for at, data in patches:
            fh.seek(at)
            fh.write(data)


def patch_dimensions(path: str | Path, width: int, height: int, page: int = 0) -> None:
    """Rewrite ImageWidth/ImageLength of a page (as LONG values) to forge an absurd size."""
    with tifffile.TiffFile(path) as tif:
        target = tif.pages[page]
        order = tif.byteorder
        big = tif.is_bigtiff
        entries = [(target.tags[name].offset, value) for name, value in (("ImageWidth", width), ("ImageLength", height))]
    with open(path, "r+b") as fh:
        for at, value in entries:
            fh.seek(at + 2)
            if big:  # type, count (8 bytes), value (8 bytes)
                fh.write(struct.pack(order + "HQQ", 16, 1, value))
            else:
                fh.write(struct.pack(order + "HII", 4, 1, value))


def copy(src: str | Path, dst: str | Path) -> Path:
    """Copy a slide file (to damage the copy and keep the original)."""
    shutil.copyfile(src, dst)
    return Path(dst)


# --------------------------------------------------------------------------- huge slides, fast


def tissue_blocks(width: int, height: int, *, block: int = 4096, fraction: float = 0.4, seed: int = 0) -> np.ndarray:
    """Which ``block`` x ``block`` level-0 squares of a huge synthetic slide hold tissue: a bool
    (rows, cols) grid, about ``fraction`` of it True, in a few large blobs (a smooth random field
    thresholded at its quantile), so glass areas are far larger than the tissue detector's holes."""
    rows, cols = -(-height // block), -(-width // block)
    rng = np.random.default_rng(seed + 101)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    field = np.zeros((rows, cols))
    for _ in range(3):
        fy, fx = rng.uniform(1 / 9, 1 / 5, 2)
        py, px = rng.uniform(0, 2 * math.pi, 2)
        field += np.sin(2 * math.pi * fy * yy + py) * np.sin(2 * math.pi * fx * xx + px)
    field += rng.uniform(-0.05, 0.05, field.shape)  # breaks ties, so the quantile is exact
    return field > np.quantile(field, 1.0 - fraction)


def _tissue_tile(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One H&E-like tile that is tissue throughout: pink stroma with dark purple nuclei."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    fx, fy, phase = rng.uniform(1 / 90, 1 / 40), rng.uniform(1 / 90, 1 / 40), rng.uniform(0, 2 * math.pi)
    mix = 0.5 + 0.25 * np.sin(2 * math.pi * fy * y + phase) + 0.25 * np.sin(2 * math.pi * fx * (x + 0.6 * y))
    out = _STROMA + mix[..., None] * (_STROMA_DARK - _STROMA)
    for cy, cx, r in zip(*rng.uniform(0, size, (2, size * size // 700)), rng.uniform(3.0, 5.5, size * size // 700)):
        out[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = _NUCLEUS
    out += rng.uniform(-6, 6, out.shape[:2]).astype(np.float32)[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _glass_tile(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    grain = rng.uniform(-3, 3, (size, size)).astype(np.float32)[..., None]
    return np.clip(_GLASS + grain + 0.5, 0, 255).astype(np.uint8)


def _encode_tiles(tiles: list[np.ndarray], tile: int, writer_kwargs: dict) -> list[bytes]:
    """JPEG-encode tiles exactly as tifffile would for ``writer_kwargs``: write them as one row
    of a small tiled TIFF in memory and cut each tile's bytes back out."""
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.concatenate(tiles, axis=1), tile=(tile, tile), metadata=None, **writer_kwargs)
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        page = tif.pages[0]
        data = buffer.getvalue()
        return [data[o : o + n] for o, n in zip(page.dataoffsets, page.databytecounts)]


def write_jpeg_tile_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    tile: int = 256,
    mpp: float = 0.25,
    tissue_fraction: float = 0.4,
    block: int = 4096,
    quality: int = 80,
    variants: int = 8,
    stop_at: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a huge JPEG-tiled pyramidal TIFF in seconds; returns ``path``.

    Generating and JPEG-encoding gigapixels of :func:`synthetic_tissue` takes many minutes, so
    this pre-encodes a few distinct tissue and glass tiles once and writes every tile as one of
    them (tifffile takes already-compressed tile bytes). Whether a tile is tissue follows
    :func:`tissue_blocks` (``block`` must be ``tile`` times a power of two); the variant is hashed
    from the tile's position. Levels halve down to ``stop_at`` px; tiles of levels coarse enough
    to span several blocks are small mosaics of reduced tissue and glass, encoded one by one
    (a few dozen). Resolution tags give ``mpp``.
    """
    path = Path(path)
    if block % tile or (block // tile) & (block // tile - 1):
        raise ValueError(f"block ({block}) must be the tile size ({tile}) times a power of two")
    rng = np.random.default_rng(seed + 202)
    tissue = [_tissue_tile(rng, tile) for _ in range(variants)]
    glass = [_glass_tile(rng, tile) for _ in range(2)]
    kwargs = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}}
    encoded = _encode_tiles(tissue + glass, tile, kwargs)
    tissue_bytes, glass_bytes = encoded[:variants], encoded[variants:]
    blocks = tissue_blocks(width, height, block=block, fraction=tissue_fraction, seed=seed)
    sizes = level_sizes(width, height, "auto", stop_at=stop_at)

    def pick(tx: int, ty: int, level: int, choices: list) -> object:
        return choices[(tx * 73856093 ^ ty * 19349663 ^ level * 83492791) % len(choices)]

    def mosaic(tx: int, ty: int, d: int, level: int) -> np.ndarray:
        """A tile spanning several blocks: each block reduced to ``block // d`` px."""
        side = max(1, block // d)
        step = max(1, tile // side)
        out = np.empty((tile, tile, 3), np.uint8)
        for by in range(0, tile, side):
            for bx in range(0, tile, side):
                r, c = (ty * tile + by) * d // block, (tx * tile + bx) * d // block
                is_tissue = r < blocks.shape[0] and c < blocks.shape[1] and blocks[r, c]
                source = pick(c, r, level, tissue) if is_tissue else glass[0]
                out[by : by + side, bx : bx + side] = source[::step, ::step][:side, :side]
        return out

    def level_tiles(w: int, h: int, d: int, level: int) -> Iterator[bytes]:
        columns, rows = -(-w // tile), -(-h // tile)
        if tile * d <= block:
            for ty in range(rows):
                for tx in range(columns):
                    r, c = ty * tile * d // block, tx * tile * d // block
                    yield pick(tx, ty, level, tissue_bytes if blocks[r, c] else glass_bytes)
        else:
            yield from _encode_tiles([mosaic(tx, ty, d, level) for ty in range(rows) for tx in range(columns)], tile, kwargs)

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level, (w, h, d) in enumerate(sizes):
            writer.write(
                level_tiles(w, h, d, level), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), metadata=None,
                subfiletype=1 if level else 0, **kwargs, **_resolution_kwargs(mpp, d),
            )
    return path

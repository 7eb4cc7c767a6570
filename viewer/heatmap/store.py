"""The whole-slide heatmap store: a zarr v3 folder filled chunk by chunk, resumable after a crash.

A whole-slide heatmap does not fit in memory and takes long enough to compute that a run may be
stopped (Ctrl+C, a closed laptop, kill -9, a lost Dask worker). Results therefore stream into a
zarr v3 group on disk that anyone can read with plain ``zarr`` (no HistoViewer needed)::

    g = zarr.open_group("slide.heatmap.zarr", mode="r")
    g["probability"]    float32 (rows, cols)  P(tumour) per heatmap cell; NaN = not computed
    g["tissue"]         uint8   (rows, cols)  1 = the cell's window is mostly tissue (evaluated),
                                              0 = background (left NaN) or not decided yet
    g["done"]           uint8   chunk grid    1 = that (C x C) block of probability is final
    g["overview_mean"]  float32 (rows/8, cols/8)  NaN-ignoring mean of each 8x8 block of cells
    g["overview_max"]   float32 (rows/8, cols/8)  NaN-ignoring max (tumour stays visible when
                                                  the whole slide fits in the window)
    g.attrs             geometry (patch, stride, scale, origin), model, slide, complete, ...

Cell geometry is the project's (README "Heatmap geometry"): cell ``(r, c)`` is the 32x32 window
whose top-left is ``(stride*c, stride*r)`` analysis px, at level-0 ``origin + analysis * scale``.

One writer per chunk, no shared files
    ``probability`` and ``tissue`` are chunked ``C x C`` cells, the overviews ``C/8 x C/8``, so
    every probability chunk owns exactly one chunk (one file) of each overview. ``done`` is
    chunked 1 x 1: one tiny file per probability chunk (raw bytes, no compression). A
    ``done`` array chunked like the others would pack many chunks' flags into one file that
    concurrent writers (Dask workers in separate processes) would read-modify-write and race
    on; with 1 x 1 chunks two different probability chunks never write the same file, and
    ``done`` still reads as an ordinary zarr array. Only :meth:`HeatmapStore.mark_complete`
    rewrites the group's ``zarr.json``; call it from the one process that coordinates the run.

Crash safety
    :meth:`HeatmapStore.write_chunk` writes the probability chunk and its overview chunks
    first and sets ``done`` last, so a chunk marked done is complete; a chunk interrupted
    half-way is not marked and is simply recomputed on resume (the model is deterministic, so
    the final arrays equal those of an uninterrupted run). Every file is written as a
    temporary file in the same folder, then ``os.replace``d, and made durable (fsync of the
    file and its folder) before the ``done`` flag is written: chunk files by
    :class:`_ChunkFiles` (the bytes zarr would write, without zarr's per-write overhead; a
    chunk's data files are synced together), everything else by :class:`DurableLocalStore`. zarr 3's own ``LocalStore`` wrote chunk files in place before zarr 3.1.3
    (zarr-python issue #3411) -- a kill mid-write left a truncated, undecodable chunk -- and
    even now does not fsync, so a power cut could persist the ``done`` flag before the data it
    vouches for. Temporary files a kill leaves (``.<name>.<hex>.partial``) are never read as
    chunks (zarr at most warns about one beside the group's ``zarr.json``) and are removed when a
    run resumes. Creating (and ``force``-replacing) a store is atomic too: it is
    built in a hidden folder beside the target and renamed into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.storage import LocalStore

from viewer import PATCH_SIZE, __version__
from viewer.atomic import fsync_folder
from viewer.errors import InputError, OutputError, os_reason

if TYPE_CHECKING:  # pragma: no cover
    from zarr.core.buffer import Buffer

    from viewer.slide.source import SlideSource

FORMAT = "histoviewer-heatmap-store"
FORMAT_VERSION = 1
DEFAULT_CHUNK = 128
"""Side of a probability chunk in heatmap cells (128 x 128 cells = 64 KiB of float32; the same
as :data:`viewer.heatmap.slide_run.DEFAULT_CHUNK`, which explains the choice)."""

OVERVIEW_FACTOR = 8
"""Each overview pixel summarises an 8 x 8 block of heatmap cells."""

COMPATIBILITY_KEYS = (
    "shape", "chunk", "patch", "stride", "scale", "origin", "model_sha256", "tissue_threshold", "precision",
)
PRECISIONS = ("float32", "bfloat16")
"""The arithmetic a store's probabilities were computed in: part of its compatibility, since
resuming a bfloat16 store in float32 would mix two slightly different heatmaps in one array.
Stores written before the attribute existed count as float32."""
"""Attributes that must match (with the slide's fingerprint) for a run to resume a store: any
other value would mix two different heatmaps in one array."""

_REQUIRED_ATTRS = ("stride", "scale", "origin", "model_sha256", "slide")

_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{32}\.partial$")
_FINGERPRINT_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------
# Durable file writes
# ---------------------------------------------------------------------------------------------


def _make_folders(folder: Path) -> None:
    """``mkdir -p`` that also makes each new folder's entry in its parent durable."""
    if folder.is_dir():
        return
    _make_folders(folder.parent)
    with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
        folder.mkdir()
    fsync_folder(folder.parent)


def _durable_put(path: Path, data: memoryview | bytes, exclusive: bool = False, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the whole new content.

    ``sync=False``: atomic (a kill leaves the old or the new file) but not yet durable; the
    caller makes a batch of such files durable at once with :func:`_sync_files`."""
    _make_folders(path.parent)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                with contextlib.suppress(OSError):  # file systems without fsync
                    os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # fails if path exists, unlike rename
            except FileExistsError:
                return
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        fsync_folder(path.parent)


def _sync_files(paths: list[Path]) -> None:
    """Make files written with ``_durable_put(..., sync=False)`` durable: each file, then each of
    their folders once. One barrier for a chunk's four data files costs about what one file's
    fsync did: the file system's first journal commit carries the others' data along."""
    for path in paths:
        fd = os.open(path, os.O_RDWR)  # writable: Windows commits only files opened for writing
        try:
            with contextlib.suppress(OSError):  # file systems without fsync
                os.fsync(fd)
        finally:
            os.close(fd)
    for folder in dict.fromkeys(path.parent for path in paths):
        fsync_folder(folder)


class DurableLocalStore(LocalStore):
    """zarr's ``LocalStore`` whose every write is temp file + fsync + ``os.replace``."""

    def _write(self, key: str, value: Buffer, exclusive: bool) -> None:
        self._check_writable()
        _durable_put(self.root / key, memoryview(np.ascontiguousarray(value.as_numpy_array())), exclusive)

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._write, key, value, False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._write, key, value, True)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._write, key, value, exclusive)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._write(key, value, False)


class _ChunkFiles:
    """Writes whole chunks of one zarr array byte for byte as zarr would, without zarr's machinery.

    zarr 3 spends about 1 ms of Python per chunk it writes (indexing, its event loop, two thread
    hops), a few times the cost of encoding and writing the file: with five arrays per heatmap
    chunk that was ~4.5 ms of CPU per chunk, which on two cores slowed a whole-slide run by half
    (issue 10). The arrays' layout is this module's own and plain -- little-endian bytes, then
    zstd or nothing -- so a chunk is encoded here with the same numcodecs codec zarr uses and
    written with :func:`_durable_put`. Arrays with any other codecs (none that HistoViewer
    writes) keep going through zarr (:meth:`of` returns None). As with zarr's default
    ``write_empty_chunks=False``, a chunk holding only the fill value has no file. Tests compare
    the files with those zarr writes.
    """

    def __init__(self, folder: Path, array: zarr.Array, compressor) -> None:
        self.folder = folder
        self.metadata = array.metadata
        self.chunk_shape = tuple(int(v) for v in array.chunks)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = np.array(array.fill_value, dtype=self.dtype)
        self.compressor = compressor

    @classmethod
    def of(cls, root: Path, array: zarr.Array) -> _ChunkFiles | None:
        from zarr.codecs import BytesCodec, ZstdCodec

        metadata = array.metadata
        codecs = tuple(getattr(metadata, "codecs", ()))
        if getattr(metadata, "zarr_format", None) != 3 or not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        if np.dtype(array.dtype).itemsize > 1 and getattr(codecs[0].endian, "value", codecs[0].endian) != "little":
            return None
        if len(codecs) == 1:
            compressor = None
        elif len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
            from numcodecs import Zstd

            compressor = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        else:
            return None
        return cls(root / array.path, array, compressor)

    def write(self, index: tuple[int, ...], block: np.ndarray, *, sync: bool = True) -> Path | None:
        """Write chunk ``index``; ``block`` is its part inside the array (smaller at the edges).
        Returns the file written (None: none, the chunk is all fill value); ``sync=False``: not
        yet durable (see :func:`_sync_files`)."""
        path = self.folder / self.metadata.encode_chunk_key(tuple(int(v) for v in index))
        if block.shape == self.chunk_shape:
            full = np.ascontiguousarray(block, dtype=self.dtype)
        else:  # an edge chunk: zarr stores the full chunk shape, padded with the fill value
            full = np.full(self.chunk_shape, self.fill, dtype=self.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
        if np.array_equal(full, np.broadcast_to(self.fill, full.shape), equal_nan=full.dtype.kind == "f"):
            path.unlink(missing_ok=True)  # all fill value: no file, as zarr does
            return None
        data = full.tobytes()
        if self.compressor is not None:
            data = self.compressor.encode(data)
        _durable_put(path, data, sync=sync)
        return path


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def file_fingerprint(path: str | Path) -> str:
    """A cheap identity of a (possibly many-GB) slide file: sha256 of its size and its first
    and last MiB. Renaming or copying the file keeps it; re-scanning the slide changes it."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def slide_attrs(slide: SlideSource) -> dict:
    """The ``slide`` attribute of a store for an opened slide: file name, size, fingerprint."""
    return {
        "file": slide.path.name,
        "width": int(slide.width),
        "height": int(slide.height),
        "size_bytes": int(os.stat(slide.path).st_size),
        "fingerprint": file_fingerprint(slide.path),
    }


def reduce_overview(probabilities: np.ndarray, factor: int = OVERVIEW_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """NaN-ignoring ``(mean, max)`` of each ``factor`` x ``factor`` block (edge blocks may be
    smaller); NaN where a block has no computed cell. float32, shape ``ceil(shape / factor)``."""
    p = np.asarray(probabilities, dtype=np.float32)
    h, w = p.shape
    hb, wb = -(-h // factor), -(-w // factor)
    padded = np.full((hb * factor, wb * factor), np.nan, dtype=np.float32)
    padded[:h, :w] = p
    blocks = padded.reshape(hb, factor, wb, factor)
    known = ~np.isnan(blocks)
    count = known.sum(axis=(1, 3))
    total = np.where(known, blocks, 0).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan).astype(np.float32)
    peak = np.where(known, blocks, -np.inf).max(axis=(1, 3))
    peak = np.where(count > 0, peak, np.nan).astype(np.float32)
    return mean, peak


def _json_ready(attrs: dict) -> dict:
    """``attrs`` as JSON will store it (tuples become lists), so comparisons after a reopen hold."""
    try:
        return json.loads(json.dumps(attrs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store attributes must be plain JSON values: {exc}") from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_group_attrs(path: Path) -> dict | None:
    """The attributes of the zarr group at ``path`` if it is a HistoViewer store, else ``None``."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if isinstance(attrs, dict) and attrs.get("format") == FORMAT:
        return attrs
    return None


def stored_chunk(path: str | Path) -> int | None:
    """The chunk side of the HistoViewer store at ``path``, or None if there is no such store."""
    path = Path(path)
    attrs = _read_group_attrs(path) if path.is_dir() and not path.is_symlink() else None
    chunk = None if attrs is None else attrs.get("chunk")
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk > 0 else None


def _checked_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return str(precision)


def _incompatibility(existing: dict, wanted: dict) -> str | None:
    """The first setting in which two stores' attributes differ, or ``None``."""
    defaults = {"precision": "float32"}
    for key in COMPATIBILITY_KEYS:
        if existing.get(key, defaults.get(key)) != wanted.get(key, defaults.get(key)):
            return key
    old = (existing.get("slide") or {}).get("fingerprint")
    new = (wanted.get("slide") or {}).get("fingerprint")
    if old != new:
        return "slide"
    return None


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class HeatmapStore:
    """A heatmap store on disk. Construct with :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    Thread- and process-safe for writers that write *different* chunks; :meth:`mark_complete`
    belongs to a single coordinating process.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self._probability = group["probability"]
        self._tissue = group["tissue"]
        self._done = group["done"]
        self._overview = {"mean": group["overview_mean"], "max": group["overview_max"]}
        self._shape = tuple(int(v) for v in self._probability.shape)
        self._chunk = int(self._probability.chunks[0])
        self._check_layout()
        self._files = {name: _ChunkFiles.of(path, group[name])
                       for name in ("probability", "tissue", "done", "overview_mean", "overview_max")}

    def __repr__(self) -> str:
        done, total = self.progress()
        return f"<HeatmapStore {self.path} {self._shape[0]}x{self._shape[1]} cells, {done}/{total} chunks done>"

    # Construction ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, *, shape: tuple[int, int], attrs: dict, chunk: int = DEFAULT_CHUNK, force: bool = False
    ) -> HeatmapStore:
        """Create an empty store at ``path`` (atomically). An existing ``path`` is refused unless
        ``force``; even then only a HistoViewer store, an empty folder or a file is replaced."""
        path = Path(path)
        full = cls._full_attrs(shape, attrs, chunk)
        cls._check_target(path, force=force)
        _remove_strays(path)
        building = path.parent / f".{path.name}.{uuid.uuid4().hex}.creating"
        try:
            cls._build(building, full)
            _move_into_place(building, path)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            raise OutputError(f"cannot be written ({os_reason(exc)}); nothing was written", path) from exc
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> HeatmapStore:
        """Open an existing store for reading (``"r"``) or for writing more chunks (``"r+"``)."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise InputError("not found" if not path.exists() else "is not a heatmap store (not a folder)", path)
        attrs = _read_group_attrs(path)
        if attrs is None:
            raise InputError("is not a HistoViewer heatmap store (no zarr.json with its format)", path)
        version = attrs.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(
                f"was written by a newer HistoViewer (store format {version}); this version reads format {FORMAT_VERSION}",
                path,
            )
        try:
            group = zarr.open_group(store=DurableLocalStore(path, read_only=mode == "r"), mode=mode)
            return cls(path, group)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise InputError(f"is a damaged heatmap store ({type(exc).__name__}: {exc})", path) from None

    @classmethod
    def open_or_create(
        cls, path: str | Path, *, shape: tuple[int, int], attrs: dict, chunk: int = DEFAULT_CHUNK, force: bool = False
    ) -> tuple[HeatmapStore, bool]:
        """Resume the store at ``path`` if it was made for the same slide, model and settings
        (``resumed`` True), else create one. An incompatible existing store is refused unless
        ``force``, which replaces it."""
        path = Path(path)
        wanted = cls._full_attrs(shape, attrs, chunk)
        existing = _read_group_attrs(path) if path.is_dir() and not path.is_symlink() else None
        if force or existing is None:
            return cls.create(path, shape=shape, attrs=attrs, chunk=chunk, force=force), False
        differs = _incompatibility(existing, wanted)
        if differs == "precision":
            raise OutputError(
                f"was made for another slide/model/settings (precision differs: "
                f"{existing.get('precision', 'float32')}, this run {wanted.get('precision', 'float32')}); "
                "use --force to replace it", path,
            )
        if differs is not None:
            raise OutputError(
                f"was made for another slide/model/settings ({differs} differs); use --force to replace it", path
            )
        store = cls.open(path, mode="r+")
        store.remove_temp_files()
        _remove_strays(path)
        return store, True

    @staticmethod
    def _full_attrs(shape: tuple[int, int], attrs: dict, chunk: int) -> dict:
        rows, cols = (int(v) for v in shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"a heatmap store needs at least one cell, got shape {tuple(shape)}")
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < OVERVIEW_FACTOR or chunk % OVERVIEW_FACTOR:
            raise ValueError(f"chunk must be a positive multiple of {OVERVIEW_FACTOR}, got {chunk!r}")
        missing = [key for key in _REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise ValueError(f"store attributes lack {', '.join(missing)}")
        if not isinstance(attrs["slide"], dict) or "fingerprint" not in attrs["slide"]:
            raise ValueError("the store's 'slide' attribute needs a 'fingerprint' (see slide_attrs)")
        from viewer.slide.tissue import TISSUE_THRESHOLD

        full = {"patch": PATCH_SIZE, "analysis_mpp": None, "tissue_threshold": TISSUE_THRESHOLD}
        full.update(attrs)
        # The store's own facts win over anything the caller passed under the same name.
        full.update(
            format=FORMAT, format_version=FORMAT_VERSION, shape=[rows, cols], chunk=int(chunk),
            version=__version__, precision=_checked_precision(full.get("precision", "float32")), complete=False,
            created=_now(),
        )
        full["origin"] = [float(v) if not float(v).is_integer() else int(v) for v in full["origin"]]
        full["scale"] = float(full["scale"])
        full["stride"] = int(full["stride"])
        return _json_ready(full)

    @staticmethod
    def _check_target(path: Path, *, force: bool) -> None:
        """Refuse targets we must not (or cannot) replace, before any work."""
        if path.name in ("", ".", ".."):
            raise OutputError("is not a valid store name; give a folder name such as slide.heatmap.zarr", path)
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"folder {parent} does not exist", path)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"folder {parent} is not writable", path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"cannot be used ({os_reason(exc)})", path) from None
        if stat.S_ISDIR(st.st_mode) and _read_group_attrs(path) is None:
            if not any(path.iterdir()):
                return  # an empty folder made for the output: use it
            # Not even --force may wipe a folder of someone's files because of a typo.
            raise OutputError("is a folder that is not a HistoViewer heatmap store; choose another name", path)
        if not force:
            raise OutputError("already exists; use --force to replace it", path)
        if stat.S_ISLNK(st.st_mode):
            raise OutputError("is a symbolic link; give the real folder", path)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise OutputError("is not a regular file or folder; refusing to replace it", path)

    @staticmethod
    def _build(folder: Path, attrs: dict) -> None:
        rows, cols = attrs["shape"]
        c = attrs["chunk"]
        small = c // OVERVIEW_FACTOR
        grid = (-(-rows // c), -(-cols // c))
        overview = (-(-rows // OVERVIEW_FACTOR), -(-cols // OVERVIEW_FACTOR))
        group = zarr.create_group(store=DurableLocalStore(folder), zarr_format=3, attributes=attrs)
        cells = ("row", "col")
        group.create_array(
            "probability", shape=(rows, cols), chunks=(c, c), dtype="float32", fill_value=np.nan,
            dimension_names=cells,
            attributes={"description": "P(tumour) of each heatmap cell's 32x32 window; NaN = not computed"},
        )
        group.create_array(
            "tissue", shape=(rows, cols), chunks=(c, c), dtype="uint8", fill_value=0, dimension_names=cells,
            attributes={"description": "1 = the cell's window is mostly tissue and is evaluated; 0 = background"},
        )
        group.create_array(
            # Raw bytes, 1x1 chunks: one file per probability chunk (see the module docstring).
            "done", shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None,
            chunk_key_encoding={"name": "default", "separator": "/"}, dimension_names=("chunk_row", "chunk_col"),
            attributes={"description": f"1 = probability[{c}*i:{c}*(i+1), {c}*j:{c}*(j+1)] is final"},
        )
        for kind in ("mean", "max"):
            group.create_array(
                f"overview_{kind}", shape=overview, chunks=(small, small), dtype="float32", fill_value=np.nan,
                dimension_names=("overview_row", "overview_col"),
                attributes={"description": f"NaN-ignoring {kind} of each {OVERVIEW_FACTOR}x{OVERVIEW_FACTOR} block of probability"},
            )

    def _check_layout(self) -> None:
        rows, cols = self._shape
        c = self._chunk
        expected = {
            "tissue": ((rows, cols), (c, c)),
            "done": (self.chunk_grid, (1, 1)),
            "overview_mean": ((-(-rows // OVERVIEW_FACTOR), -(-cols // OVERVIEW_FACTOR)), (c // 8, c // 8)),
        }
        expected["overview_max"] = expected["overview_mean"]
        for name, (shape, chunks) in expected.items():
            array = self._group[name]
            if tuple(array.shape) != shape or tuple(array.chunks) != chunks:
                raise ValueError(f"array {name} has shape {array.shape} / chunks {array.chunks}, expected {shape} / {chunks}")

    # Description ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the heatmap cell grid."""
        return self._shape  # type: ignore[return-value]

    @property
    def chunk(self) -> int:
        """Side of a probability chunk in cells."""
        return self._chunk

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Number of chunks along rows and columns."""
        return (-(-self._shape[0] // self._chunk), -(-self._shape[1] // self._chunk))

    @property
    def attrs(self) -> dict:
        """The group attributes (a copy)."""
        return dict(self._group.attrs)

    def chunk_slices(self, i: int, j: int) -> tuple[slice, slice]:
        """The cell rows and columns of chunk ``(i, j)`` (edge chunks are smaller)."""
        gi, gj = self.chunk_grid
        if not (0 <= i < gi and 0 <= j < gj):
            raise IndexError(f"chunk ({i}, {j}) is outside the {gi}x{gj} chunk grid")
        c = self._chunk
        return slice(i * c, min((i + 1) * c, self._shape[0])), slice(j * c, min((j + 1) * c, self._shape[1]))

    # Progress -------------------------------------------------------------------------------
    def done_mask(self) -> np.ndarray:
        """Which chunks are final, as a bool array on the chunk grid (read from disk, so it
        includes chunks other processes finished)."""
        # Reading 40 000 one-byte chunks through zarr takes seconds; listing the chunk folders
        # takes milliseconds. The flags are only ever written as 1 and zarr stores no file for
        # the fill value 0, so "file exists" is "done" (a test checks this against zarr's read).
        mask = np.zeros(self.chunk_grid, dtype=bool)
        root = self.path / "done" / "c"
        for i in range(mask.shape[0]):
            try:
                names = os.listdir(root / str(i))
            except FileNotFoundError:
                continue
            for name in names:
                if name.isdigit() and int(name) < mask.shape[1]:
                    mask[i, int(name)] = True
        return mask

    def progress(self) -> tuple[int, int]:
        """``(done chunks, total chunks)``."""
        gi, gj = self.chunk_grid
        return int(self.done_mask().sum()), gi * gj

    # Writing --------------------------------------------------------------------------------
    def write_tissue_chunk(self, i: int, j: int, mask: np.ndarray) -> None:
        """Record which cells of chunk ``(i, j)`` are tissue (evaluated)."""
        rows, cols = self.chunk_slices(i, j)
        mask = np.asarray(mask)
        self._check_block(mask, rows, cols, "tissue mask")
        self._write("tissue", (i, j), (rows, cols), (mask != 0).astype(np.uint8))

    def write_chunk(self, i: int, j: int, probabilities: np.ndarray, *, tissue: np.ndarray | None = None) -> None:
        """Store the final probabilities of chunk ``(i, j)`` (NaN = background, not evaluated),
        its overview blocks and, if given, its ``tissue`` mask (as :meth:`write_tissue_chunk`);
        make them durable together; and then -- only then -- mark the chunk done."""
        rows, cols = self.chunk_slices(i, j)
        values = np.asarray(probabilities, dtype=np.float32)
        self._check_block(values, rows, cols, "probabilities")
        written = []
        if tissue is not None:
            tissue = np.asarray(tissue)
            self._check_block(tissue, rows, cols, "tissue mask")
            written.append(self._write("tissue", (i, j), (rows, cols), (tissue != 0).astype(np.uint8), sync=False))
        mean, peak = reduce_overview(values)
        f = OVERVIEW_FACTOR
        small = (slice(rows.start // f, rows.start // f + mean.shape[0]), slice(cols.start // f, cols.start // f + mean.shape[1]))
        written.append(self._write("probability", (i, j), (rows, cols), values, sync=False))
        written.append(self._write("overview_mean", (i, j), small, mean, sync=False))
        written.append(self._write("overview_max", (i, j), small, peak, sync=False))
        _sync_files([path for path in written if path is not None])
        self._mark_done(i, j)

    def _mark_done(self, i: int, j: int) -> None:
        self._write("done", (i, j), (slice(i, i + 1), slice(j, j + 1)), np.ones((1, 1), np.uint8))

    def _write(self, name: str, index: tuple[int, int], where: tuple[slice, slice], block: np.ndarray,
               *, sync: bool = True) -> Path | None:
        """Write ``block``, which is chunk ``index`` of array ``name`` (its part inside the array).
        Returns the file to sync when ``sync=False`` (None: nothing left to sync)."""
        files = self._files[name]
        if files is not None and not self._group.store.read_only:
            return files.write(index, block, sync=sync)
        self._group[name][where] = block  # another layout, or a read-only store (zarr refuses)
        return None  # zarr's writes go through DurableLocalStore: durable already

    def mark_complete(self) -> None:
        """Record in the attributes that every chunk is final. Refuses while chunks are missing."""
        done, total = self.progress()
        if done != total:
            raise ValueError(f"{total - done} of {total} chunks are not done yet")
        self._group.attrs.update({"complete": True, "completed": _now()})

    @staticmethod
    def _check_block(block: np.ndarray, rows: slice, cols: slice, what: str) -> None:
        expected = (rows.stop - rows.start, cols.stop - cols.start)
        if block.shape != expected:
            raise ValueError(f"{what} for cells [{rows.start}:{rows.stop}, {cols.start}:{cols.stop}] must have shape {expected}, got {block.shape}")

    # Reading --------------------------------------------------------------------------------
    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Probabilities of a block of cells, float32; NaN = not computed (or background)."""
        return np.asarray(self._probability[rows, cols], dtype=np.float32)

    def read_tissue(self, rows: slice, cols: slice) -> np.ndarray:
        """Tissue flags of a block of cells as bool (False also where not decided yet)."""
        return np.asarray(self._tissue[rows, cols]) != 0

    def read_overview(self, kind: str = "mean") -> np.ndarray:
        """The whole overview (1/8 of the cell grid per side), float32 with NaN = nothing computed."""
        if kind not in self._overview:
            raise ValueError(f"kind must be 'mean' or 'max', got {kind!r}")
        overview = self._overview[kind]
        # Store chunk (i, j) owns overview chunk (i, j), written before its `done` flag. Reading
        # the whole array asks zarr for every chunk file, present or not: 2.8 s for a 50k
        # slide's fresh store, all of it Python in zarr's I/O thread, which stalls the viewer.
        # So only finished chunks are read, unless most are (then one read is cheaper).
        done = self.done_mask()
        if done.mean() > 0.25:
            return np.asarray(overview[...], dtype=np.float32)
        out = np.full(overview.shape, np.nan, dtype=np.float32)
        rows, cols = overview.chunks
        for i, j in zip(*np.nonzero(done)):
            block = (slice(i * rows, (i + 1) * rows), slice(j * cols, (j + 1) * cols))
            out[block] = overview[block]
        return out

    # Housekeeping ---------------------------------------------------------------------------
    def remove_temp_files(self) -> None:
        """Delete temporary files a killed writer left (call only when no other writer runs)."""
        for folder, _dirs, files in os.walk(self.path):
            for name in files:
                if _TEMP_FILE.match(name):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))


def _stray_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.(creating|replaced)$")


def _remove_strays(path: Path) -> None:
    """Remove half-built or half-replaced copies of ``path`` that a killed run left beside it."""
    pattern = _stray_pattern(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


def _move_into_place(built: Path, path: Path) -> None:
    """Rename the finished folder onto ``path``, replacing what is there (already vetted)."""
    fsync_folder(built)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is None:
        os.rename(built, path)
    elif stat.S_ISDIR(st.st_mode):
        # POSIX cannot atomically swap two folders: move the old one aside, move the new one in,
        # then delete the old one. A kill in between leaves the old store under a hidden name
        # (removed by the next run) and no store at ``path``: the next run starts afresh.
        old = path.parent / f".{path.name}.{uuid.uuid4().hex}.replaced"
        os.rename(path, old)
        os.rename(built, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(path)
        os.rename(built, path)
    fsync_folder(path.parent)


__all__ = [
    "COMPATIBILITY_KEYS", "DEFAULT_CHUNK", "PRECISIONS", "DurableLocalStore", "FORMAT", "FORMAT_VERSION", "HeatmapStore",
    "OVERVIEW_FACTOR", "file_fingerprint", "reduce_overview", "slide_attrs", "stored_chunk",
]

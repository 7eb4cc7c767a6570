"""The viewer's folder of heatmap stores: one per (slide, model, window step, scale), size-limited.

Reopening a slide finds its store here and shows the finished heatmap at once; an unfinished one
continues where it stopped. The folder is a plain cache: deleting it loses nothing but time.
When it grows beyond its limit, the stores used least recently are removed (never the one in use).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

DEFAULT_CACHE_BYTES = 2 * 1024**3
"""Default size limit of the heatmap cache folder (2 GB: a 50k x 50k slide's store is ~100 MB)."""

_STAMP = ".last-used"


def cache_key(slide_fingerprint: str, model_sha256: str | None, stride: int, scale: float) -> str:
    text = f"{slide_fingerprint}|{model_sha256}|{int(stride)}|{float(scale):.6g}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def store_path_in(folder: str | Path, slide_name: str, key: str) -> Path:
    """``<folder>/<slide stem>-<key>.zarr``: readable names, unique keys."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(slide_name).stem)[:60] or "slide"
    return Path(folder) / f"{stem}-{key}.zarr"


def touch(store: str | Path) -> None:
    """Mark a store as just used (its modification time orders the pruning)."""
    stamp = Path(store) / _STAMP
    try:
        stamp.touch()
        os.utime(stamp, None)
    except OSError:
        pass


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def prune(folder: str | Path, max_bytes: int = DEFAULT_CACHE_BYTES, *, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Remove least recently used stores until the folder is within ``max_bytes``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep_set = {Path(p).resolve() for p in keep}
    stores = []
    for entry in folder.iterdir():
        if entry.suffix == ".zarr" and entry.is_dir():
            stamp = entry / _STAMP
            used = stamp.stat().st_mtime if stamp.exists() else entry.stat().st_mtime
            stores.append((used, entry, folder_size(entry)))
    total = sum(size for _, _, size in stores)
    removed = []
    for _used, entry, size in sorted(stores):
        if total <= max_bytes:
            break
        if entry.resolve() in keep_set:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed

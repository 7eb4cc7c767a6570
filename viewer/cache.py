"""A thread-safe least-recently-used cache bounded by bytes, not by entries.

Slide tiles differ in size (edge tiles, levels, RGB versus RGBA), so a count limit would either
waste memory or thrash; ASAP and QuPath bound their tile caches by bytes for the same reason.
Used by the slide readers (lazily built coarse levels) and the GUI's tile layer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")


def nbytes_of(value: object) -> int:
    """Size in bytes of a cached value: ``nbytes`` of arrays, 64 bytes for anything else."""
    return int(getattr(value, "nbytes", 64))


class ByteLRU(Generic[V]):
    """``cache[key] = value`` evicts the least recently used entries beyond ``max_bytes``.

    ``pinned`` keys (e.g. the coarsest level of a slide) are never evicted and do not count
    against the limit. A single value larger than the limit is not stored at all.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int] = nbytes_of) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._pinned: dict[Hashable, V] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        """Bytes held by unpinned entries."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items) + len(self._pinned)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items or key in self._pinned

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            if key in self._pinned:
                self.hits += 1
                return self._pinned[key]
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return default
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V, *, pin: bool = False) -> None:
        size = self._size_of(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if pin:
                self._pinned[key] = value
                return
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    __setitem__ = put

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._pinned.clear()
            self._bytes = 0

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._pinned) + list(self._items)


def half_size(block: np.ndarray) -> np.ndarray:
    """2x2 box average of an (h, w, c) uint8 block; odd edges repeat their last row/column.

    Averaging (not striding) avoids the moire that nuclei patterns show when decimated.
    Output is ``(ceil(h/2), ceil(w/2), c)`` with round-half-up.
    """
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    h2, w2 = block.shape[0] // 2, block.shape[1] // 2
    total = block.reshape(h2, 2, w2, 2, block.shape[2]).sum(axis=(1, 3), dtype=np.uint16)
    return ((total + 2) >> 2).astype(np.uint8)

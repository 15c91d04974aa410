"""The pieces a run has done, one bit each.

A run's pieces (tiles, shards, cluster blocks, pyramid shards) are numbered from 0, densely, so
the ids a resume reads from ``done.log`` are kept as a bitmap: a run of 10^7 tiles holds 1.2
MB, where a Python set of them held over 500 MB. :class:`DoneIds` answers what the jobs ask of
a set (``in``, ``len``, iteration in increasing order, ``add``, ``update``, truth).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class DoneIds:
    """A set of non-negative integer ids, one bit per id up to the largest."""

    def __init__(self, ids: Iterable[int] = ()):
        self._bits = bytearray()
        self._count = 0
        self.update(ids)

    def add(self, piece_id: int) -> None:
        if not isinstance(piece_id, numbers.Integral) or piece_id < 0:
            raise ValueError(f"a piece id is a non-negative integer, not {piece_id!r}")
        byte, bit = divmod(int(piece_id), 8)
        self._reach(byte)
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self._count += 1

    def update(self, ids: Iterable[int]) -> None:
        for piece_id in ids:
            self.add(piece_id)

    def add_all(self, ids: np.ndarray | Sequence[int]) -> None:
        """Add many ids at once (an array of them: a log read in chunks)."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return
        if ids.dtype.kind not in "iu" or int(ids.min()) < 0:
            raise ValueError(f"piece ids are non-negative integers, not {ids.dtype} from {ids.min()}")
        ids = ids.astype(np.int64, copy=False)
        self._reach(int(ids.max()) // 8)
        bits = np.frombuffer(self._bits, np.uint8)  # a view: written in place
        touched = np.unique(ids >> 3)  # counted before and after: only the bytes these ids set
        before = int(np.bitwise_count(bits[touched]).sum())
        np.bitwise_or.at(bits, ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8))
        self._count += int(np.bitwise_count(bits[touched]).sum()) - before

    def _reach(self, byte: int) -> None:
        """The bitmap long enough to hold ``byte``; grown by half again at least, so adding ids in
        increasing order stays linear."""
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1, len(self._bits) * 3 // 2) - len(self._bits)))

    def __contains__(self, piece_id: object) -> bool:
        if not isinstance(piece_id, numbers.Integral) or piece_id < 0:
            return False
        byte, bit = divmod(int(piece_id), 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)

    def mask(self, n: int) -> np.ndarray:
        """One boolean per id below ``n``: whether it is in the set."""
        bits = np.unpackbits(np.frombuffer(bytes(self._bits[:math.ceil(n / 8)]), np.uint8), bitorder="little")
        return np.pad(bits[:n], (0, max(0, n - bits.size))).astype(bool)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        """The ids in increasing order, as Python integers."""
        packed = bytes(self._bits)
        for start in range(0, len(packed), 1 << 17):  # a chunk at a time: no array of every id at once
            bits = np.unpackbits(np.frombuffer(packed[start:start + (1 << 17)], np.uint8), bitorder="little")
            yield from (np.flatnonzero(bits) + 8 * start).tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DoneIds | set | frozenset):
            return len(self) == len(other) and all(i in other for i in self)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a set

    def __repr__(self) -> str:
        return f"DoneIds({len(self)} ids)"


__all__ = ["DoneIds"]

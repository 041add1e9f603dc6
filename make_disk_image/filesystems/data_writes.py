"""File data into an image, as the engine's filesystem writers (ext4_write, btrfs_fstree)
write it: holes found cheaply, and consecutive writes joined into few pwrite calls."""

from __future__ import annotations

import os
from collections.abc import Iterator

# Consecutive writes are gathered up to this size: one pwrite for many small files.
GATHER = 4 << 20


class GatheredWrites:
    """pwrite to `fd`, consecutive pieces joined; `flush` before the file is read or
    closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._at = 0
        self._gather = bytearray()

    def write(self, at: int, data: bytes | bytearray | memoryview) -> None:
        if self._gather and at != self._at + len(self._gather):
            self.flush()
        if not self._gather:
            self._at = at
        self._gather += data
        if len(self._gather) >= GATHER:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self._gather)
        at = self._at
        while view:
            written = os.pwrite(self.fd, view, at)
            view, at = view[written:], at + written
        self._gather = bytearray()


def nonzero_runs(chunk: bytes, bs: int) -> Iterator[tuple[int, memoryview]]:
    """(first block, data) of each run of blocks in `chunk` that are not all zeros."""
    view = memoryview(chunk)
    blocks = len(chunk) // bs
    # A block of zeros starts and ends with one: two strided slices (one byte per block,
    # copied in C) find the few candidates, which are then compared in place.
    firsts, lasts, zero = chunk[::bs], chunk[bs - 1 :: bs], bytes(bs)
    holes = [] if 0 not in firsts else [
        i for i in range(blocks)
        if not firsts[i] and not lasts[i] and chunk.startswith(zero, i * bs)
    ]  # fmt: skip
    start = 0
    for hole in (*holes, blocks):
        if hole > start:
            yield start, view[start * bs : hole * bs]
        start = hole + 1

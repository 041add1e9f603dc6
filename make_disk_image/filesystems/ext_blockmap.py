"""Block maps: how a filesystem without the `extent` feature (ext2, ext3) finds a file's
blocks.

i_block holds 15 block numbers: 12 data blocks, then one single, one double and one
triple indirect block. An indirect block holds block_size/4 numbers, of data blocks (single)
or of indirect blocks one level down. A hole is a zero, and a range of holes needs no
indirect block at all.

Each indirect block is taken from the free space just before the first data block it
maps, as libext2fs allocates them while `mke2fs -d` writes a file: a file's blocks run
data, indirect, data... in one rising sequence. i_blocks counts both kinds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

DIRECT = 12
SINGLE, DOUBLE, TRIPLE = 12, 13, 14
SLOTS = 15


class TooLarge(Exception):
    """A file longer than a triple indirect block maps."""


def _pointers(first: int, count: int) -> bytes:
    return struct.pack(f"<{count}I", *range(first, first + count))


@dataclass
class BlockMap:
    """One file's block map, built in logical order. `take_one` gives the next free
    block, for the indirect blocks."""

    block_size: int
    take_one: Callable[[], int]
    slots: list[int] = field(default_factory=lambda: [0] * SLOTS)
    # Indirect blocks: the i_block slot, then the index at each level above, to
    # (physical block, its numbers). Dicts keep their order: the order they were taken.
    indirect: dict[tuple[int, ...], tuple[int, bytearray]] = field(default_factory=dict)

    @property
    def per_block(self) -> int:
        return self.block_size // 4

    def _path(self, logical: int) -> tuple[int, tuple[int, ...]]:
        """(i_block slot, the index in each indirect block down to the data block)."""
        per = self.per_block
        if logical < DIRECT:
            return logical, ()
        rest = logical - DIRECT
        for slot, depth in ((SINGLE, 1), (DOUBLE, 2), (TRIPLE, 3)):
            if rest < per**depth:
                return slot, tuple((rest // per**level) % per
                                   for level in range(depth - 1, -1, -1))
            rest -= per**depth
        raise TooLarge(f"block {logical} is beyond what a triple indirect block maps")

    def room(self, logical: int, count: int) -> int:
        """Make the indirect blocks that map `logical`; how many of `count` blocks from
        there they map (up to the next block that needs another indirect block)."""
        slot, indexes = self._path(logical)
        if not indexes:
            return min(count, DIRECT - logical)
        key: tuple[int, ...] = (slot,)
        self._make(key, None, slot)
        for index in indexes[:-1]:
            parent = key
            key = (*key, index)
            self._make(key, parent, index)
        return min(count, self.per_block - indexes[-1])

    def _make(self, key: tuple[int, ...], parent: tuple[int, ...] | None, index: int) -> None:
        if key in self.indirect:
            return
        block = self.take_one()
        self.indirect[key] = (block, bytearray(self.block_size))
        if parent is None:
            self.slots[index] = block
        else:
            struct.pack_into("<I", self.indirect[parent][1], index * 4, block)

    def add(self, logical: int, first: int, count: int) -> None:
        """Blocks `first`.. hold `count` blocks from `logical`, within one `room`."""
        slot, indexes = self._path(logical)
        if not indexes:
            self.slots[logical : logical + count] = range(first, first + count)
            return
        _, numbers = self.indirect[(slot, *indexes[:-1])]
        numbers[indexes[-1] * 4 : (indexes[-1] + count) * 4] = _pointers(first, count)

    def i_block(self) -> bytes:
        return struct.pack(f"<{SLOTS}I", *self.slots)


def blocks_in_block_map(i_block: bytes, read_block: Callable[[int], bytes],
                        block_size: int) -> list[tuple[int, int]]:
    """(physical block, 1) of every block a block map holds, indirect ones included
    (mke2fs's directories, which the filler writes anew)."""
    slots = struct.unpack_from(f"<{SLOTS}I", i_block)
    found = [(block, 1) for block in slots[:DIRECT] if block]
    per = block_size // 4

    def walk(block: int, depth: int) -> None:
        found.append((block, 1))
        for number in struct.unpack(f"<{per}I", read_block(block)):
            if not number:
                continue
            if depth == 1:
                found.append((number, 1))
            else:
                walk(number, depth - 1)

    for slot, depth in ((SINGLE, 1), (DOUBLE, 2), (TRIPLE, 3)):
        if slots[slot]:
            walk(slots[slot], depth)
    return found

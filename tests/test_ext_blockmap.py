"""ext_blockmap: where each logical block's number goes, indirect blocks taken just
before the data they map and only where there is data, and a map read back. Whole
filesystems with block maps are in test_ext4_fill."""

from __future__ import annotations

import struct

import pytest

from make_disk_image.filesystems.ext_blockmap import BlockMap, TooLarge, blocks_in_block_map


class Disk:
    """Blocks handed out from one counter, to indirect blocks and data alike, as the
    writer's free space does; a map of 64-byte blocks (16 numbers each)."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.block_map = BlockMap(64, self.take_one)

    def take_one(self) -> int:
        self.next += 1
        return self.next - 1

    def write(self, logical: int, count: int) -> None:
        """As the writer does: room (its indirect blocks), then the data blocks."""
        while count:
            span = self.block_map.room(logical, count)
            self.block_map.add(logical, self.next, span)
            self.next += span
            logical, count = logical + span, count - span

    def read(self, block: int) -> bytes:
        return next(bytes(numbers) for at, numbers in self.block_map.indirect.values()
                    if at == block)


def counter(start: int) -> tuple[list[int], BlockMap]:
    """A map whose indirect blocks come from `start` upwards, listed as taken."""
    taken: list[int] = []

    def take_one() -> int:
        taken.append(start + len(taken))
        return taken[-1]

    return taken, BlockMap(64, take_one)


def test_paths_through_each_level() -> None:
    _, block_map = counter(1000)
    assert block_map._path(0) == (0, ())
    assert block_map._path(11) == (11, ())
    assert block_map._path(12) == (12, (0,))
    assert block_map._path(27) == (12, (15,))
    assert block_map._path(28) == (13, (0, 0))
    assert block_map._path(28 + 16 * 16 - 1) == (13, (15, 15))
    assert block_map._path(28 + 256) == (14, (0, 0, 0))
    assert block_map._path(28 + 256 + 4096 - 1) == (14, (15, 15, 15))
    with pytest.raises(TooLarge):
        block_map._path(28 + 256 + 4096)


def test_room_stops_where_another_indirect_block_is_needed() -> None:
    taken, block_map = counter(1000)
    assert block_map.room(0, 100) == 12 and taken == []
    assert block_map.room(12, 100) == 16 and taken == [1000]
    assert block_map.room(20, 100) == 8 and taken == [1000]
    assert block_map.room(28, 100) == 16 and taken == [1000, 1001, 1002]  # DIND, IND
    assert block_map.room(44, 3) == 3 and taken == [1000, 1001, 1002, 1003]


def test_interleaved_and_read_back() -> None:
    """Data, then each indirect block just before the data it maps: one rising run;
    the map read back holds each block once."""
    disk = Disk(100)
    disk.write(0, 12 + 16 + 20)
    slots = struct.unpack("<15I", disk.block_map.i_block())
    assert slots[:12] == tuple(range(100, 112))
    assert slots[12:] == (112, 129, 0)  # single, double, no triple
    assert struct.unpack("<16I", disk.read(112)) == tuple(range(113, 129))
    assert struct.unpack("<16I", disk.read(129))[:2] == (130, 147)
    assert struct.unpack("<16I", disk.read(130)) == tuple(range(131, 147))
    assert struct.unpack("<16I", disk.read(147))[:5] == (148, 149, 150, 151, 0)
    found = blocks_in_block_map(disk.block_map.i_block(), disk.read, 64)
    assert sorted(block for block, _ in found) == list(range(100, disk.next))


def test_blocks_in_a_map() -> None:
    block_size = 64
    single = struct.pack("<16I", *range(20, 36))
    leaf = struct.pack("<16I", 50, 0, 52, *([0] * 13))
    double = struct.pack("<16I", 40, *([0] * 15))
    disk = {12: single, 13: double, 40: leaf}
    i_block = struct.pack("<15I", *range(1, 12), 0, 12, 13, 0)
    found = blocks_in_block_map(i_block, disk.__getitem__, block_size)
    assert sorted(block for block, _ in found) == sorted(
        [*range(1, 12), 12, *range(20, 36), 13, 40, 50, 52])
    assert all(count == 1 for _, count in found)


def test_holes_take_no_indirect_block() -> None:
    disk = Disk(100)
    disk.write(28 + 16 * 3 + 2, 1)  # in the double range's fourth leaf
    assert list(disk.block_map.indirect) == [(13,), (13, 3)]
    slots = struct.unpack("<15I", disk.block_map.i_block())
    assert slots[:13] == (0,) * 13 and slots[13] == 100
    assert struct.unpack("<16I", disk.read(100))[3] == 101
    assert struct.unpack("<16I", disk.read(101))[2] == 102

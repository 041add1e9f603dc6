"""ext4_alloc: runs of free bits, blocks and inodes taken lowest first, never an extent
longer than ext4 allows, and the counts per group."""

from __future__ import annotations

import random

import pytest

from make_disk_image.filesystems import ext4_alloc
from make_disk_image.filesystems.ext4_alloc import (
    BlockSpace,
    InodeSpace,
    NoSpace,
    set_bits,
    zero_runs,
)
from make_disk_image.filesystems.ext4_layout import Geometry


def naive_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    bits = [(bitmap[i // 8] >> (i % 8)) & 1 for i in range(nbits)]
    runs, i = [], 0
    while i < nbits:
        if bits[i]:
            i += 1
            continue
        j = i
        while j < nbits and not bits[j]:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


@pytest.mark.parametrize("seed", range(5))
def test_zero_runs_and_set_bits(seed: int) -> None:
    rng = random.Random(seed)
    bitmap = bytearray(rng.choice([0, 0xFF, rng.randrange(256)]) for _ in range(64))
    nbits = rng.randrange(1, 512)
    assert list(zero_runs(bitmap, nbits)) == naive_runs(bytes(bitmap), nbits)
    start, count = rng.randrange(200), rng.randrange(300)
    set_bits(bitmap, start, count, True)
    assert all((bitmap[i // 8] >> (i % 8)) & 1 for i in range(start, start + count))
    set_bits(bitmap, start, count, False)
    assert not any((bitmap[i // 8] >> (i % 8)) & 1 for i in range(start, start + count))


def geometry(groups: int = 2, per_group: int = 64) -> Geometry:
    return Geometry(1024, groups * per_group, groups * 16, 0, per_group, 16, 256, 64, True, 0, 0)


def test_blocks_lowest_first_across_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext4_alloc, "MAX_EXTENT_BLOCKS", 10)
    bitmaps = [bytearray(8), bytearray(8)]
    set_bits(bitmaps[0], 0, 4, True)  # group 0's metadata
    set_bits(bitmaps[1], 20, 2, True)
    space = BlockSpace(geometry(), bitmaps)
    space.release([(2, 1)])
    assert space.take(3) == [(2, 1), (4, 2)]
    # A run across the group boundary is one run, cut at the longest extent.
    assert space.take(64) == [(6, 10), (16, 10), (26, 10), (36, 10), (46, 10), (56, 10),
                              (66, 4)]
    assert space.take(16) == [(70, 10), (80, 4), (86, 2)]  # around group 1's used blocks
    # Group 0: one released, 3 + 58 taken; group 1: 6 + 16.
    assert space.taken == [60, 22] and space.changed == {0, 1}
    with pytest.raises(NoSpace):
        space.take(1000)


def test_inodes_lowest_first() -> None:
    bitmaps = [bytearray(2), bytearray(2)]
    set_bits(bitmaps[0], 0, 12, True)
    space = InodeSpace(geometry(), bitmaps)
    assert [space.take() for _ in range(6)] == [13, 14, 15, 16, 17, 18]
    assert space.taken == [4, 2]
    for _ in range(14):
        space.take()
    with pytest.raises(NoSpace):
        space.take()

"""XFS v5 per-AG btrees built whole (inobt, finobt, bnobt, cntbt), and extent records.

A short-form btree block: a 56-byte header (magic, level, record count, left and right
siblings, its own disk address, LSN, UUID, owning AG, CRC), then records (leaves) or
keys and, after room for the most keys a block holds, AG block pointers (nodes).
Records are spread evenly over the leaves, so no block but the root is under half
full (xfs_repair's minimum).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.xfs_format import Geometry, with_crc

BLOCK_HEADER = 56
BLOCK_CRC_OFFSET = 52
NULL_AGBLOCK = 0xFFFFFFFF
SECTOR = 512
# Magic numbers (v5): free space by block and by size, inodes, free inodes.
BNOBT, CNTBT, INOBT, FINOBT = 0x41423342, 0x41423343, 0x49414233, 0x46494233
MAX_EXTENT = (1 << 21) - 1  # blocks one extent record can count


@dataclass(frozen=True)
class Btree:
    """A built btree: its blocks by AG block number, its root and height."""

    blocks: dict[int, bytes]
    root: int
    levels: int


def daddr(geometry: Geometry, agno: int, agbno: int) -> int:
    """The 512-byte sector address of an AG block (what v5 headers record)."""
    return (agno * geometry.agblocks + agbno) * (geometry.blocksize // SECTOR)


def _spread(items: Sequence[bytes], per_block: int) -> list[Sequence[bytes]]:
    count = max(1, -(-len(items) // per_block))
    base, extra = divmod(len(items), count)
    groups, at = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        groups.append(items[at : at + size])
        at += size
    return groups


def build(geometry: Geometry, crc: Crc32c, *, magic: int, agno: int,
          records: Sequence[bytes], key_size: int, take: Callable[[], int]) -> Btree:
    """The btree holding `records` (sorted, equal sizes; a key is a record's first
    `key_size` bytes); `take()` gives the AG block for each block, leaves first."""
    size = geometry.blocksize
    room = size - BLOCK_HEADER
    rec_size = len(records[0]) if records else 1
    level_items: Sequence[bytes] = records
    level, item_size = 0, rec_size
    blocks: dict[int, bytes] = {}
    while True:
        per_block = room // item_size
        groups = _spread(level_items, per_block)
        places = [take() for _ in groups]
        keys = []
        for index, (group, agbno) in enumerate(zip(groups, places, strict=True)):
            left = places[index - 1] if index else NULL_AGBLOCK
            right = places[index + 1] if index + 1 < len(places) else NULL_AGBLOCK
            header = struct.pack(">IHHIIQQ16sII", magic, level, len(group), left, right,
                                 daddr(geometry, agno, agbno), 0, geometry.uuid, agno, 0)
            if level == 0:
                body = b"".join(group)
            else:
                # Keys, then the pointers after room for a full block's keys.
                body = b"".join(g[:key_size] for g in group).ljust(per_block * key_size,
                                                                   b"\0")
                body += b"".join(g[key_size:] for g in group)
            blocks[agbno] = with_crc((header + body).ljust(size, b"\0"),
                                     BLOCK_CRC_OFFSET, crc)
            keys.append(group[0][:key_size] + struct.pack(">I", agbno) if group
                        else struct.pack(">I", agbno))
        if len(places) == 1:
            return Btree(blocks, places[0], level + 1)
        level_items, level, item_size = keys, level + 1, key_size + 4


def inobt_record(agino: int, free_mask: int) -> bytes:
    """A full 64-inode chunk starting at AG inode `agino`; set bits of `free_mask` are
    free inodes."""
    return struct.pack(">IHBBQ", agino, 0, 64, bin(free_mask).count("1"), free_mask)


def extent_record(startoff: int, fsblock: int, count: int) -> bytes:
    """A 16-byte extent record: file block `startoff` on, `count` blocks at file system
    block `fsblock` (the AG number above the AG's block bits)."""
    assert 0 < count <= MAX_EXTENT
    high = (startoff << 9) | (fsblock >> 43)
    low = ((fsblock & ((1 << 43) - 1)) << 21) | count
    return struct.pack(">QQ", high, low)


def fsblock(geometry: Geometry, agno: int, agbno: int) -> int:
    return (agno << geometry.agblklog) | agbno

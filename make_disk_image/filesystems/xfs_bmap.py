"""An xfs inode's data fork: its extent records in the inode where they fit (21 at
512-byte inodes), else an extent btree (bmbt) whose root sits in the inode.

One level: the root in the inode (a short header: level 1, count; then each leaf's
first file block as its key and, after room for 20 keys, its file system block) over
leaves of the long-form header (64-bit sibling pointers, the inode as owner) and
16-byte extent records, spread evenly. 5,020 extents at 4 KiB blocks: past that a
file is refused (some 39 TiB: extents are up to 8 GiB).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.xfs_format import FMT_BTREE, FMT_EXTENTS, Geometry, with_crc

BMAP_MAGIC = 0x424D4133  # "BMA3"
LONG_HEADER = 72
LONG_CRC_OFFSET = 64
ROOT_HEADER = 4
NULL_FSBLOCK = (1 << 64) - 1
RECORD = 16
KEY = PTR = 8


@dataclass(frozen=True)
class DataFork:
    """An inode's data fork: its format (FMT_*), its bytes in the inode, the file's
    size, the blocks it maps (a bmbt's own blocks included), its extent records."""

    form: int
    data: bytes
    size: int = 0
    blocks: int = 0
    extents: int = 0


TakeBlock = Callable[[], tuple[int, int]]  # a new block: (file system block, disk address)
Write = Callable[[int, bytes], None]  # a block's bytes at a file system block


def startoff(record: bytes) -> int:
    """The first file block an extent record maps."""
    (high,) = struct.unpack_from(">Q", record)
    return int(high >> 9) & ((1 << 54) - 1)


def _keys_and_pointers(group: Sequence[tuple[int, int]], room: int) -> bytes:
    keys = b"".join(struct.pack(">Q", key) for key, _ in group).ljust(room * KEY, b"\0")
    return keys + b"".join(struct.pack(">Q", ptr) for _, ptr in group)


def data_fork(geometry: Geometry, crc: Crc32c, ino: int, records: Sequence[bytes],
              take: TakeBlock, write: Write) -> tuple[int, bytes, int]:
    """(format, fork bytes, btree blocks taken) for the extent `records` in order."""
    if len(records) * RECORD <= geometry.literal_size:
        return FMT_EXTENTS, b"".join(records), 0
    root_room = (geometry.literal_size - ROOT_HEADER) // (KEY + PTR)
    leaf_room = (geometry.blocksize - LONG_HEADER) // RECORD
    leaves = -(-len(records) // leaf_room)
    if leaves > root_room:
        # 20 leaves of 251 records: 5,020 extents, a file of 39 TiB or more here.
        raise ValueError(f"{len(records)} extents: more than the {root_room * leaf_room} "
                         "one level of extent btree holds (the writer's limit)")
    places = [take() for _ in range(leaves)]
    below = []
    for index, (fsblock, disk) in enumerate(places):
        group = records[len(records) * index // leaves : len(records) * (index + 1) // leaves]
        left = places[index - 1][0] if index else NULL_FSBLOCK
        right = places[index + 1][0] if index + 1 < leaves else NULL_FSBLOCK
        header = struct.pack(">IHHQQQQ16sQII", BMAP_MAGIC, 0, len(group), left, right, disk,
                             0, geometry.uuid, ino, 0, 0)
        write(fsblock, with_crc((header + b"".join(group)).ljust(geometry.blocksize, b"\0"),
                                LONG_CRC_OFFSET, crc))
        below.append((startoff(group[0]), fsblock))
    root = struct.pack(">HH", 1, leaves) + _keys_and_pointers(below, root_room)
    return FMT_BTREE, root, leaves

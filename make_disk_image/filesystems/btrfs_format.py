"""btrfs on-disk structures: keys, items and the superblock, packed little-endian.

Learnt from images made by mkfs.btrfs 6.14 (`btrfs inspect-internal dump-super -f`,
`dump-tree`) and the on-disk format documentation (btrfs.readthedocs.io). Sizes are
asserted where a wrong one would corrupt every item after it.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

NODESIZE = 16384
SECTORSIZE = 4096
STRIPE_LEN = 65536
SUPER_OFFSET = 65536
SUPER_SIZE = 4096
# Superblock copies: only those the device reaches are written.
SUPER_MIRRORS = (SUPER_OFFSET, 64 << 20, 256 << 30)
MAGIC = 0x4D5F53665248425F  # "_BHRfS_M"
MAX_INLINE = 2048  # the kernel's default max_inline: larger files get extents
MAX_EXTENT = 128 << 20  # the largest uncompressed data extent

# Object ids.
ROOT_TREE = 1
EXTENT_TREE = 2
CHUNK_TREE = 3
DEV_TREE = 4
FS_TREE = 5
ROOT_TREE_DIR = 6
CSUM_TREE = 7
UUID_TREE = 9
FREE_SPACE_TREE = 10
DEV_ITEMS = 1
DEV_STATS = 0
FIRST_CHUNK_TREE = 256
FIRST_FREE = 256  # the first inode number of a subvolume: its root directory
U64 = 1 << 64
EXTENT_CSUM = U64 - 10
DATA_RELOC_TREE = U64 - 9

# Key types.
INODE_ITEM = 1
INODE_REF = 12
INODE_EXTREF = 13
DIR_ITEM = 84
DIR_INDEX = 96
EXTENT_DATA = 108
EXTENT_CSUM_KEY = 128
ROOT_ITEM = 132
EXTENT_ITEM = 168
METADATA_ITEM = 169
TREE_BLOCK_REF = 176
EXTENT_DATA_REF = 178
BLOCK_GROUP_ITEM = 192
FREE_SPACE_INFO = 198
FREE_SPACE_EXTENT = 199
DEV_EXTENT = 204
DEV_ITEM = 216
CHUNK_ITEM = 228
PERSISTENT_ITEM = 249
UUID_KEY_SUBVOL = 251

# Block group flags.
BG_DATA = 1
BG_SYSTEM = 2
BG_METADATA = 4
BG_DUP = 32

# Directory entry types.
FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(1, 8)

# Extent item flags.
EXTENT_FLAG_DATA = 1
EXTENT_FLAG_TREE_BLOCK = 2

INCOMPAT = 0x1 | 0x20 | 0x40 | 0x100 | 0x200  # mixed_backref big_metadata extended_iref
COMPAT_RO = 0x1 | 0x2  # free_space_tree, free_space_tree_valid     skinny_metadata no_holes
HEADER_FLAGS = 1 | (1 << 56)  # WRITTEN, backref revision 1 (mixed)

HEADER = struct.Struct("<32s16sQQ16sQQIB")
KEY = struct.Struct("<QBQ")
ITEM = struct.Struct("<QBQII")  # key, data offset, data size
KEY_PTR = struct.Struct("<QBQQQ")  # key, block, generation
LEAF_SPACE = NODESIZE - HEADER.size
assert HEADER.size == 101 and ITEM.size == 25 and KEY_PTR.size == 33

Key = tuple[int, int, int]

INODE = struct.Struct("<QQQQQIIIIQQQ32xQIQIQIQI")
assert INODE.size == 160


@dataclass(frozen=True)
class Inode:
    mode: int  # type and permission bits
    size: int = 0
    nbytes: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    time: int = 0  # atime, ctime and mtime (seconds); otime stays 0
    generation: int = 1


def inode_item(inode: Inode) -> bytes:
    t = inode.time
    return INODE.pack(inode.generation, inode.generation, inode.size, inode.nbytes, 0,
                      inode.nlink, inode.uid, inode.gid, inode.mode, inode.rdev, 0, 0,
                      t, 0, t, 0, t, 0, 0, 0)


def inode_ref(index: int, name: bytes) -> bytes:
    return struct.pack("<QH", index, len(name)) + name


def inode_extref(parent: int, index: int, name: bytes) -> bytes:
    return struct.pack("<QQH", parent, index, len(name)) + name


def dir_item(location: Key, transid: int, kind: int, name: bytes) -> bytes:
    return KEY.pack(*location) + struct.pack("<QHHB", transid, 0, len(name), kind) + name


FILE_EXTENT = struct.Struct("<QQBBHB")  # generation, ram_bytes, compression..., type
REGULAR_EXTENT = struct.Struct("<QQBBHBQQQQ")


def inline_extent(generation: int, data: bytes) -> bytes:
    return FILE_EXTENT.pack(generation, len(data), 0, 0, 0, 0) + data


def regular_extent(generation: int, disk_bytenr: int, length: int) -> bytes:
    return REGULAR_EXTENT.pack(generation, length, 0, 0, 0, 1, disk_bytenr, length, 0,
                               length)


ROOT = struct.Struct("<160sQQQQQQQI17sBBQ16s16s16sQQQQ48s64x")
assert ROOT.size == 439


def root_item(*, bytenr: int, level: int, generation: int, blocks: int, dirid: int = 0,
              uuid: bytes = bytes(16), time: int = 0) -> bytes:
    inode = inode_item(Inode(0o40755, size=3, nbytes=NODESIZE, generation=generation))
    times = struct.pack("<QIQI", time, 0, time, 0) + bytes(24)
    return ROOT.pack(inode, generation, dirid, bytenr, 0, blocks * NODESIZE, 0, 0, 1,
                     bytes(17), 0, level, generation, uuid, bytes(16), bytes(16),
                     0, 0, 0, 0, times)


@dataclass(frozen=True)
class Stripe:
    physical: int
    dev_uuid: bytes


@dataclass(frozen=True)
class Chunk:
    """A chunk (and its block group): its logical bytes are its first stripe's."""

    logical: int
    length: int
    flags: int
    stripes: tuple[Stripe, ...]


def chunk_item(chunk: Chunk) -> bytes:
    head = struct.pack("<QQQQIIIHH", chunk.length, EXTENT_TREE, STRIPE_LEN, chunk.flags,
                       STRIPE_LEN, STRIPE_LEN, SECTORSIZE, len(chunk.stripes), 1)
    return head + b"".join(struct.pack("<QQ", 1, s.physical) + s.dev_uuid
                           for s in chunk.stripes)


def derived_uuid(fsid: bytes, what: str) -> bytes:
    """A UUID (version 4 in form) that depends only on the filesystem's and `what`."""
    digest = hashlib.sha256(fsid + what.encode()).digest()[:16]
    return uuid.UUID(bytes=digest, version=4).bytes


def dev_item(total: int, used: int, dev_uuid: bytes, fsid: bytes) -> bytes:
    item = struct.pack("<QQQIIIQQQIBB", 1, total, used, SECTORSIZE, SECTORSIZE, SECTORSIZE,
                       0, 0, 0, 0, 0, 0) + dev_uuid + fsid
    assert len(item) == 98
    return item


def dev_extent(chunk_offset: int, length: int, chunk_uuid: bytes) -> bytes:
    return struct.pack("<QQQQ", CHUNK_TREE, FIRST_CHUNK_TREE, chunk_offset,
                       length) + chunk_uuid


def block_group_item(used: int, flags: int) -> bytes:
    return struct.pack("<QQQ", used, FIRST_CHUNK_TREE, flags)


def data_extent_item(generation: int, root: int, ino: int, offset: int) -> bytes:
    return struct.pack("<QQQBQQQI", 1, generation, EXTENT_FLAG_DATA, EXTENT_DATA_REF, root,
                       ino, offset, 1)


def metadata_item(generation: int, root: int) -> bytes:
    return struct.pack("<QQQBQ", 1, generation, EXTENT_FLAG_TREE_BLOCK, TREE_BLOCK_REF, root)


def free_space_info(extents: int) -> bytes:
    return struct.pack("<II", extents, 0)


@dataclass(frozen=True)
class RootRef:
    """Where a tree's root block is, for the superblock's fields and backup slot."""

    bytenr: int
    level: int


@dataclass(frozen=True)
class Super:
    fsid: bytes
    generation: int
    root: RootRef
    chunk_root: RootRef
    extent_root: RootRef
    fs_root: RootRef
    dev_root: RootRef
    csum_root: RootRef
    total_bytes: int
    bytes_used: int
    dev_item: bytes
    label: bytes
    sys_chunk_array: bytes


def superblock(sb: Super, mirror: int) -> bytes:
    """The superblock for the copy at `mirror`, without its checksum (32 zero bytes)."""
    g = sb.generation
    head = struct.pack(
        "<32x16sQQQQQQQQQQQQIIIIIQQQQHBBB", sb.fsid, mirror, 1, MAGIC, g, sb.root.bytenr,
        sb.chunk_root.bytenr, 0, 0, sb.total_bytes, sb.bytes_used, ROOT_TREE_DIR, 1,
        SECTORSIZE, NODESIZE, NODESIZE, SECTORSIZE, len(sb.sys_chunk_array), g, 0,
        COMPAT_RO, INCOMPAT, 0, sb.root.level, sb.chunk_root.level, 0)
    assert len(head) == 201
    label = sb.label.ljust(256, b"\0")
    tail = struct.pack("<QQ16sQ", 0, g, bytes(16), 0)
    out = bytearray(head + sb.dev_item + label + tail)
    out += bytes(811 - len(out))
    out += sb.sys_chunk_array.ljust(2048, b"\0")
    roots = (sb.root, sb.chunk_root, sb.extent_root, sb.fs_root, sb.dev_root, sb.csum_root)
    backup = b"".join(struct.pack("<QQ", r.bytenr, g) for r in roots)
    backup += struct.pack("<QQQ32x", sb.total_bytes, sb.bytes_used, 1)
    backup += bytes(r.level for r in roots) + bytes(10)
    assert len(backup) == 168
    out += backup + bytes(3 * 168)
    out += bytes(SUPER_SIZE - len(out))
    return bytes(out)

"""XFS v5 on-disk facts the engine's own xfs writer (xfs_fill) needs.

mkfs.xfs makes the empty filesystem (headers, AGs, log, features, geometry, in
milliseconds), and the engine writes the tree into it. This module holds
the pieces every later part builds on, each checked against images mkfs.xfs 6.1 made:
the geometry from the primary superblock, inode numbers, the directory name hash,
bigtime timestamps, the v5 checksum placement, and the v3 inode core.

All of XFS's integers are big-endian; only the CRC-32C fields are stored little-endian
(the standard CRC-32C of the structure with its CRC field zeroed).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from make_disk_image.filesystems.crc32c import Crc32c

SB_MAGIC = 0x58465342  # "XFSB"
INODE_MAGIC = 0x494E  # "IN"
SB_CRC_OFFSET = 224
INODE_CRC_OFFSET = 100
INODE_CORE = 176  # the v3 inode core: the data fork starts here
NULL_AGINO = 0xFFFFFFFF
# di_format values.
FMT_DEV, FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 0, 1, 2, 3
# di_flags2: timestamps in the bigtime encoding.
FLAG2_BIGTIME = 1 << 3
# sb_features_incompat: bigtime timestamps; ftype in directory entries.
INCOMPAT_FTYPE = 1 << 0
INCOMPAT_BIGTIME = 1 << 3
# Bigtime counts nanoseconds from the oldest 32-bit time, 1901-12-13.
BIGTIME_EPOCH_OFFSET = 1 << 31
NSEC = 1_000_000_000

# The superblock fields the writer reads: (name, offset, struct format).
_SB_FIELDS = (
    ("blocksize", 4, ">I"), ("dblocks", 8, ">Q"), ("logstart", 48, ">Q"),
    ("rootino", 56, ">Q"), ("agblocks", 84, ">I"), ("agcount", 88, ">I"),
    ("logblocks", 96, ">I"), ("sectsize", 102, ">H"), ("inodesize", 104, ">H"),
    ("inopblock", 106, ">H"), ("blocklog", 120, "B"), ("inodelog", 122, "B"),
    ("inopblog", 123, "B"), ("agblklog", 124, "B"), ("icount", 128, ">Q"),
    ("ifree", 136, ">Q"), ("fdblocks", 144, ">Q"), ("inoalignmt", 180, ">I"),
    ("dirblklog", 192, "B"), ("features_ro_compat", 212, ">I"),
    ("features_incompat", 216, ">I"),
)


class FormatError(ValueError):
    """The image is not an xfs this writer knows."""


@dataclass(frozen=True)
class Geometry:
    """What the primary superblock says about the filesystem's shape."""

    blocksize: int
    dblocks: int
    logstart: int
    rootino: int
    agblocks: int
    agcount: int
    logblocks: int
    sectsize: int
    inodesize: int
    inopblock: int
    blocklog: int
    inodelog: int
    inopblog: int
    agblklog: int
    icount: int
    ifree: int
    fdblocks: int
    inoalignmt: int
    dirblklog: int
    features_ro_compat: int
    features_incompat: int
    uuid: bytes  # what v5 metadata stamps: sb_meta_uuid when set, else sb_uuid

    @classmethod
    def parse(cls, sector: bytes) -> Geometry:
        (magic,) = struct.unpack_from(">I", sector, 0)
        if magic != SB_MAGIC:
            raise FormatError(f"no xfs superblock (magic {magic:#x})")
        (version,) = struct.unpack_from(">H", sector, 100)
        if version & 0xF != 5:
            raise FormatError(f"xfs version {version & 0xF}: the writer knows v5 only")
        fields = {name: struct.unpack_from(fmt, sector, offset)[0]
                  for name, offset, fmt in _SB_FIELDS}
        meta_uuid = sector[248:264]
        # sb_features_incompat's META_UUID bit: v5 metadata carries sb_meta_uuid.
        uuid = meta_uuid if fields["features_incompat"] & (1 << 2) else sector[32:48]
        return cls(**fields, uuid=uuid)

    @property
    def dirblksize(self) -> int:
        return self.blocksize << self.dirblklog

    @property
    def bigtime(self) -> bool:
        return bool(self.features_incompat & INCOMPAT_BIGTIME)

    def ino(self, agno: int, agbno: int, index: int) -> int:
        """The inode number of the `index`th inode of AG block `agbno` in AG `agno`."""
        return (agno << (self.agblklog + self.inopblog)) | (agbno << self.inopblog) | index

    def ino_place(self, ino: int) -> tuple[int, int, int]:
        """(AG, AG block, index in the block) of inode number `ino`."""
        agino_bits = self.agblklog + self.inopblog
        agino = ino & ((1 << agino_bits) - 1)
        return ino >> agino_bits, agino >> self.inopblog, agino & ((1 << self.inopblog) - 1)

    def ino_offset(self, ino: int) -> int:
        """The byte offset of inode `ino` from the filesystem's start."""
        agno, agbno, index = self.ino_place(ino)
        block = agno * self.agblocks + agbno
        return block * self.blocksize + index * self.inodesize

    @property
    def literal_size(self) -> int:
        """The bytes of an inode's forks (data and attributes)."""
        return self.inodesize - INODE_CORE


def da_hash(name: bytes) -> int:
    """The directory (and attribute) name hash: seven bits a byte, rotated in."""

    def rol(value: int, bits: int) -> int:
        return ((value << bits) | (value >> (32 - bits))) & 0xFFFFFFFF

    value = 0
    full = len(name) - len(name) % 4
    for at in range(0, full, 4):
        b0, b1, b2, b3 = name[at : at + 4]
        value = (b0 << 21) ^ (b1 << 14) ^ (b2 << 7) ^ b3 ^ rol(value, 28)
    tail = name[full:]
    if len(tail) == 3:
        value = (tail[0] << 14) ^ (tail[1] << 7) ^ tail[2] ^ rol(value, 21)
    elif len(tail) == 2:
        value = (tail[0] << 7) ^ tail[1] ^ rol(value, 14)
    elif len(tail) == 1:
        value = tail[0] ^ rol(value, 7)
    return value & 0xFFFFFFFF


def timestamp(seconds: int, nsec: int = 0, *, bigtime: bool) -> bytes:
    """An inode timestamp: 64-bit nanoseconds since 1901 (bigtime), or seconds and
    nanoseconds as two 32-bit fields."""
    if bigtime:
        return struct.pack(">Q", (seconds + BIGTIME_EPOCH_OFFSET) * NSEC + nsec)
    return struct.pack(">iI", seconds, nsec)


def with_crc(block: bytes | bytearray, crc_offset: int, crc: Crc32c) -> bytes:
    """`block` with its CRC-32C field (4 bytes at `crc_offset`, little-endian) set to
    the checksum of the whole block with that field zeroed."""
    data = bytearray(block)
    data[crc_offset : crc_offset + 4] = bytes(4)
    data[crc_offset : crc_offset + 4] = struct.pack("<I", crc.checksum(bytes(data)))
    return bytes(data)


@dataclass(frozen=True)
class Inode:
    """A v3 inode: its core fields and its data fork's bytes (literal area)."""

    ino: int
    mode: int  # file type and permission bits, as st_mode
    fmt: int  # FMT_*
    nlink: int
    uid: int
    gid: int
    size: int
    nblocks: int  # blocks the data fork maps
    nextents: int
    fork: bytes  # the data fork as it sits after the core
    atime: tuple[int, int] = (0, 0)  # (seconds, nanoseconds)
    mtime: tuple[int, int] = (0, 0)
    ctime: tuple[int, int] = (0, 0)
    crtime: tuple[int, int] = (0, 0)
    changecount: int = 0
    generation: int = 0

    def encode(self, geometry: Geometry, crc: Crc32c) -> bytes:
        """The inode's `inodesize` bytes, its CRC set."""
        if len(self.fork) > geometry.literal_size:
            raise FormatError(f"inode {self.ino}: a {len(self.fork)}-byte data fork")
        big = geometry.bigtime

        def stamp(at: tuple[int, int]) -> bytes:
            return timestamp(*at, bigtime=big)

        core = b"".join((
            struct.pack(">HHBBH", INODE_MAGIC, self.mode, 3, self.fmt, 0),
            struct.pack(">IIIHH", self.uid, self.gid, self.nlink, 0, 0),
            bytes(8),  # pad, flush iteration
            stamp(self.atime), stamp(self.mtime), stamp(self.ctime),
            struct.pack(">QQIIHBbIHHI", self.size, self.nblocks, 0, self.nextents, 0, 0,
                        FMT_EXTENTS, 0, 0, 0, self.generation),
            struct.pack(">II", NULL_AGINO, 0),  # next unlinked, CRC (set below)
            struct.pack(">QQQI", self.changecount, 0, FLAG2_BIGTIME if big else 0, 0),
            bytes(12), stamp(self.crtime),
            struct.pack(">Q", self.ino), geometry.uuid,
        ))
        assert len(core) == INODE_CORE
        body = core + self.fork
        return with_crc(body + bytes(geometry.inodesize - len(body)), INODE_CRC_OFFSET, crc)

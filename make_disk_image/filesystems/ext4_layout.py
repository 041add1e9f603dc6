"""ext4's on-disk records as make_disk_image.filesystems.ext4_fill writes them: no checksums.
ext2 and ext3 share them, less the extent records (their block maps: ext_blockmap).

The filler writes into a filesystem mke2fs made without metadata_csum (the checksums
come afterwards, from tune2fs and e2fsck, as filesystems.ext.add_checksums does), so every record
here leaves its checksum fields zero. Field offsets are those of the kernel's
Documentation/filesystems/ext4 and e2fsprogs' lib/ext2fs/ext2_fs.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
MAGIC = 0xEF53
ROOT_INO = 2
LOST_AND_FOUND_INO = 11
# An initialized extent covers at most 2^15 blocks (the 16th bit marks an unwritten one).
MAX_EXTENT_BLOCKS = 32768
IN_INODE_EXTENTS = 4
EXTENT_MAGIC = 0xF30A
EXTENTS_FL = 0x80000
# The most links an inode counts; with dir_nlink, a directory with more subdirectories
# counts 1.
LINK_MAX = 65000
# A symlink target this long or shorter lives in the inode's 60-byte block map.
FAST_SYMLINK_MAX = 59
EXTRA_ISIZE = 32

# Directory entry file types.
FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SYMLINK = 1, 2, 3, 4, 5, 7
S_IFMT_BITS = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000,
               "chardev": 0o020000, "blockdev": 0o060000, "fifo": 0o010000}
FILE_TYPES = {"file": FT_REG, "dir": FT_DIR, "symlink": FT_SYMLINK,
              "chardev": FT_CHR, "blockdev": FT_BLK, "fifo": FT_FIFO}

# Features the filler knows how to fill. Anything else changes a layout it does not
# write (meta_bg, bigalloc, sparse_super2), needs accounting it does not do (quota), or
# needs checksums it does not compute (gdt_csum, metadata_csum).
COMPAT_UNSUPPORTED = {0x200: "sparse_super2"}
INCOMPAT_REQUIRED = {0x2: "filetype"}
INCOMPAT_EXTENT = 0x40
RO_COMPAT_DIR_NLINK = 0x20
RO_COMPAT_LARGE_FILE = 0x2
RO_COMPAT_HUGE_FILE = 0x8
INCOMPAT_SUPPORTED = 0x2 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x4000 | 0x8000 | 0x20000
RO_COMPAT_SUPPORTED = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x10000
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1

_INODE_BASE = struct.Struct("<HHIIIIIHHIII60sIIII HHHHHH HHIIIIIII")
_EXTENT_HEADER = struct.Struct("<HHHHI")
_EXTENT = struct.Struct("<IHHI")
_EXTENT_INDEX = struct.Struct("<IIHH")
_DIRENT_HEAD = struct.Struct("<IHBB")


class UnsupportedFilesystem(Exception):
    """The filesystem has a feature the filler does not write."""


@dataclass(frozen=True)
class Geometry:
    """What the superblock says about where things are."""

    block_size: int
    blocks_count: int
    inodes_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    sparse_super: bool
    free_blocks: int
    free_inodes: int
    # Files mapped by extents; without, by block maps (ext2, ext3).
    extents: bool = True
    # A directory with more than LINK_MAX - 2 subdirectories counts 1 link.
    dir_nlink: bool = True
    # i_size's high half (large_file) and i_blocks' high bits (huge_file) count.
    large_file: bool = True
    huge_file: bool = True

    @property
    def groups(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def gdt_blocks(self) -> int:
        return -(-(self.groups * self.desc_size) // self.block_size)

    def group_start(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_blocks(self, group: int) -> int:
        return min(self.blocks_per_group, self.blocks_count - self.group_start(group))

    def has_super(self, group: int) -> bool:
        """A backup superblock and group descriptors live in this group."""
        if group <= 1 or not self.sparse_super:
            return True
        for base in (3, 5, 7):
            power = base
            while power < group:
                power *= base
            if power == group:
                return True
        return False


def parse_superblock(raw: bytes | bytearray) -> Geometry:
    (inodes, blocks_lo, _r, free_lo, free_inodes, first_data, log_block, _c, per_group,
     _cpg, inodes_per_group) = struct.unpack_from("<11I", raw, 0)
    magic = struct.unpack_from("<H", raw, 56)[0]
    if magic != MAGIC:
        raise UnsupportedFilesystem(f"no ext2/3/4 superblock (magic {magic:#x})")
    inode_size = struct.unpack_from("<H", raw, 88)[0]
    compat, incompat, ro_compat = struct.unpack_from("<III", raw, 92)
    _check_features(compat, incompat, ro_compat)
    wide = bool(incompat & INCOMPAT_64BIT)
    blocks_hi, free_hi = (struct.unpack_from("<I", raw, off)[0] for off in (336, 344))
    desc_size = struct.unpack_from("<H", raw, 254)[0] if wide else 32
    return Geometry(
        block_size=1024 << log_block,
        blocks_count=blocks_lo | (blocks_hi << 32 if wide else 0),
        inodes_count=inodes,
        first_data_block=first_data,
        blocks_per_group=per_group,
        inodes_per_group=inodes_per_group,
        inode_size=inode_size,
        desc_size=desc_size,
        sparse_super=bool(ro_compat & RO_COMPAT_SPARSE_SUPER),
        free_blocks=free_lo | (free_hi << 32 if wide else 0),
        free_inodes=free_inodes,
        extents=bool(incompat & INCOMPAT_EXTENT),
        dir_nlink=bool(ro_compat & RO_COMPAT_DIR_NLINK),
        large_file=bool(ro_compat & RO_COMPAT_LARGE_FILE),
        huge_file=bool(ro_compat & RO_COMPAT_HUGE_FILE),
    )


def max_file_bytes(geometry: Geometry) -> int:
    """The largest file length this filesystem holds, never above the kernel's s_maxbytes.

    An extent addresses 2^32 logical blocks; a block map 12 direct blocks and three
    levels of indirect ones. Without huge_file, i_blocks counts 512-byte sectors in 32
    bits, indirect blocks included: about 2 TiB. Here those indirect blocks are a whole
    triple-indirect tree's, which with 4 KiB blocks is 2.0 GiB under the kernel's own
    estimate (tests/test_ext4_fill.py measures both). Without large_file, i_size is 31
    bits (the writer does not set the feature, as the kernel would on a longer file).
    """
    if not geometry.large_file:
        return (1 << 31) - 1
    bs = geometry.block_size
    per_block = bs // 4
    mapped = (1 << 32) - 1 if geometry.extents else 12 + sum(
        per_block**level for level in (1, 2, 3))
    if not geometry.huge_file:
        counted = ((1 << 32) - 1) // (bs // 512)
        if not geometry.extents:
            # The indirect blocks a file that long needs count in i_blocks too.
            counted -= 3 + 2 * per_block + per_block**2
        mapped = min(mapped, counted)
    return mapped * bs


def _check_features(compat: int, incompat: int, ro_compat: int) -> None:
    for bit, name in COMPAT_UNSUPPORTED.items():
        if compat & bit:
            raise UnsupportedFilesystem(f"feature {name}")
    for bit, name in INCOMPAT_REQUIRED.items():
        if not incompat & bit:
            raise UnsupportedFilesystem(f"no {name} feature")
    if incompat & ~INCOMPAT_SUPPORTED:
        raise UnsupportedFilesystem(f"incompat features {incompat & ~INCOMPAT_SUPPORTED:#x}")
    if ro_compat & ~RO_COMPAT_SUPPORTED:
        raise UnsupportedFilesystem(f"ro_compat features {ro_compat & ~RO_COMPAT_SUPPORTED:#x}")


def set_superblock_counts(raw: bytearray, free_blocks: int, free_inodes: int) -> None:
    struct.pack_into("<I", raw, 12, free_blocks & 0xFFFFFFFF)
    struct.pack_into("<I", raw, 16, free_inodes)
    incompat = struct.unpack_from("<I", raw, 96)[0]
    if incompat & INCOMPAT_64BIT:
        struct.pack_into("<I", raw, 344, free_blocks >> 32)


@dataclass(frozen=True)
class GroupDesc:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int


def _split(gdt: bytes | bytearray, off: int, lo_at: int, hi_at: int, wide: bool,
           size: str = "I") -> int:
    lo = struct.unpack_from("<" + size, gdt, off + lo_at)[0]
    if not wide:
        return int(lo)
    hi = struct.unpack_from("<" + size, gdt, off + hi_at)[0]
    return int(lo | (hi << (32 if size == "I" else 16)))


def parse_group(gdt: bytes | bytearray, group: int, desc_size: int) -> GroupDesc:
    off, wide = group * desc_size, desc_size >= 64
    return GroupDesc(
        block_bitmap=_split(gdt, off, 0, 32, wide),
        inode_bitmap=_split(gdt, off, 4, 36, wide),
        inode_table=_split(gdt, off, 8, 40, wide),
    )


def add_group_counts(gdt: bytearray, group: int, desc_size: int, *, free_blocks: int,
                     free_inodes: int, dirs: int) -> None:
    """Add to the group's free block, free inode and directory counts (negative: take)."""
    off, wide = group * desc_size, desc_size >= 64
    for lo_at, hi_at, delta in ((12, 44, free_blocks), (14, 46, free_inodes), (16, 48, dirs)):
        value = _split(gdt, off, lo_at, hi_at, wide, "H") + delta
        struct.pack_into("<H", gdt, off + lo_at, value & 0xFFFF)
        if wide:
            struct.pack_into("<H", gdt, off + hi_at, value >> 16)


def encode_time(seconds: int) -> tuple[int, int]:
    """(the 32-bit field, the extra field's epoch bits): ext4's times past 2038."""
    low = seconds & 0xFFFFFFFF
    signed = low - (1 << 32) if low >= 1 << 31 else low
    return low, ((seconds - signed) >> 32) & 3


@dataclass(frozen=True)
class InodeFields:
    mode: int  # type and permission bits
    uid: int
    gid: int
    size: int
    links: int
    blocks: int  # filesystem blocks it holds, its extent blocks included
    flags: int
    block_map: bytes  # the 60 bytes of i_block
    mtime: int
    crtime: int  # creation; access and change times are 0, as `mke2fs -d -` leaves them


def pack_inode(fields: InodeFields, inode_size: int, block_size: int) -> bytes:
    sectors = fields.blocks * (block_size // 512)
    mtime, mextra = encode_time(fields.mtime)
    crtime, crextra = encode_time(fields.crtime)
    packed = _INODE_BASE.pack(
        fields.mode, fields.uid & 0xFFFF, fields.size & 0xFFFFFFFF, 0, 0, mtime, 0,
        fields.gid & 0xFFFF, fields.links, sectors & 0xFFFFFFFF, fields.flags, 0,
        fields.block_map, 0, 0, fields.size >> 32, 0,
        (sectors >> 32) & 0xFFFF, 0, fields.uid >> 16, fields.gid >> 16, 0, 0,
        EXTRA_ISIZE, 0, 0, mextra, 0, crtime, crextra, 0, 0,
    )  # fmt: skip
    if inode_size < len(packed):
        # 128-byte inodes (ext2's size) have no room for the extra fields.
        return packed[:128]
    return packed + bytes(inode_size - len(packed))


def extent_header(entries: int, max_entries: int, depth: int) -> bytes:
    return _EXTENT_HEADER.pack(EXTENT_MAGIC, entries, max_entries, depth, 0)


def extent_leaf(runs: list[tuple[int, int, int]], block_size: int) -> bytes:
    """A leaf block: `runs` as (logical block, physical block, length)."""
    body = b"".join(_EXTENT.pack(lg, n, p >> 32, p & 0xFFFFFFFF) for lg, p, n in runs)
    head = extent_header(len(runs), (block_size - 12) // 12, 0)
    return (head + body).ljust(block_size, b"\0")


def block_map_extents(runs: list[tuple[int, int, int]]) -> bytes:
    """i_block holding up to four extents (depth 0)."""
    body = b"".join(_EXTENT.pack(lg, n, p >> 32, p & 0xFFFFFFFF) for lg, p, n in runs)
    return (extent_header(len(runs), IN_INODE_EXTENTS, 0) + body).ljust(60, b"\0")


def block_map_index(leaves: list[tuple[int, int]]) -> bytes:
    """i_block pointing at leaf blocks (depth 1), as (first logical block, leaf block)."""
    body = b"".join(_EXTENT_INDEX.pack(lg, p & 0xFFFFFFFF, p >> 32, 0) for lg, p in leaves)
    return (extent_header(len(leaves), IN_INODE_EXTENTS, 1) + body).ljust(60, b"\0")


def extents_in_block_map(block_map: bytes) -> list[tuple[int, int]]:
    """(physical block, length) of a depth-0 extent tree in i_block (mke2fs's dirs)."""
    magic, count, _max, depth, _gen = _EXTENT_HEADER.unpack_from(block_map, 0)
    if magic != EXTENT_MAGIC or depth != 0:
        raise UnsupportedFilesystem("a directory of mke2fs's without a depth-0 extent tree")
    runs = []
    for i in range(count):
        _lg, length, hi, lo = _EXTENT.unpack_from(block_map, 12 + 12 * i)
        runs.append((lo | (hi << 32), length))
    return runs


def device_block_map(major: int, minor: int) -> bytes:
    """Device numbers as the kernel stores them: the old 16-bit form when they fit."""
    if major < 256 and minor < 256:
        words = ((major << 8) | minor, 0)
    else:
        words = (0, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))
    return struct.pack("<II", *words).ljust(60, b"\0")


def directory_blocks(children: list[tuple[bytes, int, int]], block_size: int) -> list[bytes]:
    """A linear directory: (name, inode, file type) in order, "." and ".." included.

    Each block's last entry runs to the block's end; an entry never spans two blocks.
    """
    blocks: list[bytes] = []
    current: list[tuple[bytes, int, int]] = []
    used = 0
    for name, ino, ftype in children:
        need = (8 + len(name) + 3) & ~3
        if used + need > block_size:
            blocks.append(_pack_dir_block(current, block_size))
            current, used = [], 0
        current.append((name, ino, ftype))
        used += need
    blocks.append(_pack_dir_block(current, block_size))
    return blocks


def _pack_dir_block(items: list[tuple[bytes, int, int]], block_size: int) -> bytes:
    parts = []
    used = 0
    for i, (name, ino, ftype) in enumerate(items):
        need = (8 + len(name) + 3) & ~3
        rec_len = block_size - used if i == len(items) - 1 else need
        parts.append(_DIRENT_HEAD.pack(ino, rec_len, len(name), ftype))
        parts.append(name.ljust(need - 8, b"\0"))
        used += need
    return b"".join(parts).ljust(block_size, b"\0")

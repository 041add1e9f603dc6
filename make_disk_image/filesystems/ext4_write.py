"""Reading an empty ext2/3/4's metadata, and writing blocks, inodes and metadata back.

A file's blocks are recorded as extents, or as a block map (ext_blockmap) where the
filesystem has no `extent` feature.

Data is written in the order blocks are taken, so consecutive small writes are gathered
into one. Files are read, not copied by the kernel, because blocks of zeros become
holes (as with mke2fs -d): every piece is searched for one.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from make_disk_image.filesystems import ext4_layout as layout
from make_disk_image.filesystems.data_writes import GatheredWrites, nonzero_runs
from make_disk_image.filesystems.ext4_alloc import BlockSpace, InodeSpace
from make_disk_image.filesystems.ext4_layout import MAX_EXTENT_BLOCKS, Geometry, InodeFields
from make_disk_image.filesystems.ext_blockmap import BlockMap

# Gathered writes are flushed at this size.
# Files are read in pieces of this size (a multiple of any block size).
CHUNK = 1 << 20
LEAF_EXTENTS_MAX_LEAVES = layout.IN_INODE_EXTENTS


class TooFragmented(Exception):
    """A file needs more extents than a depth-1 tree holds."""


@dataclass
class ExtentList:
    """A file's extents as (logical, physical, length), built in logical order."""

    extents: list[tuple[int, int, int]] = field(default_factory=list)

    def room(self, logical: int, count: int) -> int:
        return count  # extents need no block before the data

    def add(self, logical: int, first: int, count: int) -> None:
        _add_extent(self.extents, logical, first, count)


@dataclass
class Writer:
    fd: int
    offset: int  # the filesystem's first byte in the image
    geometry: Geometry
    superblock: bytearray
    gdt: bytearray
    block_bitmaps: list[bytearray]
    inode_bitmaps: list[bytearray]
    inodes: dict[int, bytes] = field(default_factory=dict)
    writes: GatheredWrites = field(init=False)

    def __post_init__(self) -> None:
        self.writes = GatheredWrites(self.fd)

    @classmethod
    @contextmanager
    def open(cls, image: Path, offset: int) -> Iterator[Writer]:
        fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        try:
            raw = bytearray(os.pread(fd, layout.SUPERBLOCK_SIZE,
                                     offset + layout.SUPERBLOCK_OFFSET))
            geometry = layout.parse_superblock(raw)
            bs = geometry.block_size
            gdt_at = (geometry.first_data_block + 1) * bs
            gdt = bytearray(os.pread(fd, geometry.gdt_blocks * bs, offset + gdt_at))
            groups = [layout.parse_group(gdt, g, geometry.desc_size)
                      for g in range(geometry.groups)]
            writer = cls(
                fd, offset, geometry, raw, gdt,
                [bytearray(os.pread(fd, bs, offset + g.block_bitmap * bs)) for g in groups],
                [bytearray(os.pread(fd, bs, offset + g.inode_bitmap * bs)) for g in groups],
            )  # fmt: skip
            yield writer
        finally:
            os.close(fd)

    def _inode_at(self, ino: int) -> int:
        geo = self.geometry
        group, index = divmod(ino - 1, geo.inodes_per_group)
        table = layout.parse_group(self.gdt, group, geo.desc_size).inode_table
        return self.offset + table * geo.block_size + index * geo.inode_size

    def read_inode(self, ino: int) -> bytes:
        return os.pread(self.fd, self.geometry.inode_size, self._inode_at(ino))

    def read_block(self, block: int) -> bytes:
        bs = self.geometry.block_size
        return os.pread(self.fd, bs, self.offset + block * bs)

    def put_inode(self, ino: int, fields: InodeFields) -> None:
        geo = self.geometry
        self.inodes[ino] = layout.pack_inode(fields, geo.inode_size, geo.block_size)

    # Data.

    def _write(self, block: int, data: bytes | bytearray | memoryview) -> None:
        self.writes.write(self.offset + block * self.geometry.block_size, data)

    def write_blocks(self, space: BlockSpace, data: bytes) -> tuple[bytes, int]:
        """Metadata-like `data` (a directory, a symlink target) in new blocks."""
        bs = self.geometry.block_size
        file_map = self._new_map(space)
        used = self._place(space, file_map, 0, memoryview(data + bytes(-len(data) % bs)))
        block_map, extra = self._close(space, file_map)
        return block_map, used + extra

    def write_file(self, space: BlockSpace, read: Callable[[int, int], bytes],
                   size: int) -> tuple[bytes, int]:
        """A file's `size` bytes, from `read(offset, count)`, in new blocks.

        Blocks of zeros are left as holes, as mke2fs -d leaves them.
        """
        bs = self.geometry.block_size
        file_map = self._new_map(space)
        used = 0
        for at in range(0, size, CHUNK):
            chunk = read(at, min(CHUNK, size - at))
            chunk += bytes(-len(chunk) % bs)
            for first, data in nonzero_runs(chunk, bs):
                used += self._place(space, file_map, at // bs + first, data)
        block_map, extra = self._close(space, file_map)
        return block_map, used + extra

    def _new_map(self, space: BlockSpace) -> ExtentList | BlockMap:
        """Where a new file's blocks are recorded: extents, or a block map where the
        filesystem has no `extent` feature (ext2, ext3)."""
        if self.geometry.extents:
            return ExtentList()
        return BlockMap(self.geometry.block_size, lambda: space.take(1)[0][0])

    def _place(self, space: BlockSpace, file_map: ExtentList | BlockMap, logical: int,
               data: memoryview) -> int:
        """Whole blocks of `data`, from block `logical` of a file, in new blocks; how
        many it took (indirect blocks aside: `_close` counts them)."""
        bs = self.geometry.block_size
        count = len(data) // bs
        taken = count
        while count:
            span = file_map.room(logical, count)
            for start, length in space.take(span):
                self._write(start, data[: length * bs])
                data = data[length * bs :]
                file_map.add(logical, start, length)
                logical += length
            count -= span
        return taken

    def _close(self, space: BlockSpace, file_map: ExtentList | BlockMap) -> tuple[bytes, int]:
        """i_block for a written file, and the blocks its map holds beyond the data."""
        if isinstance(file_map, ExtentList):
            return self.extent_tree(space, file_map.extents)
        for block, numbers in file_map.indirect.values():
            self._write(block, numbers)
        return file_map.i_block(), len(file_map.indirect)

    def extent_tree(self, space: BlockSpace,
                    extents: list[tuple[int, int, int]]) -> tuple[bytes, int]:
        """i_block for (logical, physical, length) extents, with leaf blocks beyond four."""
        if len(extents) <= layout.IN_INODE_EXTENTS:
            return layout.block_map_extents(extents), 0
        per_leaf = (self.geometry.block_size - 12) // 12
        chunks = [extents[i : i + per_leaf] for i in range(0, len(extents), per_leaf)]
        if len(chunks) > LEAF_EXTENTS_MAX_LEAVES:
            raise TooFragmented(f"a file in {len(extents)} extents")
        leaves = []
        for chunk in chunks:
            (leaf, _), = space.take(1)
            self._write(leaf, layout.extent_leaf(chunk, self.geometry.block_size))
            leaves.append((chunk[0][0], leaf))
        return layout.block_map_index(leaves), len(leaves)

    # Metadata, once every entry is written.

    def finish(self, blocks: BlockSpace, inodes: InodeSpace, dirs_added: list[int]) -> None:
        self.writes.flush()
        self._write_inodes()
        geo = self.geometry
        dirs = [0] * geo.groups
        for ino in dirs_added:
            dirs[(ino - 1) // geo.inodes_per_group] += 1
        bs = geo.block_size
        for group in range(geo.groups):
            if not (group in blocks.changed or inodes.taken[group] or dirs[group]):
                continue
            desc = layout.parse_group(self.gdt, group, geo.desc_size)
            os.pwrite(self.fd, self.block_bitmaps[group], self.offset + desc.block_bitmap * bs)
            os.pwrite(self.fd, self.inode_bitmaps[group], self.offset + desc.inode_bitmap * bs)
            layout.add_group_counts(self.gdt, group, geo.desc_size,
                                    free_blocks=-blocks.taken[group],
                                    free_inodes=-inodes.taken[group], dirs=dirs[group])
        layout.set_superblock_counts(self.superblock, geo.free_blocks - sum(blocks.taken),
                                     geo.free_inodes - sum(inodes.taken))
        self._write_superblocks()

    def _write_inodes(self) -> None:
        """The inodes, contiguous numbers in one write each."""
        numbers = sorted(self.inodes)
        size = self.geometry.inode_size
        i = 0
        while i < len(numbers):
            j = i
            while (j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1
                   and (numbers[j + 1] - 1) % self.geometry.inodes_per_group):
                j += 1
            data = b"".join(self.inodes[n] for n in numbers[i : j + 1])
            assert len(data) == (j - i + 1) * size
            os.pwrite(self.fd, data, self._inode_at(numbers[i]))
            i = j + 1

    def _write_superblocks(self) -> None:
        """The primary superblock and descriptors, and every backup copy of them."""
        geo = self.geometry
        bs = geo.block_size
        os.pwrite(self.fd, self.superblock, self.offset + layout.SUPERBLOCK_OFFSET)
        os.pwrite(self.fd, self.gdt, self.offset + (geo.first_data_block + 1) * bs)
        for group in range(1, geo.groups):
            if not geo.has_super(group):
                continue
            start = geo.group_start(group)
            backup = bytearray(self.superblock)
            struct.pack_into("<H", backup, 90, group)
            os.pwrite(self.fd, backup, self.offset + start * bs)
            os.pwrite(self.fd, self.gdt, self.offset + (start + 1) * bs)


def _add_extent(extents: list[tuple[int, int, int]], logical: int, start: int,
                length: int) -> None:
    if extents:
        last_logical, last_start, last_length = extents[-1]
        if (last_logical + last_length == logical and last_start + last_length == start
                and last_length + length <= MAX_EXTENT_BLOCKS):
            extents[-1] = (last_logical, last_start, last_length + length)
            return
    extents.append((logical, start, length))


def file_reader(fd: int) -> Callable[[int, int], bytes]:
    def read(offset: int, count: int) -> bytes:
        data = os.pread(fd, count, offset)
        while len(data) < count:
            more = os.pread(fd, count - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, "file shrank while being read "
                              f"({offset + len(data)} bytes left)")
            data += more
        return data
    return read

"""The metadata of a btrfs written by btrfs_write: every tree but the fs tree's items,
the metadata chunk, the tree blocks' places, and the superblock copies.

Trees are placed in the metadata chunk from its start in a fixed order (root, extent,
dev, fs, csum, free space, uuid, data reloc); the chunk tree in the system chunk. The
extent tree holds a METADATA_ITEM for each block, its own included: its size is found by
counting until it no longer grows. Each block group's used bytes are at its start, so
the free space tree holds one free extent per group (none when it is full).
"""

from __future__ import annotations

import copy
import os
import struct
from dataclasses import dataclass, field

from make_disk_image.filesystems import btrfs_format as fmt
from make_disk_image.filesystems import btrfs_fstree as fstree
from make_disk_image.filesystems import btrfs_tree as tree
from make_disk_image.filesystems.btrfs_format import Chunk, RootRef, Stripe, derived_uuid
from make_disk_image.filesystems.btrfs_fstree import Item, NoSpace
from make_disk_image.filesystems.crc32c import Crc32c

MIB = 1 << 20
GENERATION = 1
# Free metadata space left for whoever mounts it (the build VM registers the store).
METADATA_SLACK = 64 * MIB
SLACKS = (METADATA_SLACK, 32 * MIB, 16 * MIB, 8 * MIB, 4 * MIB, 2 * MIB, MIB)
# A root sized for the guest (`for_guest`: diskSize = "minimal") keeps free in its
# metadata chunk what the kernel wants there, so that the guest's writes never make it
# take a new metadata chunk (twice its size, DUP) out of the unallocated space left for
# the guest's data: its global reserve (the extent, checksum, free space and root trees'
# bytes, at least RESERVE_ITEMS items' worth, at most 512 MiB: fs/btrfs/block-rsv.c;
# Linux 6.18 reserves 5.5 MiB, 22 items, on a tree of a few blocks),
# GUEST_METADATA beyond it for what the guest's writes copy on write, and the chunk under
# 80% used with 2 MiB to spare after them (should_alloc_chunk's threshold).
# Measured on the 2 GB closure with additionalSpace 0: 8 MiB free beyond the used
# 61.3 MiB made the kernel take a 16 MiB metadata chunk at the first write, and the
# guest could write 1 MiB; 16 MiB free, none taken, 16 MiB written.
GUEST_METADATA = 8 * MIB
RESERVE_ITEMS = 22
ITEM_RESERVE = fmt.NODESIZE * 8 * 2  # a tree item's worst case: 8 levels, two trees
RESERVE_MAX = 512 * MIB
ALLOC_THRESHOLD_PER_CENT = 80
ALLOC_SPARE = 2 * MIB
MAX_CSUMS = (fmt.LEAF_SPACE - 2 * fmt.ITEM.size) // 4 - 1
ROOT_NAME = b"default"
EXTENT_ITEM_MAX = 53  # a data extent's EXTENT_ITEM with its backref
# The trees placed in the metadata chunk, in order.
TREES = (fmt.ROOT_TREE, fmt.EXTENT_TREE, fmt.DEV_TREE, fmt.FS_TREE, fmt.CSUM_TREE,
         fmt.FREE_SPACE_TREE, fmt.UUID_TREE, fmt.DATA_RELOC_TREE)


def _align(value: int, to: int = MIB) -> int:
    return -(-value // to) * to


def csum_items(data: fstree.DataSpace) -> list[Item]:
    items = []
    for start, sums in data.csums:
        for first in range(0, len(sums) // 4, MAX_CSUMS):
            piece = bytes(sums[first * 4 : (first + MAX_CSUMS) * 4])
            items.append(((fmt.EXTENT_CSUM, fmt.EXTENT_CSUM_KEY,
                           start + first * fmt.SECTORSIZE), piece))
    return items


def guest_room(used: int, reserve_blocks: int) -> int:
    """The free bytes a metadata chunk holding `used` bytes of trees keeps for the guest
    (the notes at GUEST_METADATA), `reserve_blocks` the blocks of the trees the kernel's
    global reserve counts."""
    reserve = min(RESERVE_MAX, max(reserve_blocks * fmt.NODESIZE, RESERVE_ITEMS * ITEM_RESERVE))
    grown = used + GUEST_METADATA + ALLOC_SPARE
    below_threshold = -(-grown * 100 // ALLOC_THRESHOLD_PER_CENT) - used
    return _align(max(below_threshold, reserve + GUEST_METADATA))


def free_space_items(groups: list[tuple[Chunk, int]]) -> list[Item]:
    items = []
    for chunk, used in groups:
        free = chunk.length - used
        items.append(((chunk.logical, fmt.FREE_SPACE_INFO, chunk.length),
                      fmt.free_space_info(1 if free else 0)))
        if free:
            items.append(((chunk.logical + used, fmt.FREE_SPACE_EXTENT, free), b""))
    return items


def _dir_inode(time: int) -> bytes:
    return fmt.inode_item(fmt.Inode(0o40755, nbytes=fmt.NODESIZE, time=time))


@dataclass
class Metadata:
    """Every tree but the fs tree's items, placed and written once the data is."""

    fsid: bytes
    dev_uuid: bytes
    label: bytes
    crc: Crc32c
    system: Chunk
    data_chunks: list[Chunk]
    data_filled: list[int]  # bytes used from each data chunk's start
    for_guest: bool = False  # free metadata room: guest_room's, not SLACKS'
    # Set by `write` for the trees and the superblock built after it.
    total_bytes: int = field(default=0, init=False)
    chunk_uuid: bytes = field(default=bytes(16), init=False)
    fs_uuid: bytes = field(default=bytes(16), init=False)
    root_time: int = field(default=0, init=False)
    dev_item: bytes = field(default=b"", init=False)
    data_end: int = field(default=0, init=False)  # where the metadata chunk was placed from
    stripe: int = field(default=0, init=False)  # the metadata chunk's length (each copy)

    def _fixed_trees(self, nodes: dict[int, fstree.Node],
                     data: fstree.DataSpace) -> dict[int, list[Item]]:
        """The trees whose items do not depend on where blocks are."""
        mtime = nodes[fmt.FIRST_FREE].entry.mtime
        root_time = self.root_time = fstree.STORE_MTIME if mtime is None else mtime
        self.fs_uuid = derived_uuid(self.fsid, "fs tree")
        low, high = struct.unpack("<QQ", self.fs_uuid)
        return {
            fmt.FS_TREE: list(fstree.fs_items(nodes, self.crc, GENERATION)),
            fmt.CSUM_TREE: csum_items(data),
            fmt.UUID_TREE: [((low, fmt.UUID_KEY_SUBVOL, high), struct.pack("<Q", fmt.FS_TREE))],
            fmt.DATA_RELOC_TREE: [
                ((fmt.FIRST_FREE, fmt.INODE_ITEM, 0), _dir_inode(root_time)),
                ((fmt.FIRST_FREE, fmt.INODE_REF, fmt.FIRST_FREE), fmt.inode_ref(0, b"..")),
            ],
        }

    def _chunk_items(self, chunks: list[Chunk]) -> list[Item]:
        used = sum(s_len for s_len in self._dev_extents(chunks).values())
        dev = fmt.dev_item(self.total_bytes, used, self.dev_uuid, self.fsid)
        self.dev_item = dev
        return [((fmt.DEV_ITEMS, fmt.DEV_ITEM, 1), dev)] + [
            ((fmt.FIRST_CHUNK_TREE, fmt.CHUNK_ITEM, c.logical), fmt.chunk_item(c))
            for c in chunks]

    @staticmethod
    def _dev_extents(chunks: list[Chunk]) -> dict[int, int]:
        return {s.physical: c.length for c in chunks for s in c.stripes}

    def _dev_items(self, chunks: list[Chunk]) -> list[Item]:
        owner = {s.physical: c for c in chunks for s in c.stripes}
        items = [((fmt.DEV_STATS, fmt.PERSISTENT_ITEM, 1), bytes(40))]
        for physical in sorted(owner):
            c = owner[physical]
            items.append(((1, fmt.DEV_EXTENT, physical),
                          fmt.dev_extent(c.logical, c.length, self.chunk_uuid)))
        return items

    def _root_items(self, roots: dict[int, RootRef], shapes: dict[int, tree.Shape]) -> list[Item]:
        def root(objectid: int, dirid: int = 0, uuid: bytes = bytes(16), time: int = 0) -> Item:
            ref = roots[objectid]
            return ((objectid, fmt.ROOT_ITEM, 0),
                    fmt.root_item(bytenr=ref.bytenr, level=ref.level, generation=GENERATION,
                                  blocks=shapes[objectid].blocks, dirid=dirid, uuid=uuid,
                                  time=time))
        name = ROOT_NAME
        return [
            root(fmt.EXTENT_TREE), root(fmt.DEV_TREE),
            ((fmt.FS_TREE, fmt.INODE_REF, fmt.ROOT_TREE_DIR), fmt.inode_ref(0, name)),
            root(fmt.FS_TREE, dirid=fmt.FIRST_FREE, uuid=self.fs_uuid, time=self.root_time),
            ((fmt.ROOT_TREE_DIR, fmt.INODE_ITEM, 0), _dir_inode(self.root_time)),
            ((fmt.ROOT_TREE_DIR, fmt.INODE_REF, fmt.ROOT_TREE_DIR), fmt.inode_ref(0, b"..")),
            ((fmt.ROOT_TREE_DIR, fmt.DIR_ITEM, self.crc.name_hash(name)),
             fmt.dir_item((fmt.FS_TREE, fmt.ROOT_ITEM, fmt.U64 - 1), GENERATION, fmt.FT_DIR,
                          name)),
            root(fmt.CSUM_TREE), root(fmt.UUID_TREE), root(fmt.FREE_SPACE_TREE),
            root(fmt.DATA_RELOC_TREE, dirid=fmt.FIRST_FREE),
        ]

    def write(self, fd: int, offset: int, space: Physical, nodes: dict[int, fstree.Node],
              data: fstree.DataSpace) -> int:
        """Place and write every tree and the superblocks; the number of tree blocks."""
        self.total_bytes = space.size
        self.chunk_uuid = derived_uuid(self.fsid, "chunk tree")
        items = self._fixed_trees(nodes, data)
        data_extents = fstree.data_extent_items(nodes, GENERATION)
        placeholder = Chunk(0, 1, 0, (Stripe(fmt.U64 - 2, self.dev_uuid),
                                          Stripe(fmt.U64 - 1, self.dev_uuid)))
        chunks = [self.system, *self.data_chunks, placeholder]
        # Sizes first: every item's size is known before any block is placed.
        shapes = {t: tree.shape([len(d) for _, d in items[t]]) for t in items}
        shapes[fmt.DEV_TREE] = tree.shape([len(d) for _, d in self._dev_items(chunks)])
        shapes[fmt.ROOT_TREE] = tree.shape([len(d) for _, d in self._root_items(
            {t: RootRef(0, 0) for t in TREES}, {t: tree.Shape([1], []) for t in TREES})])
        groups = [(self.system, 1), *zip(self.data_chunks, self.data_filled, strict=True),
                  (placeholder, 0)]
        shapes[fmt.FREE_SPACE_TREE] = tree.shape(
            [len(d) for _, d in free_space_items(groups)])
        chunk_shape = tree.shape([len(d) for _, d in self._chunk_items(chunks)])
        fixed_blocks = chunk_shape.blocks + sum(s.blocks for s in shapes.values())
        # The extent tree's items are sorted by where blocks land, so its leaves are
        # cut by count (the largest item, a data extent's, sets it).
        others = len(chunks) + fixed_blocks + len(data_extents)
        extent_blocks = 1
        while True:
            extent_shape = tree.uniform_shape(others + extent_blocks, EXTENT_ITEM_MAX)
            if extent_shape.blocks <= extent_blocks:
                break
            extent_blocks = extent_shape.blocks
        # Counting up from one block stops where the count is exactly the tree's.
        shapes[fmt.EXTENT_TREE] = extent_shape
        meta_blocks = sum(shapes[t].blocks for t in TREES)
        data_end = space.at
        slacks: tuple[int, ...] = SLACKS
        if self.for_guest:
            reserved = (fmt.EXTENT_TREE, fmt.CSUM_TREE, fmt.FREE_SPACE_TREE, fmt.ROOT_TREE)
            room = guest_room(meta_blocks * fmt.NODESIZE, sum(shapes[t].blocks for t in reserved))
            # Less where it does not fit (the guest's files grew the data; the measure
            # allows for them): the filesystem is made all the same.
            slacks = (room, *(slack for slack in SLACKS if slack < room))
        meta = self._place_metadata(space, meta_blocks * fmt.NODESIZE, slacks)
        self.data_end, self.stripe = data_end, meta.length
        chunks[-1] = meta
        return self._build(fd, offset, chunks, shapes, chunk_shape, items, data_extents)

    def _place_metadata(self, space: Physical, needed: int, slacks: tuple[int, ...]) -> Chunk:
        """The metadata chunk: what the trees need and the first free room of `slacks`
        that fits (a stripe moved past a superblock copy costs room)."""
        for slack in slacks:
            trial = copy.copy(space)
            try:
                first, length = trial.take(_align(needed) + slack)
                second, _ = trial.take(length)
            except NoSpace:
                continue
            space.at = trial.at
            return Chunk(first, length, fmt.BG_METADATA | fmt.BG_DUP,
                         (Stripe(first, self.dev_uuid), Stripe(second, self.dev_uuid)))
        raise NoSpace(f"btrfs_write needed {-(-needed // MIB)} MiB of metadata, twice, "
                      f"beyond the data's {-(-space.at // MIB)} MiB")

    def _build(self, fd: int, offset: int, chunks: list[Chunk], shapes: dict[int, tree.Shape],
               chunk_shape: tree.Shape, items: dict[int, list[Item]],
               data_extents: list[Item]) -> int:
        meta = chunks[-1]
        addresses: dict[int, list[int]] = {}
        at = meta.logical
        for t in TREES:
            addresses[t] = [at + i * fmt.NODESIZE for i in range(shapes[t].blocks)]
            at += shapes[t].blocks * fmt.NODESIZE
        meta_used = at - meta.logical
        sys_used = chunk_shape.blocks * fmt.NODESIZE
        addresses[fmt.CHUNK_TREE] = [self.system.logical + i * fmt.NODESIZE
                                     for i in range(chunk_shape.blocks)]
        shapes = {**shapes, fmt.CHUNK_TREE: chunk_shape}
        used = [sys_used, *self.data_filled, meta_used]
        extent = [((c.logical, fmt.BLOCK_GROUP_ITEM, c.length),
                   fmt.block_group_item(u, c.flags))
                  for c, u in zip(chunks, used, strict=True)]
        extent += [((a, fmt.METADATA_ITEM, level), fmt.metadata_item(GENERATION, t))
                   for t, addrs in addresses.items()
                   for a, level in zip(addrs, shapes[t].levels, strict=True)]
        extent += data_extents
        extent.sort(key=lambda item: item[0])
        items = {**items, fmt.EXTENT_TREE: extent, fmt.DEV_TREE: self._dev_items(chunks),
                 fmt.FREE_SPACE_TREE: free_space_items(list(zip(chunks, used, strict=True))),
                 fmt.CHUNK_TREE: self._chunk_items(chunks)}
        ctx = tree.Context(self.fsid, self.chunk_uuid, GENERATION, self.crc.checksum)
        roots: dict[int, RootRef] = {}
        written = 0
        # Each tree written as it is built, its items dropped: one tree's blocks at most
        # are in memory (the fs tree's items and blocks are most of the metadata).
        for t in (*TREES[1:], fmt.CHUNK_TREE, fmt.ROOT_TREE):
            if t == fmt.ROOT_TREE:
                items[t] = self._root_items(roots, shapes)
            chunk = self.system if t == fmt.CHUNK_TREE else meta

            def emit(bytenr: int, block: bytes, chunk: Chunk = chunk) -> None:
                for stripe in chunk.stripes:
                    os.pwrite(fd, block, offset + stripe.physical + bytenr - chunk.logical)

            roots[t] = tree.build(items[t], shapes[t], addresses[t], t, ctx, emit)
            items[t].clear()
            written += shapes[t].blocks
        total_used = sys_used + meta_used + sum(self.data_filled)
        self._write_supers(fd, offset, roots, total_used)
        return written

    def _write_supers(self, fd: int, offset: int, roots: dict[int, RootRef],
                      used: int) -> None:
        sys_array = fmt.KEY.pack(fmt.FIRST_CHUNK_TREE, fmt.CHUNK_ITEM, self.system.logical)
        sys_array += fmt.chunk_item(self.system)
        sb = fmt.Super(
            fsid=self.fsid, generation=GENERATION, root=roots[fmt.ROOT_TREE],
            chunk_root=roots[fmt.CHUNK_TREE], extent_root=roots[fmt.EXTENT_TREE],
            fs_root=roots[fmt.FS_TREE], dev_root=roots[fmt.DEV_TREE],
            csum_root=roots[fmt.CSUM_TREE], total_bytes=self.total_bytes, bytes_used=used,
            dev_item=self.dev_item, label=self.label, sys_chunk_array=sys_array)
        for mirror in fmt.SUPER_MIRRORS:
            if mirror + fmt.SUPER_SIZE > self.total_bytes:
                break
            block = bytearray(fmt.superblock(sb, mirror))
            block[0:4] = self.crc.checksum(bytes(block[32:])).to_bytes(4, "little")
            os.pwrite(fd, block, offset + mirror)


class Physical:
    """Device bytes taken in order from 1 MiB, no piece covering a superblock copy."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.at = MIB

    def take(self, length: int, *, split: bool = False) -> tuple[int, int]:
        """(start, length) of the next piece; with `split`, cut at a superblock copy
        rather than moved past it."""
        for mirror in fmt.SUPER_MIRRORS[1:]:
            if self.at <= mirror < self.at + length:
                if split and mirror - self.at >= MIB:
                    length = mirror - self.at
                else:
                    self.at = _align(mirror + fmt.SUPER_SIZE)
        if self.at + length > self.size:
            raise NoSpace(f"btrfs_write needed at least {-(-(self.at + length) // MIB)} MiB")
        start = self.at
        self.at += length
        return start, length

"""The fs tree (subvolume 5) of a btrfs written from entries, and the files' data.

Inodes are numbered in the entries' order from 256 (the root directory). Every
directory's children get DIR_INDEX numbers from 2 in the entries' order; DIR_ITEMs are
keyed by the name's hash. Files of at most MAX_INLINE bytes, and symlink targets, are
inline extents; larger files get data extents written in inode order, holes (sectors of
zeros) left out as no_holes allows.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from make_disk_image.filesystems import btrfs_format as fmt
from make_disk_image.filesystems.btrfs_format import Inode, Key
from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.data_writes import GatheredWrites, nonzero_runs
from make_disk_image.filesystems.ext4_write import file_reader
from make_disk_image.filesystems.tree_order import Numbering
from make_disk_image.models import Entry

STORE_MTIME = 1  # Nix's canonical store time; None in an entry means this
CHUNK = 1 << 20  # files are read in pieces of this size
FILE_TYPES = {"dir": fmt.FT_DIR, "file": fmt.FT_REG_FILE, "symlink": fmt.FT_SYMLINK,
              "chardev": fmt.FT_CHRDEV, "blockdev": fmt.FT_BLKDEV, "fifo": fmt.FT_FIFO}
MODE_TYPES = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
              "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO}
Item = tuple[Key, bytes]
LINK_MAX = 65535  # names one btrfs inode may have
# An INODE_REF item holds a directory's names of one inode up to this size; more go to
# INODE_EXTREF items (a leaf holds 16 KiB).
REF_ITEM_MAX = 4096


class TreeError(Exception):
    """The entries cannot be written as given (a fault of the tree, not of the disk)."""


class NoSpace(Exception):
    """The data does not fit in the space planned for it."""


@dataclass
class Node:
    """One inode: its entry, its names and (a directory) its children."""

    entry: Entry
    refs: list[tuple[int, int, bytes]] = field(default_factory=list)  # parent, index, name
    children: list[tuple[bytes, int, int]] = field(default_factory=list)  # name, ino, type
    size: int = 0
    nbytes: int = 0
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # offset, bytenr, len
    inline: bytes | None = None


def plan_inodes(entries: Sequence[Entry]) -> dict[int, Node]:
    """Inode number -> Node, numbered in the entries' order (the root first)."""
    if not entries or entries[0].path != "" or entries[0].kind != "dir":
        raise TreeError("the first entry must be the root directory")
    root = fmt.FIRST_FREE
    nodes = {root: Node(entries[0], refs=[(root, 0, b"..")])}
    numbering: Numbering[int] = Numbering(root, TreeError)
    for entry in entries[1:]:
        parent, name, linked = numbering.place(entry)
        if len(name) > 255:
            raise TreeError(f"/{entry.path}: a name is longer than 255 bytes")
        if linked is not None:
            ino = linked
        else:
            if entry.kind not in FILE_TYPES:
                raise TreeError(f"/{entry.path}: btrfs cannot hold a {entry.kind}")
            ino = fmt.FIRST_FREE + len(nodes)
            nodes[ino] = Node(entry)
        numbering.add(entry, ino)
        siblings = nodes[parent].children
        nodes[ino].refs.append((parent, len(siblings) + 2, name))
        siblings.append((name, ino, FILE_TYPES[nodes[ino].entry.kind]))
    return nodes


@dataclass
class DataSpace:
    """Data chunks (logical, physical, length), taken in order; writes gathered."""

    fd: int
    offset: int  # the filesystem's first byte in the image
    chunks: list[tuple[int, int, int]]
    sums: Callable[[bytes, int], bytes]
    chunk: int = 0
    used: int = 0  # bytes taken from the current chunk
    csums: list[tuple[int, bytearray]] = field(default_factory=list)  # logical, sums
    written: int = 0  # bytes stored (zero sectors are not)
    writes: GatheredWrites = field(init=False)

    def __post_init__(self) -> None:
        self.writes = GatheredWrites(self.fd)

    def write(self, data: bytes | memoryview) -> Iterator[tuple[int, int, bool]]:
        """(logical, length, whether it starts a chunk) of each piece of `data`
        (sector-aligned) as placed: no extent may cross into another chunk."""
        view = memoryview(data)
        while view:
            if self.chunk >= len(self.chunks):
                _, physical, length = self.chunks[-1]
                least = -(-(physical + length + len(view)) // (1 << 20))
                raise NoSpace(f"btrfs_write needed at least {least} MiB")
            logical, physical, length = self.chunks[self.chunk]
            take = min(len(view), length - self.used)
            if not take:
                self.chunk, self.used = self.chunk + 1, 0
                continue
            piece = bytes(view[:take])
            self._put(physical + self.used, piece)
            start = logical + self.used
            sums = self.sums(piece, fmt.SECTORSIZE)
            if self.csums and self.used and self._csum_end() == start:
                self.csums[-1][1].extend(sums)
            else:
                self.csums.append((start, bytearray(sums)))
            fresh = not self.used
            self.used += take
            view = view[take:]
            yield start, take, fresh

    def _csum_end(self) -> int:
        start, sums = self.csums[-1]
        return start + len(sums) // 4 * fmt.SECTORSIZE

    def _put(self, physical: int, data: bytes) -> None:
        self.written += len(data)
        self.writes.write(self.offset + physical, data)

    def flush(self) -> None:
        self.writes.flush()


def _contents(entry: Entry) -> tuple[int, Callable[[int, int], bytes], int | None]:
    """(size, read(offset, count), fd to close) of a file entry."""
    if entry.data is not None:
        data = entry.data
        return len(data), lambda at, n: data[at : at + n], None
    if entry.source is None:
        return 0, lambda at, n: b"", None
    fd = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TreeError(f"{entry.source} is no longer a regular file")
    return st.st_size, file_reader(fd), fd


def write_file(node: Node, space: DataSpace) -> None:
    """The file's bytes: inline, or data extents in `space` (zero sectors left out)."""
    size, read, fd = _contents(node.entry)
    try:
        node.size = size
        if size <= fmt.MAX_INLINE:
            if size:
                node.inline = read(0, size)
                node.nbytes = size
            return
        for at in range(0, size, CHUNK):
            chunk = read(at, min(CHUNK, size - at))
            chunk += bytes(-len(chunk) % fmt.SECTORSIZE)
            for first, data in nonzero_runs(chunk, fmt.SECTORSIZE):
                offset = at + first * fmt.SECTORSIZE
                for logical, length, fresh in space.write(data):
                    _add_extent(node.extents, offset, logical, length, fresh)
                    offset += length
                    node.nbytes += length
    finally:
        if fd is not None:
            os.close(fd)


def _add_extent(extents: list[tuple[int, int, int]], offset: int, logical: int,
                length: int, fresh: bool) -> None:
    if extents and not fresh:
        last_offset, last_logical, last_length = extents[-1]
        if (last_offset + last_length == offset and last_logical + last_length == logical
                and last_length + length <= fmt.MAX_EXTENT):
            extents[-1] = (last_offset, last_logical, last_length + length)
            return
    extents.append((offset, logical, length))


def _inode(ino: int, node: Node) -> Inode:
    entry = node.entry
    mtime = STORE_MTIME if entry.mtime is None else entry.mtime
    mode = MODE_TYPES[entry.kind] | (entry.mode & 0o7777)
    size, nbytes, nlink = node.size, node.nbytes, len(node.refs)
    if entry.kind == "dir":
        size = 2 * sum(len(name) for name, _, _ in node.children)
        nlink = 1
    rdev = 0
    if entry.device is not None:
        major, minor = entry.device
        rdev = (major << 20) | minor  # the kernel's internal dev_t, as btrfs stores it
    return Inode(mode, size=size, nbytes=nbytes, nlink=nlink, uid=entry.uid, gid=entry.gid,
                 rdev=rdev, time=mtime)


def _ref_items(ino: int, node: Node, crc: Crc32c) -> Iterator[Item]:
    """INODE_REFs, one item per parent directory; the names beyond REF_ITEM_MAX bytes
    of one (many hard links in one directory) as INODE_EXTREFs (extended_iref)."""
    if len(node.refs) > LINK_MAX:
        raise TreeError(f"/{node.entry.path} has more than {LINK_MAX} hard links, the most "
                        "a btrfs inode holds")
    refs: dict[int, bytearray] = {}
    extrefs: dict[int, list[bytes]] = {}
    for parent, index, name in node.refs:
        ref = fmt.inode_ref(index, name)
        item = refs.setdefault(parent, bytearray())
        if len(item) + len(ref) <= REF_ITEM_MAX:
            item += ref
        else:
            key_hash = crc.raw(parent & 0xFFFFFFFF, name)
            extrefs.setdefault(key_hash, []).append(fmt.inode_extref(parent, index, name))
    for parent in sorted(refs):
        yield (ino, fmt.INODE_REF, parent), bytes(refs[parent])
    for key_hash in sorted(extrefs):
        yield (ino, fmt.INODE_EXTREF, key_hash), b"".join(extrefs[key_hash])


def fs_items(nodes: dict[int, Node], crc: Crc32c, generation: int) -> Iterator[Item]:
    """The fs tree's items, sorted by key."""
    name_hash = crc.name_hash
    for ino, node in nodes.items():
        yield (ino, fmt.INODE_ITEM, 0), fmt.inode_item(_inode(ino, node))
        yield from _ref_items(ino, node, crc)
        if node.children:
            hashed: dict[int, list[bytes]] = {}
            for name, child, kind in node.children:
                location = (child, fmt.INODE_ITEM, 0)
                hashed.setdefault(name_hash(name), []).append(
                    fmt.dir_item(location, generation, kind, name))
            for key_hash in sorted(hashed):
                yield (ino, fmt.DIR_ITEM, key_hash), b"".join(hashed[key_hash])
            for index, (name, child, kind) in enumerate(node.children, 2):
                yield ((ino, fmt.DIR_INDEX, index),
                       fmt.dir_item((child, fmt.INODE_ITEM, 0), generation, kind, name))
        if node.inline is not None:
            yield (ino, fmt.EXTENT_DATA, 0), fmt.inline_extent(generation, node.inline)
        for offset, logical, length in node.extents:
            yield ((ino, fmt.EXTENT_DATA, offset),
                   fmt.regular_extent(generation, logical, length))


def data_extent_items(nodes: dict[int, Node], generation: int) -> list[Item]:
    """EXTENT_ITEMs of every data extent, each with its one inline backref."""
    return [((logical, fmt.EXTENT_ITEM, length),
             fmt.data_extent_item(generation, fmt.FS_TREE, ino, offset))
            for ino, node in nodes.items() for offset, logical, length in node.extents]


def write_data(nodes: dict[int, Node], space: DataSpace) -> None:
    """Every file's data, and every symlink's target, in inode order."""
    for node in nodes.values():
        entry = node.entry
        if entry.kind == "file":
            write_file(node, space)
        elif entry.kind == "symlink":
            target = os.fsencode(entry.link or "")
            if not target:
                raise TreeError(f"/{entry.path} is a symlink with no target")
            node.inline, node.size, node.nbytes = target, len(target), len(target)
    space.flush()

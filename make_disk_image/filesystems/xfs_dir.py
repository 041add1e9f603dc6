"""XFS v5 directories in the form their size needs: short form (in the inode), block
(one block: entries and their hash index), leaf (data blocks and one hash-index block)
and node (data blocks, hash-index leaves under a btree of index nodes: one level up to
254,014 names at 4 KiB directory blocks, two up to some 128 million; free-space index).

A directory's blocks are laid out by logical directory block: data from 0, the hash
index from LEAF_FIRST (32 GiB in), the free index from FREE_FIRST (64 GiB in). Every
block records its own disk address and CRC, so `Layout` says how many blocks each
range needs and `Layout.encode` builds them once the caller has placed them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.xfs_format import Geometry, da_hash, with_crc

# File types in directory entries.
FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_SYMLINK = 1, 2, 3, 4, 5, 6, 7
DATA_HEADER = 64  # a data block's header with its free-space table
DATA_BLOCK_MAGIC, DATA_MAGIC, FREE_MAGIC = 0x58444233, 0x58444433, 0x58444633
LEAF1_MAGIC, LEAFN_MAGIC, NODE_MAGIC = 0x3DF1, 0x3DFF, 0x3EBE
DATA_CRC_OFFSET = 4
DA_CRC_OFFSET = 12
LEAF_HEADER = 64
NODE_HEADER = 64
FREE_HEADER = 64
MAX_DEPTH = 5  # the kernel's deepest directory index: nodes and the leaves under them


class TooManyNames(ValueError):
    """A directory needs a hash index deeper than the kernel reads."""


@dataclass(frozen=True)
class Child:
    """One entry of a directory: its name, inode and file type (FT_*)."""

    name: bytes
    ino: int
    ftype: int

    @property
    def size(self) -> int:
        return entry_size(self.name)


def entry_size(name: bytes) -> int:
    """A data entry's bytes: inode, name length, name, type, tag, to 8 bytes."""
    return -(-(8 + 1 + len(name) + 1 + 2) // 8) * 8


def _entry(child: Child, offset: int) -> bytes:
    size = entry_size(child.name)
    head = struct.pack(">QB", child.ino, len(child.name)) + child.name + bytes([child.ftype])
    return head.ljust(size - 2, b"\0") + struct.pack(">H", offset)


def _unused(offset: int, length: int) -> bytes:
    return struct.pack(">HH", 0xFFFF, length).ljust(length - 2, b"\0") + \
        struct.pack(">H", offset)


def short_form(parent: int, children: Sequence[Child]) -> bytes:
    """The in-inode form (every inode number under 2^32)."""
    out = [struct.pack(">BBI", len(children), 0, parent)]
    offset = DATA_HEADER + entry_size(b".") + entry_size(b"..")
    for child in children:
        out.append(struct.pack(">BH", len(child.name), offset) + child.name
                   + bytes([child.ftype]) + struct.pack(">I", child.ino))
        offset += child.size
    return b"".join(out)


Placed = Callable[[int], int]  # logical directory block -> disk address (sectors)


@dataclass(frozen=True)
class Layout:
    """A directory's blocks by range: `data` blocks from 0, `leaf` from LEAF_FIRST,
    `free` from FREE_FIRST; `form` is "block", "leaf" or "node"."""

    form: str
    data: list[list[tuple[Child, int]]]  # each data block's entries and their offsets
    leaf: int
    free: int
    hashes: list[tuple[int, int]]  # (hash, address in 8-byte units), sorted

    def ranges(self, geometry: Geometry) -> list[tuple[int, int]]:
        """(first logical block, block count) of each range in use."""
        spaced = [(0, len(self.data))]
        if self.leaf:
            spaced.append((leaf_first(geometry), self.leaf))
        if self.free:
            spaced.append((free_first(geometry), self.free))
        return spaced

    def encode(self, geometry: Geometry, crc: Crc32c, owner: int,
               placed: Placed) -> list[tuple[int, bytes]]:
        """Each block as (logical block, bytes)."""
        out = []
        if self.form == "block":
            return [(0, _block(geometry, crc, owner, placed(0), self))]
        bests = []
        for index, entries in enumerate(self.data):
            block, best = _data_block(geometry, crc, owner, placed(index), entries)
            out.append((index, block))
            bests.append(best)
        first = leaf_first(geometry)
        if self.form == "leaf":
            out.append((first, _leaf1(geometry, crc, owner, placed(first), self.hashes,
                                      bests)))
            return out
        out += _node_blocks(geometry, crc, owner, placed, self)
        per_free = (geometry.dirblksize - FREE_HEADER) // 2
        for index in range(self.free):
            logical = free_first(geometry) + index
            part = bests[index * per_free : (index + 1) * per_free]
            header = _da3_header(geometry, FREE_MAGIC, placed(logical), owner) + \
                struct.pack(">iiiI", index * per_free, len(part), len(part), 0)
            body = header + b"".join(struct.pack(">H", b) for b in part)
            out.append((logical, with_crc(body.ljust(geometry.dirblksize, b"\0"),
                                          DATA_CRC_OFFSET, crc)))
        return out


def leaf_first(geometry: Geometry) -> int:
    return (32 << 30) // geometry.dirblksize


def free_first(geometry: Geometry) -> int:
    return (64 << 30) // geometry.dirblksize


def _address(geometry: Geometry, block: int, offset: int) -> int:
    return (block * geometry.dirblksize + offset) >> 3


def _blk_header(magic: int, disk: int, geometry: Geometry, owner: int) -> bytes:
    return struct.pack(">IIQQ16sQ", magic, 0, disk, 0, geometry.uuid, owner)


def _da3_header(geometry: Geometry, magic: int, disk: int, owner: int) -> bytes:
    return _blk_header(magic, disk, geometry, owner)


def _da_info(geometry: Geometry, magic: int, disk: int, owner: int, forw: int = 0,
             back: int = 0) -> bytes:
    return struct.pack(">IIHHIQQ16sQ", forw, back, magic, 0, 0, disk, 0, geometry.uuid,
                       owner)


def _fill(entries: Sequence[tuple[Child, int]], end: int) -> tuple[bytes, int, int]:
    """Entries from the data header on, and the unused space up to `end`: (bytes,
    offset of the free space, its length)."""
    body = b"".join(_entry(child, offset) for child, offset in entries)
    free_at = DATA_HEADER + len(body)
    length = end - free_at
    return (body + _unused(free_at, length) if length else body), free_at, length


def _bestfree(free_at: int, length: int) -> bytes:
    first = struct.pack(">HH", free_at, length) if length else bytes(4)
    return first + bytes(8) + bytes(4)  # two more (none), then padding


def _block(geometry: Geometry, crc: Crc32c, owner: int, disk: int, layout: Layout) -> bytes:
    size = geometry.dirblksize
    tail = struct.pack(">II", len(layout.hashes), 0)
    index = b"".join(struct.pack(">II", h, a) for h, a in layout.hashes)
    body, free_at, length = _fill(layout.data[0], size - len(index) - len(tail))
    header = _blk_header(DATA_BLOCK_MAGIC, disk, geometry, owner) + _bestfree(free_at, length)
    return with_crc(header + body + index + tail, DATA_CRC_OFFSET, crc)


def _data_block(geometry: Geometry, crc: Crc32c, owner: int, disk: int,
                entries: Sequence[tuple[Child, int]]) -> tuple[bytes, int]:
    body, free_at, length = _fill(entries, geometry.dirblksize)
    header = _blk_header(DATA_MAGIC, disk, geometry, owner) + _bestfree(free_at, length)
    return with_crc(header + body, DATA_CRC_OFFSET, crc), length


def _leaf1(geometry: Geometry, crc: Crc32c, owner: int, disk: int,
           hashes: Sequence[tuple[int, int]], bests: Sequence[int]) -> bytes:
    head = _da_info(geometry, LEAF1_MAGIC, disk, owner) + struct.pack(">HHI", len(hashes),
                                                                         0, 0)
    index = b"".join(struct.pack(">II", h, a) for h, a in hashes)
    tail = b"".join(struct.pack(">H", b) for b in bests) + struct.pack(">I", len(bests))
    block = (head + index).ljust(geometry.dirblksize - len(tail), b"\0") + tail
    return with_crc(block, DA_CRC_OFFSET, crc)


def _leaf_cuts(hashes: Sequence[tuple[int, int]], count: int) -> list[int]:
    """Where `count` hash-index leaves start (and the end): as even as can be, but equal
    hashes stay in one leaf (xfs_repair wants each leaf's hashes above the last's)."""
    cuts = [0]
    for index in range(1, count):
        cut = max(cuts[-1], len(hashes) * index // count)
        while 0 < cut < len(hashes) and hashes[cut - 1][0] == hashes[cut][0]:
            cut += 1
        cuts.append(cut)
    return [*cuts, len(hashes)]


def _leaf_count(geometry: Geometry, names: int) -> int:
    """Hash-index leaves of a node-form directory of `names` (. and .. included); at
    least two: xfs_repair refuses an index node over a single leaf."""
    return max(2, -(-names // ((geometry.dirblksize - LEAF_HEADER) // 8)))


def _index_shape(geometry: Geometry, leaves: int) -> list[int]:
    """The index nodes each level above the leaves needs, the lowest level first and
    the root (one node) last."""
    per_node = (geometry.dirblksize - NODE_HEADER) // 8
    shape = [-(-leaves // per_node)]
    while shape[-1] > 1:
        shape.append(-(-shape[-1] // per_node))
    return shape


def _node(geometry: Geometry, crc: Crc32c, owner: int, disk: int, level: int,
          entries: Sequence[tuple[int, int]], forw: int, back: int) -> bytes:
    """An index node of `level` (1: over leaves): (largest hash, logical block) each."""
    body = _da_info(geometry, NODE_MAGIC, disk, owner, forw, back) + \
        struct.pack(">HHI", len(entries), level, 0) + \
        b"".join(struct.pack(">II", h, b) for h, b in entries)
    return with_crc(body.ljust(geometry.dirblksize, b"\0"), DA_CRC_OFFSET, crc)


def _node_blocks(geometry: Geometry, crc: Crc32c, owner: int, placed: Placed,
                 layout: Layout) -> list[tuple[int, bytes]]:
    """The hash index of a node-form directory: the root node at the leaf range's
    start, the lower nodes (level by level, the higher first) after it, then the
    leaves; each level's blocks linked to their siblings."""
    per_leaf = (geometry.dirblksize - LEAF_HEADER) // 8
    count = _leaf_count(geometry, len(layout.hashes))
    shape = _index_shape(geometry, count)
    firsts, at = {}, leaf_first(geometry)
    for level in range(len(shape), 0, -1):
        firsts[level] = at
        at += shape[level - 1]
    cuts = _leaf_cuts(layout.hashes, count)
    out, children = [], []
    for index in range(count):
        part = layout.hashes[cuts[index] : cuts[index + 1]]
        if not part or len(part) > per_leaf:
            raise ValueError(f"a directory of {len(layout.hashes)} names has too many "
                             "equal hashes")
        logical = at + index
        forw = logical + 1 if index + 1 < count else 0
        back = logical - 1 if index else 0
        head = _da_info(geometry, LEAFN_MAGIC, placed(logical), owner, forw, back) + \
            struct.pack(">HHI", len(part), 0, 0)
        body = head + b"".join(struct.pack(">II", h, a) for h, a in part)
        out.append((logical, with_crc(body.ljust(geometry.dirblksize, b"\0"),
                                      DA_CRC_OFFSET, crc)))
        children.append((part[-1][0], logical))
    for level, nodes in enumerate(shape, start=1):
        above = []
        for index in range(nodes):
            group = children[len(children) * index // nodes :
                             len(children) * (index + 1) // nodes]
            logical = firsts[level] + index
            forw = logical + 1 if index + 1 < nodes else 0
            back = logical - 1 if index else 0
            out.append((logical, _node(geometry, crc, owner, placed(logical), level, group,
                                       forw, back)))
            above.append((group[-1][0], logical))
        children = above
    return sorted(out)


def layout(geometry: Geometry, dir_ino: int, parent: int,
           children: Sequence[Child]) -> Layout:
    """The smallest form beyond short form that holds `children`."""
    size = geometry.dirblksize
    dots = [Child(b".", dir_ino, FT_DIR), Child(b"..", parent, FT_DIR)]
    every = dots + list(children)
    # One block, its hash index at its end?
    used = DATA_HEADER + sum(c.size for c in every) + 8 * len(every) + 8
    if used <= size:
        placed, offset = [], DATA_HEADER
        for child in every:
            placed.append((child, offset))
            offset += child.size
        return Layout("block", [placed], 0, 0, _hashes(geometry, [placed]))
    blocks: list[list[tuple[Child, int]]] = [[]]
    offset = DATA_HEADER
    for child in every:
        need = child.size
        if offset + need > size:
            blocks.append([])
            offset = DATA_HEADER
        blocks[-1].append((child, offset))
        offset += need
    hashes = _hashes(geometry, blocks)
    if LEAF_HEADER + 8 * len(hashes) + 2 * len(blocks) + 4 <= size:
        return Layout("leaf", blocks, 1, 0, hashes)
    leaves = _leaf_count(geometry, len(hashes))
    shape = _index_shape(geometry, leaves)
    if len(shape) >= MAX_DEPTH:
        raise TooManyNames(f"a directory of {len(children)} entries: more than "
                           f"{MAX_DEPTH - 1} levels of hash index hold")
    per_free = (size - FREE_HEADER) // 2
    return Layout("node", blocks, leaves + sum(shape), -(-len(blocks) // per_free), hashes)


def _hashes(geometry: Geometry,
            blocks: Sequence[Sequence[tuple[Child, int]]]) -> list[tuple[int, int]]:
    return sorted((da_hash(child.name), _address(geometry, index, offset))
                  for index, entries in enumerate(blocks) for child, offset in entries)

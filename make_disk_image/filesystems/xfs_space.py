"""The free space and AG headers of an empty xfs that mkfs.xfs made, taken linearly and
rewritten once the tree is in (AGF, AGI, their btrees, the superblock's counters).

Each AG's largest free extent is used from its start; the AG's other free extents
(mkfs leaves a few blocks before the root inode chunk) stay free as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from make_disk_image.filesystems import xfs_btree as btree
from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.xfs_format import SB_CRC_OFFSET, Geometry, with_crc

AGF_MAGIC, AGI_MAGIC = 0x58414746, 0x58414749
AGF_CRC_OFFSET, AGI_CRC_OFFSET = 216, 312


class NoSpace(Exception):
    """The filesystem has too few free blocks for the tree."""


@dataclass
class AgSpace:
    agno: int
    kept: list[tuple[int, int]]  # free extents left as they are
    start: int  # the used extent's first block
    end: int  # its end
    next: int  # its first block not yet taken


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


class Space:
    """Blocks taken in order, AG after AG, from an image at byte `base`."""

    def __init__(self, f: BinaryIO, base: int, geometry: Geometry) -> None:
        self.f, self.base, self.geometry = f, base, geometry
        self.ags: list[AgSpace] = []
        for agno in range(geometry.agcount):
            agf = self.header(agno, 1)
            (magic,) = struct.unpack_from(">I", agf, 0)
            bno_root, bno_level = struct.unpack_from(">I", agf, 16)[0], \
                struct.unpack_from(">I", agf, 28)[0]
            if magic != AGF_MAGIC or bno_level != 1:
                raise ValueError(f"AG {agno}: not the AGF of an empty xfs")
            leaf = self.block(agno, bno_root)
            (count,) = struct.unpack_from(">H", leaf, 6)
            free = [struct.unpack_from(">II", leaf, btree.BLOCK_HEADER + 8 * i)
                    for i in range(count)]
            largest = max(free, key=lambda ext: ext[1])
            free.remove(largest)
            self.ags.append(AgSpace(agno, free, largest[0], sum(largest),
                                    largest[0]))
        self.current = 0
        self.taken = 0

    def offset(self, agno: int, agbno: int) -> int:
        g = self.geometry
        return self.base + (agno * g.agblocks + agbno) * g.blocksize

    def header(self, agno: int, sector: int) -> bytes:
        g = self.geometry
        return _read_at(self.f, self.offset(agno, 0) + sector * g.sectsize, g.sectsize)

    def block(self, agno: int, agbno: int) -> bytes:
        return _read_at(self.f, self.offset(agno, agbno), self.geometry.blocksize)

    def write(self, agno: int, agbno: int, data: bytes) -> None:
        self.f.seek(self.offset(agno, agbno))
        self.f.write(data)

    def room(self, agno: int, align: int = 1) -> int:
        """The blocks in a row AG `agno` still has from its next `align`ed block."""
        ag = self.ags[agno]
        return max(0, ag.end - -(-ag.next // align) * align)

    def take(self, count: int, *, align: int = 1, agno: int | None = None
             ) -> tuple[int, int, int]:
        """Up to `count` blocks in a row: (AG, first block, count). With `agno`, only
        there and all `count` of them."""
        while True:
            ag = self.ags[self.current if agno is None else agno]
            first = -(-ag.next // align) * align
            got = min(count, ag.end - first)
            if got > 0 and (agno is None or got == count):
                if first > ag.next:
                    # An alignment gap stays free: an extent of its own.
                    ag.kept.append((ag.next, first - ag.next))
                ag.next = first + got
                self.taken += got
                return ag.agno, first, got
            if agno is not None or self.current + 1 == len(self.ags):
                raise NoSpace(f"no {count} free blocks in a row left")
            self.current += 1

    def write_agi(self, agno: int, crc: Crc32c,
                  inodes: Callable[[Callable[[], int]], dict[str, int]]) -> None:
        """Rewrite AG `agno`'s AGI: `inodes` builds the inode btrees with the blocks it
        is given (the old roots first) and returns the AGI's fields."""
        g = self.geometry
        agi = bytearray(self.header(agno, 2))
        old_roots: list[int] = [struct.unpack_from(">I", agi, 20)[0],
                                struct.unpack_from(">I", agi, 328)[0]]

        def take_block() -> int:
            if old_roots:
                return old_roots.pop(0)
            return self.take(1, agno=agno)[1]

        fields = inodes(take_block)
        for name, offset in (("count", 16), ("root", 20), ("level", 24),
                             ("freecount", 28), ("newino", 32), ("free_root", 328),
                             ("free_level", 332), ("ino_blocks", 336),
                             ("fino_blocks", 340)):
            struct.pack_into(">I", agi, offset, fields[name])
        self.f.seek(self.offset(agno, 0) + 2 * g.sectsize)
        self.f.write(with_crc(agi, AGI_CRC_OFFSET, crc))

    def inode_records(self, agno: int) -> list[tuple[int, int]]:
        """(first AG inode, free mask) of each chunk mkfs made (one-level inobt)."""
        agi = self.header(agno, 2)
        root, level = struct.unpack_from(">II", agi, 20)
        if level != 1:
            raise ValueError(f"AG {agno}: not the AGI of an empty xfs")
        leaf = self.block(agno, root)
        (count,) = struct.unpack_from(">H", leaf, 6)
        return [(rec[0], rec[4]) for rec in
                (struct.unpack_from(">IHBBQ", leaf, btree.BLOCK_HEADER + 16 * i)
                 for i in range(count))]

    def finish_ag(self, agno: int, crc: Crc32c) -> None:
        """Rewrite AG `agno`'s free-space btrees and AGF."""
        g, ag = self.geometry, self.ags[agno]
        agf = bytearray(self.header(agno, 1))
        free = sorted(ag.kept + ([(ag.next, ag.end - ag.next)] if ag.end > ag.next else []))
        by_size = sorted(free, key=lambda ext: (ext[1], ext[0]))
        # A handful of free extents an AG: each btree stays the one leaf mkfs made.
        assert len(free) <= (g.blocksize - btree.BLOCK_HEADER) // 8
        for magic, root_at, records in ((btree.BNOBT, 16, free), (btree.CNTBT, 20, by_size)):
            root: int = struct.unpack_from(">I", agf, root_at)[0]
            built = btree.build(g, crc, magic=magic, agno=agno,
                                records=[struct.pack(">II", *ext) for ext in records],
                                key_size=8, take=_same(root))
            self.write(agno, root, built.blocks[root])
        struct.pack_into(">II", agf, 52, sum(n for _, n in free),
                         max((n for _, n in free), default=0))
        self.f.seek(self.offset(agno, 0) + g.sectsize)
        self.f.write(with_crc(agf, AGF_CRC_OFFSET, crc))


def _same(block: int) -> Callable[[], int]:
    def take() -> int:
        return block
    return take


def update_superblock(f: BinaryIO, base: int, crc: Crc32c, *, icount: int, ifree: int,
                      fdblocks: int) -> None:
    f.seek(base)
    sb = bytearray(f.read(512))
    struct.pack_into(">QQQ", sb, 128, icount, ifree, fdblocks)
    f.seek(base)
    f.write(with_crc(sb, SB_CRC_OFFSET, crc))

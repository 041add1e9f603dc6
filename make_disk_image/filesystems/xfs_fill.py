"""Filling an empty xfs (mkfs.xfs's, untouched: headers, AGs, log, features) with the
entries, in one pass: the engine's own writer (issue 22), which filesystems/xfs.py runs.

Inodes are numbered in the entries' order: the root is mkfs' root inode, the rest take
the free inodes of mkfs' first chunk and then new 64-inode chunks in AG 0 (in the
next AGs once AG 0 is full). Blocks are taken in order from each AG's largest free
extent (xfs_space): inode chunks and inode btree blocks first, then each entry's
blocks as it comes. Every time is the entry's own (or the store's, 1), so the same
entries give the same bytes.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from make_disk_image.filesystems import xfs_bmap as bmap
from make_disk_image.filesystems import xfs_btree as btree
from make_disk_image.filesystems import xfs_dir as xdir
from make_disk_image.filesystems import xfs_format as fmt
from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.filesystems.tree_order import split
from make_disk_image.filesystems.xfs_bmap import DataFork
from make_disk_image.filesystems.xfs_space import NoSpace, Space, update_superblock
from make_disk_image.models import Entry

STORE_MTIME = 1
CHUNK = 64  # inodes per chunk
COPY_BYTES = 8 << 20  # copied at a time where copy_file_range cannot
MAX_LINK = 1024
SYMLINK_MAGIC = 0x58534C4D
SYMLINK_HEADER = 56
SYMLINK_CRC_OFFSET = 12
_MODES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO}
_TYPES = {"file": xdir.FT_REG, "dir": xdir.FT_DIR, "symlink": xdir.FT_SYMLINK,
          "chardev": xdir.FT_CHR, "blockdev": xdir.FT_BLK, "fifo": xdir.FT_FIFO}

__all__ = ["FillError", "NoSpace", "fill_xfs"]


class FillError(Exception):
    """The entries cannot be written as given (a fault of the tree)."""


@dataclass
class Plan:
    inos: dict[str, int] = field(default_factory=dict)  # path -> inode
    kinds: dict[int, Entry] = field(default_factory=dict)  # inode -> its entry
    children: dict[str, list[xdir.Child]] = field(default_factory=dict)
    links: dict[int, int] = field(default_factory=dict)  # inode -> names
    subdirs: dict[str, int] = field(default_factory=dict)


def _plan(entries: Sequence[Entry], free: list[int], root: int) -> Plan:
    plan = Plan()
    spare = iter(free)
    # Inodes first: a hard link may come before the name it shares an inode with.
    for entry in entries:
        if entry.kind != "hardlink":
            ino = root if entry.path == "" else next(spare)
            plan.inos[entry.path] = ino
            plan.kinds[ino] = entry
    for entry in entries:
        if entry.kind == "hardlink":
            assert entry.link is not None
            if entry.link not in plan.inos or plan.kinds[plan.inos[entry.link]].kind == "dir":
                raise FillError(f"/{entry.path}: a hard link to /{entry.link}, which is "
                                "no file in the tree")
            plan.inos[entry.path] = plan.inos[entry.link]
        ino = plan.inos[entry.path]
        plan.links[ino] = plan.links.get(ino, 0) + 1
        if entry.path:
            parent, name = split(entry.path)
            kind = plan.kinds[ino].kind
            plan.children.setdefault(parent, []).append(xdir.Child(name, ino, _TYPES[kind]))
            if kind == "dir":
                plan.subdirs[parent] = plan.subdirs.get(parent, 0) + 1
    return plan


@dataclass
class Writer:
    f: BinaryIO
    space: Space
    geometry: fmt.Geometry
    crc: Crc32c

    def put(self, agno: int, agbno: int, data: bytes) -> None:
        size = self.geometry.blocksize
        self.space.write(agno, agbno, data.ljust(-(-len(data) // size) * size, b"\0"))

    def take_run(self, blocks: int) -> list[tuple[int, int, int]]:
        runs, left = [], blocks
        while left:
            agno, agbno, got = self.space.take(min(left, btree.MAX_EXTENT))
            runs.append((agno, agbno, got))
            left -= got
        return runs

    def mapped(self, ino: int, runs: list[tuple[int, int, int, int]], size: int,
               blocks: int) -> DataFork:
        """The data fork mapping (file block, AG, AG block, count) runs: in the inode,
        or an extent btree past 21 extents (its blocks counted in the inode's)."""
        g = self.geometry
        records = [btree.extent_record(o, btree.fsblock(g, a, b), n) for o, a, b, n in runs]

        def take() -> tuple[int, int]:
            agno, agbno, _ = self.space.take(1)
            return btree.fsblock(g, agno, agbno), btree.daddr(g, agno, agbno)

        def write(fsblock: int, data: bytes) -> None:
            self.put(fsblock >> g.agblklog, fsblock & ((1 << g.agblklog) - 1), data)

        form, fork, taken = bmap.data_fork(g, self.crc, ino, records, take, write)
        return DataFork(form, fork, size, blocks + taken, len(records))

    def place(self, blocks: int) -> list[tuple[int, int, int, int]]:
        """(file block, AG, AG block, count) runs of `blocks` new blocks."""
        runs, at = [], 0
        for agno, agbno, got in self.take_run(blocks):
            runs.append((at, agno, agbno, got))
            at += got
        return runs

    def file(self, ino: int, entry: Entry) -> DataFork:
        """A regular file's data fork, its bytes written."""
        size_of = self.geometry.blocksize
        if entry.data is not None:
            length = len(entry.data)
            runs = self.place(-(-length // size_of))
            for at, agno, agbno, got in runs:
                self.put(agno, agbno, entry.data[at * size_of : (at + got) * size_of])
        else:
            assert entry.source is not None
            src = os.open(entry.source, os.O_RDONLY)
            try:
                length = os.fstat(src).st_size
                runs = self.place(-(-length // size_of))
                for at, agno, agbno, got in runs:
                    count = min(got * size_of, length - at * size_of)
                    _copy(src, at * size_of, self.f.fileno(),
                          self.space.offset(agno, agbno), count)
            finally:
                os.close(src)
            if length % size_of:
                # The last block's tail: zeros, whatever the image held there.
                _, agno, agbno, got = runs[-1]
                os.pwrite(self.f.fileno(), bytes(size_of - length % size_of),
                          self.space.offset(agno, agbno) + length - runs[-1][0] * size_of)
        return self.mapped(ino, runs, length, -(-length // size_of))

    def symlink(self, ino: int, target: bytes) -> DataFork:
        if len(target) > MAX_LINK:
            raise FillError(f"a symlink target of {len(target)} bytes (xfs: {MAX_LINK})")
        if len(target) <= self.geometry.literal_size:
            return DataFork(fmt.FMT_LOCAL, target, len(target))
        agno, agbno, _ = self.space.take(1)
        header = struct.pack(">IIII16sQQQ", SYMLINK_MAGIC, 0, len(target), 0,
                             self.geometry.uuid, ino, btree.daddr(self.geometry, agno, agbno),
                             0)
        block = (header + target).ljust(self.geometry.blocksize, b"\0")
        self.put(agno, agbno, fmt.with_crc(block, SYMLINK_CRC_OFFSET, self.crc))
        return self.mapped(ino, [(0, agno, agbno, 1)], len(target), 1)

    def directory(self, ino: int, parent: int,
                  children: list[xdir.Child]) -> DataFork:
        g = self.geometry
        # Short form counts its entries in a byte.
        short = xdir.short_form(parent, children) if len(children) < 256 else b""
        if short and len(short) <= g.literal_size:
            return DataFork(fmt.FMT_LOCAL, short, len(short))
        layout = xdir.layout(g, ino, parent, children)
        runs, where = [], {}
        for first, count in layout.ranges(g):
            at = first
            for agno, agbno, got in self.take_run(count):
                runs.append((at, agno, agbno, got))
                for index in range(got):
                    where[at + index] = (agno, agbno + index)
                at += got
        blocks = layout.encode(g, self.crc, ino,
                               lambda logical: btree.daddr(g, *where[logical]))
        for logical, data in blocks:
            self.put(*where[logical], data)
        return self.mapped(ino, runs, len(layout.data) * g.dirblksize, len(where))


def _copy(src: int, src_at: int, dst: int, dst_at: int, count: int) -> None:
    """`count` bytes of `src` from `src_at` to `dst` at `dst_at`: in the kernel where it
    can (copy_file_range), else a piece at a time (never a large file's bytes whole)."""
    while count:
        try:
            done = os.copy_file_range(src, dst, count, src_at, dst_at)
        except OSError:
            done = os.pwrite(dst, os.pread(src, min(count, COPY_BYTES), src_at), dst_at)
        if not done:
            raise OSError(f"a file shrank while being copied ({count} bytes left)")
        count, src_at, dst_at = count - done, src_at + done, dst_at + done


def free_inode(geometry: fmt.Geometry, crc: Crc32c, ino: int) -> bytes:
    """An unused inode as mkfs writes them: magic, version, no next, number, UUID."""
    core = bytearray(geometry.inodesize)
    struct.pack_into(">HHB", core, 0, fmt.INODE_MAGIC, 0, 3)
    struct.pack_into(">I", core, 96, fmt.NULL_AGINO)
    struct.pack_into(">Q16s", core, 152, ino, geometry.uuid)
    return fmt.with_crc(core, fmt.INODE_CRC_OFFSET, crc)


def _fixed_times(g: fmt.Geometry, crc: Crc32c, chunk: bytes, used: int) -> bytearray:
    """mkfs' chunk with its inodes' times (the realtime inodes': mkfs' clock) fixed."""
    out = bytearray(chunk)
    stamp = fmt.timestamp(STORE_MTIME, bigtime=g.bigtime)
    for index in range(CHUNK):
        if used >> index & 1:
            at = index * g.inodesize
            inode = bytearray(out[at : at + g.inodesize])
            for field_at in (32, 40, 48, 144):
                inode[field_at : field_at + 8] = stamp
            out[at : at + g.inodesize] = fmt.with_crc(inode, fmt.INODE_CRC_OFFSET, crc)
    return out


# sb_features_ro_compat: free inode btree, btree block counts in the AGI; reverse maps.
RO_COMPAT_NEEDED = 0b1001
RO_COMPAT_RMAPBT = 0b10
INCOMPAT_KNOWN = 0b1111  # ftype, sparse inodes, metadata UUID, bigtime


def unsupported(image: Path) -> str | None:
    """What of the xfs at the start of `image` the writer cannot fill, or None."""
    with image.open("rb") as f:
        g = fmt.Geometry.parse(f.read(512))
    if g.features_ro_compat & RO_COMPAT_NEEDED != RO_COMPAT_NEEDED:
        return "a filesystem without finobt or inobtcount"
    if g.features_ro_compat & RO_COMPAT_RMAPBT:
        return "reverse mapping btrees (rmapbt)"
    if g.features_incompat & ~INCOMPAT_KNOWN or not g.features_incompat & fmt.INCOMPAT_FTYPE:
        return f"incompatible features {g.features_incompat:#x}"
    if g.dirblklog or g.inodesize < 512:
        return "directory blocks larger than blocks, or inodes under 512 bytes"
    return None


def fill_xfs(image: Path, base: int, entries: Sequence[Entry], *, crc: Crc32c) -> int:
    """Write `entries` (parents first, the root first) into the empty xfs at byte `base`
    of `image`; returns the blocks taken. Raises FillError, NoSpace."""
    # Unbuffered: file data goes in through the descriptor (copy_file_range).
    with image.open("r+b", buffering=0) as f:
        f.seek(base)
        geometry = fmt.Geometry.parse(f.read(512))
        space = Space(f, base, geometry)
        return _fill(f, base, geometry, space, entries, crc)


def _fill(f: BinaryIO, base: int, g: fmt.Geometry, space: Space, entries: Sequence[Entry],
          crc: Crc32c) -> int:
    # AG 0's inode numbers are its AG inode numbers.
    mkfs_chunks = dict(space.inode_records(0))
    records = dict(mkfs_chunks)  # first inode number of each chunk -> its free mask
    free = [start + i for start, mask in sorted(records.items()) for i in range(CHUNK)
            if mask >> i & 1]
    need = sum(1 for e in entries if e.kind != "hardlink" and e.path) - len(free)
    for start in _new_chunks(space, g, max(0, -(-need // CHUNK))):
        records[start] = (1 << CHUNK) - 1
        free += range(start, start + CHUNK)
    if max(free, default=0) >= 1 << 32:
        # Short-form directories would need 8-byte inode numbers, which the writer
        # does not write; only AGs past 2^32 inode numbers (filesystems of TiBs) get here.
        raise FillError(f"{len(free)} inodes: more than fit under 32-bit inode numbers "
                        "(the writer's limit)")
    if not entries or entries[0].path != "":
        raise FillError("the entries do not start with the root directory")
    plan = _plan(entries, free, g.rootino)
    used = set(plan.kinds)
    for start in records:
        for i in range(CHUNK):
            if start + i in used:
                records[start] &= ~(1 << i)
    _write_inode_btrees(space, g, crc, records)
    chunks: dict[int, bytearray] = {}
    for start in records:
        if start in mkfs_chunks:
            f.seek(base + g.ino_offset(start))
            chunks[start] = _fixed_times(g, crc, f.read(CHUNK * g.inodesize),
                                         ~mkfs_chunks[start])
        else:
            chunks[start] = bytearray(b"".join(free_inode(g, crc, start + i)
                                               for i in range(CHUNK)))
    writer = Writer(f, space, g, crc)
    for path, ino in plan.inos.items():
        entry = plan.kinds[ino]
        if entry.path != path:
            continue  # a hard link's second name
        try:
            inode = _inode(writer, plan, entry, ino)
        except (FillError, ValueError) as exc:
            # ValueError: a directory or extent btree past what the writer builds.
            raise FillError(f"/{entry.path}: {exc}") from exc
        start = ino & ~(CHUNK - 1)
        at = (ino - start) * g.inodesize
        chunks[start][at : at + g.inodesize] = inode.encode(g, crc)
    for start, data in chunks.items():
        f.seek(base + g.ino_offset(start))
        f.write(data)
    for agno in range(g.agcount):
        space.finish_ag(agno, crc)
    new_inodes = CHUNK * (len(records) - len(mkfs_chunks))
    free_count = sum(bin(mask).count("1") for mask in records.values())
    update_superblock(f, base, crc, icount=g.icount + new_inodes, ifree=free_count,
                      fdblocks=g.fdblocks - space.taken)
    return space.taken


def _inode(writer: Writer, plan: Plan, entry: Entry, ino: int) -> fmt.Inode:
    kind = entry.kind
    nlink = plan.links[ino]
    if kind == "file":
        fork = writer.file(ino, entry)
    elif kind == "symlink":
        assert entry.link is not None
        fork = writer.symlink(ino, os.fsencode(entry.link))
    elif kind == "dir":
        parent = plan.inos[split(entry.path)[0]] if entry.path else ino
        fork = writer.directory(ino, parent, plan.children.get(entry.path, []))
        nlink = 2 + plan.subdirs.get(entry.path, 0)
    elif kind in ("chardev", "blockdev"):
        assert entry.device is not None
        major, minor = entry.device
        fork = DataFork(fmt.FMT_DEV, struct.pack(">I", major << 18 | minor))
    elif kind == "fifo":
        fork = DataFork(fmt.FMT_DEV, struct.pack(">I", 0))
    else:
        raise FillError(f"xfs cannot hold a {kind}")
    when = (entry.mtime if entry.mtime is not None else STORE_MTIME, 0)
    return fmt.Inode(ino=ino, mode=_MODES[kind] | (entry.mode & 0o7777), fmt=fork.form,
                     nlink=nlink, uid=entry.uid, gid=entry.gid, size=fork.size,
                     nblocks=fork.blocks, nextents=fork.extents, fork=fork.data, atime=when,
                     mtime=when, ctime=when, crtime=when)


def _new_chunks(space: Space, g: fmt.Geometry, count: int) -> list[int]:
    """`count` new 64-inode chunks (their first inode numbers): AG 0 first, as the
    closer inodes are to the root the better; then AG 1 and on once AG 0 is full (a
    tree of many small entries in a small filesystem)."""
    chunk_blocks = CHUNK * g.inodesize // g.blocksize
    starts: list[int] = []
    agno, in_ag = 0, len(space.inode_records(0))
    per_leaf = (g.blocksize - btree.BLOCK_HEADER) // 16  # inobt records a leaf holds
    while len(starts) < count:
        # Room stays for the AG's inode btrees (two, their leaves at least half full).
        btree_blocks = 2 * (-(-(in_ag + 1) // (per_leaf // 2)) + 2)
        if space.room(agno, g.inoalignmt) < chunk_blocks + btree_blocks:
            if agno + 1 == g.agcount:
                raise NoSpace(f"no room for {count - len(starts)} more inode chunks")
            agno, in_ag = agno + 1, 0
            continue
        _, agbno, _ = space.take(chunk_blocks, align=g.inoalignmt, agno=agno)
        starts.append(g.ino(agno, agbno, 0))
        in_ag += 1
    return starts


def _write_inode_btrees(space: Space, g: fmt.Geometry, crc: Crc32c,
                        records: dict[int, int]) -> None:
    """Each AG's inode btrees (AG 0's always: mkfs' root chunk is there) and AGI."""
    by_ag: dict[int, list[tuple[int, int]]] = {0: []}
    for start, mask in sorted(records.items()):
        agno, agbno, index = g.ino_place(start)
        by_ag.setdefault(agno, []).append(((agbno << g.inopblog) | index, mask))
    for agno, ordered in by_ag.items():
        space.write_agi(agno, crc, _ag_inodes(space, g, crc, agno, ordered))


def _ag_inodes(space: Space, g: fmt.Geometry, crc: Crc32c, agno: int,
               ordered: list[tuple[int, int]]) -> Callable[[Callable[[], int]], dict[str, int]]:
    """The AGI fields of one AG's chunks, (AG inode, free mask) in order, their inobt
    and finobt written with the blocks `take` gives."""
    def inodes(take: Callable[[], int]) -> dict[str, int]:
        inobt = btree.build(g, crc, magic=btree.INOBT, agno=agno, key_size=4, take=take,
                            records=[btree.inobt_record(s, m) for s, m in ordered])
        finobt = btree.build(g, crc, magic=btree.FINOBT, agno=agno, key_size=4, take=take,
                             records=[btree.inobt_record(s, m) for s, m in ordered if m])
        for tree in (inobt, finobt):
            for agbno, block in tree.blocks.items():
                space.write(agno, agbno, block)
        return {"count": CHUNK * len(ordered),
                "freecount": sum(bin(m).count("1") for _, m in ordered),
                "root": inobt.root, "level": inobt.levels,
                "newino": max(s for s, _ in ordered),
                "free_root": finobt.root, "free_level": finobt.levels,
                "ino_blocks": len(inobt.blocks), "fino_blocks": len(finobt.blocks)}

    return inodes

"""Filling an empty ext2/3/4 filesystem from the staged entries, in one linear pass.

`mke2fs -d` (e2fsprogs 1.47.2) adds each entry through libext2fs's ext2fs_link, which
reads the whole directory to find room for it: a directory of n entries costs n^2/2
block reads (40,000 entries in one directory: 110 s, against 1.6 s spread over 100).
Here mke2fs makes the empty filesystem with the same options (superblock, groups,
journal, orphan file, lost+found: its layout, untouched), and the filler writes the
tree into it: inodes numbered in the entries' order, each directory written once as
linear blocks, file data copied to blocks taken in order from the free space.
Nothing depends on the clock or on the order of system calls, so the same entries give
the same bytes. Without the `extent` feature (ext2, ext3) files get block maps
(ext_blockmap). Directories stay unindexed, as mke2fs -d leaves them; e2fsck -D indexes
them where the filesystem has dir_index, when filesystems.ext.add_checksums (ext4) or
filesystems.ext.index_directories (ext2, ext3) runs.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from make_disk_image.filesystems import ext4_layout as layout
from make_disk_image.filesystems.ext4_alloc import BlockSpace, InodeSpace, NoSpace
from make_disk_image.filesystems.ext4_layout import InodeFields
from make_disk_image.filesystems.ext4_write import TooFragmented, Writer, file_reader
from make_disk_image.filesystems.ext_blockmap import TooLarge, blocks_in_block_map
from make_disk_image.filesystems.tree_order import Numbering
from make_disk_image.models import Entry

logger = logging.getLogger("make_disk_image")

STORE_MTIME = 1  # Nix's canonical store time; None in an entry means this


class FillError(Exception):
    """The entries cannot be written as given (a fault of the tree, not of the disk)."""


class FilesystemFull(Exception):
    """The filesystem has too few free blocks or inodes for the entries."""


@dataclass
class Plan:
    """Inode numbers and directory contents, known before any block is written."""

    inodes: list[int] = field(default_factory=list)  # per entry
    children: dict[int, list[tuple[bytes, int, int]]] = field(default_factory=dict)
    subdirs: dict[int, int] = field(default_factory=dict)
    links: dict[int, int] = field(default_factory=dict)
    rebuilt: list[int] = field(default_factory=list)  # mke2fs's dirs written anew


def plan_inodes(entries: Sequence[Entry], inodes: InodeSpace) -> Plan:
    """Number the inodes in order and list every directory's children."""
    if not entries or entries[0].path != "" or entries[0].kind != "dir":
        raise FillError("the first entry must be the root directory")
    _check_file_sizes(entries, inodes.geometry)
    plan = Plan()
    # Each inode with its kind: a hard link takes its file's.
    numbering: Numbering[tuple[int, str]] = Numbering((layout.ROOT_INO, "dir"), FillError)
    plan.children[layout.ROOT_INO] = [(b".", layout.ROOT_INO, layout.FT_DIR),
                                      (b"..", layout.ROOT_INO, layout.FT_DIR)]
    plan.subdirs[layout.ROOT_INO] = 0
    plan.rebuilt.append(layout.ROOT_INO)
    plan.inodes.append(layout.ROOT_INO)
    has_lost_found = any(e.path == "lost+found" for e in entries)
    if not has_lost_found:
        _add_child(plan, layout.ROOT_INO, b"lost+found", layout.LOST_AND_FOUND_INO, "dir")
    for entry in entries[1:]:
        (parent, _), name, linked = numbering.place(entry)
        if linked is not None:
            ino, kind = linked
            plan.links[ino] += 1
            if plan.links[ino] > layout.LINK_MAX:
                raise FillError(f"/{entry.link} has more than {layout.LINK_MAX} hard links, "
                                "the most an ext4 inode holds")
        elif entry.path == "lost+found":
            if entry.kind != "dir":
                raise FillError("/lost+found must be a directory (e2fsck needs it)")
            ino, kind = layout.LOST_AND_FOUND_INO, "dir"
            plan.rebuilt.append(ino)
        else:
            ino, kind = inodes.take(), entry.kind
            plan.links[ino] = 1
        if kind == "dir":
            plan.children[ino] = [(b".", ino, layout.FT_DIR), (b"..", parent, layout.FT_DIR)]
            plan.subdirs[ino] = 0
        numbering.add(entry, (ino, kind))
        plan.inodes.append(ino)
        _add_child(plan, parent, name, ino, kind)
    return plan


def _check_file_sizes(entries: Sequence[Entry], geometry: layout.Geometry) -> None:
    """Refuse, before any data is written, a file longer than the filesystem holds."""
    limit = layout.max_file_bytes(geometry)
    for entry in entries:
        if entry.kind == "file" and entry.size > limit:
            hint = "" if geometry.huge_file and geometry.extents else (
                "; fsType ext4 (with its default huge_file) holds more")
            raise FillError(f"/{entry.path} is {entry.size} bytes, more than this "
                            f"filesystem's largest file ({limit} bytes){hint}")


def _add_child(plan: Plan, parent: int, name: bytes, ino: int, kind: str) -> None:
    if len(name) > 255:
        raise FillError(f"a name is longer than 255 bytes: {name[:40]!r}...")
    plan.children[parent].append((name, ino, layout.FILE_TYPES[kind]))
    if kind == "dir":
        plan.subdirs[parent] += 1


def _dir_links(subdirs: int) -> int:
    return 1 if subdirs + 2 > layout.LINK_MAX else subdirs + 2


@dataclass
class Stats:
    entries: int = 0
    data_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Times:
    """What `mke2fs -d -` does with times: `clamp` (SOURCE_DATE_EPOCH) caps every
    modification time; `created` is every inode's creation time."""

    clamp: int | None
    created: int


def fill(image: Path, offset: int, entries: Sequence[Entry], times: Times) -> Stats:
    """Write `entries` (parents first, the root first) into the empty ext4 at `offset`."""
    started = time.monotonic()
    stats = Stats(entries=len(entries))
    with Writer.open(image, offset) as writer:
        geometry = writer.geometry
        blocks = BlockSpace(geometry, writer.block_bitmaps)
        inodes = InodeSpace(geometry, writer.inode_bitmaps)
        try:
            plan = plan_inodes(entries, inodes)
            for ino in plan.rebuilt:
                blocks.release(_blocks_of(writer, ino))
            for entry, ino in zip(entries, plan.inodes, strict=True):
                if entry.kind == "hardlink":
                    continue
                stats.data_bytes += _write_entry(writer, blocks, plan, entry, ino, times)
        except NoSpace as exc:
            raise FilesystemFull(str(exc)) from exc
        except TooFragmented as exc:
            raise FillError(f"{exc}: more than a depth-1 extent tree holds") from exc
        except TooLarge as exc:
            raise FillError(f"a file too large for a block map: {exc}") from exc
        writer.finish(blocks, inodes, dirs_added=[i for i in plan.subdirs
                                                  if i not in plan.rebuilt])
    stats.seconds = time.monotonic() - started
    return stats


def _blocks_of(writer: Writer, ino: int) -> list[tuple[int, int]]:
    """(first block, count) of what one of mke2fs's directories holds."""
    i_block = writer.read_inode(ino)[40:100]
    if writer.geometry.extents:
        return layout.extents_in_block_map(i_block)
    return blocks_in_block_map(i_block, writer.read_block, writer.geometry.block_size)


def _write_entry(writer: Writer, blocks: BlockSpace, plan: Plan, entry: Entry,
                 ino: int, times: Times) -> int:
    """Write one entry's blocks and inode; return the file bytes it wrote."""
    mode = layout.S_IFMT_BITS[entry.kind] | (entry.mode & 0o7777)
    links = plan.links.get(ino, 1)
    mapped = layout.EXTENTS_FL if writer.geometry.extents else 0
    flags, size, used, data = mapped, 0, 0, 0
    if entry.kind == "dir":
        content = layout.directory_blocks(plan.children[ino], writer.geometry.block_size)
        size = len(content) * writer.geometry.block_size
        block_map, used = writer.write_blocks(blocks, b"".join(content))
        if plan.subdirs[ino] + 2 > layout.LINK_MAX and not writer.geometry.dir_nlink:
            raise FillError(f"/{entry.path} has more than {layout.LINK_MAX - 2} "
                            "subdirectories, the most a filesystem without dir_nlink holds")
        links = _dir_links(plan.subdirs[ino])
    elif entry.kind == "file":
        size, block_map, used = _write_file(writer, blocks, entry)
        data = size
    elif entry.kind == "symlink":
        target = os.fsencode(entry.link or "")
        size = len(target)
        if size <= layout.FAST_SYMLINK_MAX:
            block_map, flags = target.ljust(60, b"\0"), 0
        else:
            block_map, used = writer.write_blocks(blocks, target)
    elif entry.kind in ("chardev", "blockdev"):
        assert entry.device is not None
        block_map, flags = layout.device_block_map(*entry.device), 0
    else:  # fifo
        block_map, flags = bytes(60), 0
    fields = InodeFields(
        mode=mode, uid=entry.uid, gid=entry.gid, size=size, links=links, blocks=used,
        flags=flags, block_map=block_map,
        mtime=_mtime(entry, times), crtime=times.created,
    )
    writer.put_inode(ino, fields)
    return data


def _mtime(entry: Entry, times: Times) -> int:
    mtime = STORE_MTIME if entry.mtime is None else entry.mtime
    return mtime if times.clamp is None else min(mtime, times.clamp)


def _write_file(writer: Writer, blocks: BlockSpace, entry: Entry) -> tuple[int, bytes, int]:
    if entry.data is not None:
        data = entry.data
        block_map, used = writer.write_file(blocks, lambda at, n: data[at : at + n], len(data))
        return len(data), block_map, used
    assert entry.source is not None
    fd = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FillError(f"{entry.source} is no longer a regular file")
        block_map, used = writer.write_file(blocks, file_reader(fd), st.st_size)
        return st.st_size, block_map, used
    finally:
        os.close(fd)

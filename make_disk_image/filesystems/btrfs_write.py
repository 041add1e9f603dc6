"""A complete single-device btrfs written from entries in one pass, without mkfs.btrfs.

The layout is mkfs.btrfs 6.14's defaults for one device (nodesize 16 KiB, sectorsize
4 KiB, crc32c, metadata and system DUP, data single, the same features), placed
linearly: the first MiB reserved (the superblock at 64 KiB), the system chunk's two
copies, the data chunks (at most 1 GiB each) holding the files' bytes in inode order,
then the metadata chunk's two copies. No stripe covers a superblock copy (64 MiB,
256 GiB). Tree blocks are placed in the metadata chunk from its start, tree after tree:
the extent tree lists every block (its own too), so the trees' shapes are counted first
and the blocks built at their places afterwards. Every time is the entries' own and
every UUID derives from the filesystem's UUID: the same entries, UUID and label give
the same bytes.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image.filesystems import btrfs_format as fmt
from make_disk_image.filesystems import btrfs_fstree as fstree
from make_disk_image.filesystems.btrfs_format import Chunk, Stripe, derived_uuid
from make_disk_image.filesystems.btrfs_fstree import NoSpace
from make_disk_image.filesystems.btrfs_meta import Metadata, Physical
from make_disk_image.filesystems.crc32c import Crc32c
from make_disk_image.models import Entry

MIB = 1 << 20
SYSTEM_LEN = 4 * MIB
DATA_CHUNK_MAX = 1 << 30
# needed_size's device: beyond any closure (the superblock copies past it are not written).
TRIAL_SIZE = 1 << 50


def _align(value: int, to: int = MIB) -> int:
    return -(-value // to) * to


@dataclass(frozen=True)
class Stats:
    entries: int
    data_bytes: int
    metadata_blocks: int
    end: int  # the device bytes its chunks take: the least size the same layout fits
    written: int  # the bytes it wrote: data, both copies of every tree block, superblocks
    data_end: int  # the device bytes up to the data's end, where the metadata follows
    stripe: int  # the metadata chunk's length (each of its two copies)

    def grown_end(self, growth: int) -> int:
        """The least size for the same tree once files of `growth` bytes more are added
        (the guest's): the metadata moves up by as much, and a copy of it moved past a
        superblock copy it would cover costs its length and a MiB."""
        end = self.end + growth
        if any(self.data_end < mirror <= end for mirror in fmt.SUPER_MIRRORS[1:]):
            end += self.stripe + MIB
        return end


def _data_chunks(space: Physical, upper: int, dev_uuid: bytes) -> list[Chunk]:
    """Data chunks for at most `upper` bytes, cut at the device's end: zero sectors are
    left out, so the data may fit where its upper bound does not (the sizes "minimal"
    measures are exact only so)."""
    chunks: list[Chunk] = []
    left = max(_align(upper), MIB)
    while left:
        room = (space.size - space.at) // MIB * MIB
        try:
            start, length = space.take(min(left, DATA_CHUNK_MAX, max(room, MIB)), split=True)
        except NoSpace:
            if not chunks:
                raise
            break  # the device's end, or a superblock copy just before it
        chunks.append(Chunk(start, length, fmt.BG_DATA, (Stripe(start, dev_uuid),)))
        left -= length
    return chunks


def _trim(chunks: list[Chunk], data: fstree.DataSpace) -> tuple[list[Chunk], list[int]]:
    """The data chunks cut to what the data took (the first kept even if empty), and
    the bytes used in each (from its start)."""
    kept = chunks[: data.chunk + 1]
    last = kept[-1]
    kept[-1] = Chunk(last.logical, max(_align(data.used), MIB), last.flags, last.stripes)
    return kept, [c.length for c in kept[:-1]] + [data.used]


def write_btrfs(image: Path, offset: int, size: int, entries: Sequence[Entry], *,
                label: str, uuid: str, crc: Crc32c, for_guest: bool = False) -> Stats:
    """btrfs of `size` bytes holding `entries` (parents first, the root first) at byte
    `offset` of `image`. Its metadata chunk keeps free as much as fits up to
    btrfs_meta.METADATA_SLACK; `for_guest`, what the guest's writes need of it
    (btrfs_meta.guest_room), the rest of `size` left unallocated. Raises fstree.TreeError
    for a tree btrfs cannot hold, NoSpace when it does not fit."""
    fsid = uuidlib.UUID(uuid).bytes
    dev_uuid = derived_uuid(fsid, "device")
    encoded_label = label.encode()
    if len(encoded_label) > 255:
        raise fstree.TreeError(f"the label {label!r} is longer than 255 bytes")
    nodes = fstree.plan_inodes(entries)
    space = Physical(size // fmt.SECTORSIZE * fmt.SECTORSIZE)
    sys_start, _ = space.take(SYSTEM_LEN)
    sys_copy, _ = space.take(SYSTEM_LEN)
    system = Chunk(sys_start, SYSTEM_LEN, fmt.BG_SYSTEM | fmt.BG_DUP,
                   (Stripe(sys_start, dev_uuid), Stripe(sys_copy, dev_uuid)))
    upper = sum(_align(n.entry.size, fmt.SECTORSIZE) for n in nodes.values()
                if n.entry.kind == "file" and n.entry.size > fmt.MAX_INLINE)
    data_chunks = _data_chunks(space, upper, dev_uuid)
    if sum(c.length for c in data_chunks) < _align(upper) and str(image) != os.devnull:
        # Cut at the device's end: whether the data fits depends on its zero sectors.
        # A run into /dev/null first finds out, so a tree too large leaves the disk as
        # it was.
        write_btrfs(Path(os.devnull), offset, size, entries, label=label, uuid=uuid, crc=crc,
                    for_guest=for_guest)
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        data = fstree.DataSpace(fd, offset, [(c.logical, c.stripes[0].physical, c.length)
                                             for c in data_chunks], crc.sector_sums)
        fstree.write_data(nodes, data)
        data_chunks, filled = _trim(data_chunks, data)
        last = data_chunks[-1]
        space.at = last.logical + last.length
        meta = Metadata(fsid, dev_uuid, encoded_label, crc, system, data_chunks, filled,
                        for_guest)
        blocks = meta.write(fd, offset, space, nodes, data)
    finally:
        os.close(fd)
    supers = sum(1 for m in fmt.SUPER_MIRRORS if m + fmt.SUPER_SIZE <= space.size)
    written = data.written + 2 * blocks * fmt.NODESIZE + supers * fmt.SUPER_SIZE
    return Stats(len(entries), sum(filled), blocks, space.at, written, meta.data_end,
                 meta.stripe)


def needed_size(entries: Sequence[Entry], *, crc: Crc32c, for_guest: bool = True) -> Stats:
    """What write_btrfs lays out for `entries` on a device as large as it may want: its
    `end` is the least size that takes the same layout (with `for_guest`, the same free
    metadata room). A full run of the writer (the files read, their zero sectors found,
    every tree built) into /dev/null: exact, deterministic, nothing stored."""
    null = Path(os.devnull)
    return write_btrfs(null, 0, TRIAL_SIZE, entries, label="", uuid=str(uuidlib.UUID(int=0)),
                       crc=crc, for_guest=for_guest)


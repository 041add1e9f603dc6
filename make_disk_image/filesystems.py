"""The root filesystems the engine makes, as data: tool, what they can serve, sizes.

One row per `fsType`. spec.py checks arguments against it (a read-only filesystem for
a writable root, a filesystem a layout cannot hold), sizing.py takes each row's
formula for `diskSize = "auto"`, and rootfs.py picks the maker by `maker`.
"""

from __future__ import annotations

from dataclasses import dataclass

from make_disk_image.interface import FS_TYPES, FsTypeInfo
from make_disk_image.models import FS_BLOCK, MIB


@dataclass(frozen=True)
class Filesystem:
    name: str
    # The program that makes it, for messages and the README table.
    tool: str
    # "mke2fs", "btrfs", "xfs", "erofs", "squashfs": which maker in rootfs/other_filesystems.
    maker: str
    # Smallest filesystem the tool makes, in bytes.
    min_size: int
    # Bytes per entry (inode, directory entry, tree items) the auto size counts on top
    # of the files' blocks.
    bytes_per_entry: int
    # Factor (per mille) on the files' bytes: btrfs allocates data and metadata chunks
    # apart and keeps the smallest files inline in metadata, which mkfs duplicates.
    data_per_mille: int
    # Fixed bytes on top: journal/log, superblocks, allocation-group headers.
    fixed: int
    # What `deterministic` achieves with Debian 12's tools; the README table says more.
    determinism: str

    # What Nix checks too (read-only, label length, UUID, partition table) is
    # interface.json's.
    @property
    def interface(self) -> FsTypeInfo:
        return FS_TYPES[self.name]

    @property
    def read_only(self) -> bool:
        """It holds only a store image (onlyNixStore, no partition table)."""
        return self.interface.read_only

    @property
    def label_bytes(self) -> int:
        """The longest label the tool stores, in bytes (0: it stores none)."""
        return self.interface.label_bytes

    @property
    def takes_uuid(self) -> bool:
        """The tool takes a fixed filesystem UUID (rootFSUID)."""
        return self.interface.takes_uuid


FILESYSTEMS: dict[str, Filesystem] = {
    fs.name: fs
    for fs in (
        Filesystem("ext2", "mke2fs -d -", "mke2fs", 0, 0, 0, 0,
                   "bit-identical (e2fsprogs >= 1.47.1)"),
        Filesystem("ext3", "mke2fs -d -", "mke2fs", 0, 0, 0, 0,
                   "bit-identical (e2fsprogs >= 1.47.1)"),
        Filesystem("ext4", "mke2fs -d -", "mke2fs", 0, 0, 0, 0,
                   "bit-identical (e2fsprogs >= 1.47.1)"),
        # 160 MiB: the smallest that holds mkfs.btrfs' default chunks (DUP metadata,
        # system, data) with room for the guest's writes. Measured on bench/'s closure
        # and the test closure: used space stays under 2x the files' bytes + 16 KiB
        # an entry.
        Filesystem("btrfs", "mkfs.btrfs --rootdir (user namespace)", "btrfs", 160 * MIB,
                   16 * 1024, 2000, 160 * MIB,
                   "fixed UUID and label; chunk-tree/device UUIDs and times vary"),
        # 300 MiB: xfsprogs >= 5.19 refuses smaller filesystems. Inodes are 512 bytes,
        # directories and the log take the rest of the fixed part.
        Filesystem("xfs", "mkfs.xfs -p protofile", "xfs", 300 * MIB,
                   2 * FS_BLOCK, 1052, 64 * MIB,
                   "fixed UUID and label; inode times are mkfs' clock (xfsprogs 6.1)"),
        Filesystem("erofs", "mkfs.erofs", "erofs", 0, 2 * FS_BLOCK, 1052,
                   MIB, "bit-identical"),
        Filesystem("squashfs", "mksquashfs", "squashfs", 0, 2 * FS_BLOCK,
                   1052, MIB, "bit-identical"),
    )
}
EXT_FAMILY = ("ext2", "ext3", "ext4")

if list(FILESYSTEMS) != list(FS_TYPES):
    raise ImportError(
        "make_disk_image/interface.json's fsTypes and filesystems.FILESYSTEMS differ: "
        f"{list(FS_TYPES)} != {list(FILESYSTEMS)}"
    )


def lookup(name: str) -> Filesystem | None:
    return FILESYSTEMS.get(name)


def needed_bytes(fs: Filesystem, file_blocks: int, entries: int) -> int:
    """The auto size's filesystem bytes for a tree, for the non-ext filesystems.

    ext2/3/4 keep the reference's formula (sizing.auto_disk_size). For the others:
    files' bytes x data_per_mille/1000 + entries x bytes_per_entry + fixed, at least
    min_size. For erofs and squashfs the made image's own size is the result; this only
    bounds the scratch disk prepare allocates.
    """
    data = file_blocks * FS_BLOCK * fs.data_per_mille // 1000
    return max(fs.min_size, data + entries * fs.bytes_per_entry + fs.fixed)

"""The data the engine works on: the validated spec, layouts and the disk plan."""

from __future__ import annotations

import enum
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from make_disk_image.interface import FORMATS

SECTOR = 512
MIB = 1024 * 1024
FS_BLOCK = 4096  # ext4 block size, as the reference uses
# The root directory's mode in every image tree (staging.Tree, store images).
ROOT_MODE = 0o755


class Format(enum.Enum):
    """`format`: the formats the engine has code for (make_disk_image/formats.py). Their
    data (extension, Hydra product type) is interface.json's; the two must name the same
    formats (checked below, at import)."""

    RAW = "raw"
    QCOW2 = "qcow2"
    QCOW2_COMPRESSED = "qcow2-compressed"
    VDI = "vdi"
    VPC = "vpc"
    VMDK = "vmdk"
    VHDX = "vhdx"
    QCOW2_ZSTD = "qcow2-zstd"
    RAW_ZSTD = "raw-zstd"

    @property
    def extension(self) -> str:
        """The file name's extension (the reference's for its five)."""
        return FORMATS[self.value].extension

    @property
    def product_type(self) -> str:
        """The type of the image's line in nix-support/hydra-build-products."""
        return FORMATS[self.value].product_type


if {f.value for f in Format} != set(FORMATS):
    raise ImportError(
        "make_disk_image/interface.json and models.Format name different formats: "
        f"{sorted(set(FORMATS) ^ {f.value for f in Format})}"
    )


@dataclass(frozen=True)
class ContentEntry:
    """One `contents` element: `source` grafted at `target` in the root filesystem."""

    source: str
    target: str
    mode: str | None = None
    user: str | None = None
    group: str | None = None

    @property
    def numeric_owner(self) -> tuple[int, int] | None:
        """uid/gid when both are numbers: set while staging, no guest chown needed."""
        if self.user and self.group and self.user.isdigit() and self.group.isdigit():
            return int(self.user), int(self.group)
        return None

    @property
    def needs_guest_chown(self) -> bool:
        # Names resolve only against the image's own passwd/group, inside the guest.
        return self.user is not None and self.numeric_owner is None

    @property
    def image_path(self) -> str:
        """`target` relative to the image's root, normalised ("/a//b/" and "a/./b" are "a/b")."""
        return posixpath.normpath("/" + self.target).lstrip("/")

    @property
    def is_glob(self) -> bool:
        # The reference globs whenever the source contains '*'.
        return "*" in self.source


@dataclass(frozen=True)
class Spec:
    """SPEC.json after validation: the makeDiskImage arguments plus what Nix computed."""

    toplevel: str
    closureInfo: str
    diskSize: int | None = None  # MiB; None means "auto" or "minimal"
    diskSizeMinimal: bool = False  # diskSize = "minimal" (diskSize is then None)
    additionalSpace: int = 512 * MIB  # bytes
    bootSize: int = 256 * MIB  # bytes, as given (before the reference's rounding)
    contents: tuple[ContentEntry, ...] = ()
    partitionTableType: str = "legacy"
    installBootLoader: bool = True
    touchEFIVars: bool = False
    efiFirmware: str | None = None
    efiVariables: str | None = None
    ovmfSystemManagementModeRequired: bool = False
    fsType: str = "ext4"
    label: str = "nixos"
    configFile: str | None = None
    postVM: str = ""
    memSize: int = 1024
    onlyNixStore: bool = False
    name: str = "nixos-disk-image"
    format: Format = Format.RAW
    baseName: str = "nixos"
    deterministic: bool = True
    # Identical files of the store as one inode with several names (make_disk_image.dedup).
    deduplicate: bool = False
    # A store image's compression (interface.json fsTypes' compressions); None: its
    # default.
    compression: str | None = None
    rootGPUID: str = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
    rootFSUID: str | None = None
    copyChannel: bool = True
    additionalPaths: tuple[str, ...] = ()
    channelSources: str | None = None
    grubDevices: tuple[str, ...] = ()
    limineBiosDevice: str | None = None
    # The image's architecture (config.nixpkgs.hostPlatform.system); None: the builder's.
    system: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.baseName}.{self.format.extension}"


class Bound(enum.Enum):
    """Symbolic partition boundaries of the reference's parted scripts."""

    BOOT_SIZE = "bootSize"  # $bootSizeMiB
    REST = "100%"


@dataclass(frozen=True)
class PartitionTemplate:
    """One partition of a layout, as the reference's parted script creates it."""

    role: str  # "esp", "xbootldr", "boot", "bios_grub", "root"
    start: int | Bound  # MiB, or sector 34 for hybrid's bios_grub (see start_sector)
    end: int | Bound  # MiB (exclusive, as parted reads "NMiB" ends)
    parted_fs: str | None
    name: str | None  # GPT partition name; parted's msdos "primary" has none
    flags: tuple[str, ...] = ()
    seed_guid: str | None = None  # deterministic partition GUID; None = rootGPUID
    start_sector: int | None = None  # overrides `start` (parted's "0" -> first usable)
    end_sector: int | None = None  # inclusive end sector, overrides `end`
    filesystem: str | None = None  # made by the guest phase: "vfat"
    fs_label: str | None = None
    mountpoint: str | None = None  # under the root mount, in the guest


@dataclass(frozen=True)
class Layout:
    """A partitionTableType as data."""

    name: str
    table: str | None  # "msdos", "gpt" or None (filesystem on the whole disk)
    partitions: tuple[PartitionTemplate, ...]
    # Space the auto size reserves besides the filesystem (the reference's reservedSpace).
    reserve_gpt_tail: bool = False
    reserve_boot_size: bool = False
    reserve_bytes: int = 0

    @property
    def firmware(self) -> frozenset[str]:
        """The firmware kinds that can boot this layout: "uefi" (an ESP), "bios"."""
        roles = {p.role for p in self.partitions}
        kinds = {"uefi"} if "esp" in roles else set()
        if self.table == "msdos" or "bios_grub" in roles:
            kinds.add("bios")
        return frozenset(kinds)

    @property
    def root_number(self) -> int | None:
        for number, part in enumerate(self.partitions, start=1):
            if part.role == "root":
                return number
        return None


@dataclass(frozen=True)
class PlannedPartition:
    number: int
    role: str
    start: int  # sector
    end: int  # sector, inclusive
    type: str  # GPT type GUID or MBR type byte (hex)
    guid: str | None  # GPT partition GUID when deterministic, else None (random)
    name: str | None
    flags: tuple[str, ...]
    filesystem: str | None
    label: str | None
    mountpoint: str | None

    @property
    def sectors(self) -> int:
        return self.end - self.start + 1

    @property
    def offset_bytes(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class SizeComputation:
    """How an automatic disk size was reached, in the reference's terms (bytes)."""

    closure_space_use: int
    fudge: int
    filesystem_size_needed: int
    additional_space: int
    disk_image_size: int
    files_blocks: int
    inodes: int
    alignment_growth: int = 0  # bytes added so the root partition holds the filesystem


@dataclass(frozen=True)
class MinimalSize:
    """How a `diskSize = "minimal"` size was reached (make_disk_image.minimal).

    A trial filesystem of the tree in a sparse file of `trial_size` bytes measures
    the blocks the tree takes (`content_blocks`: used blocks minus those of the same
    filesystem holding only the root directory); mke2fs runs without `-d` at candidate
    sizes measure the metadata (`overhead_blocks`). The filesystem is the smallest root
    partition, in whole MiB of disk, with `free_blocks` >= additionalSpace + slack.
    """

    entries: int  # inodes the tree needs
    inodes: int  # mke2fs -N
    trial_size: int  # bytes
    trial_used_blocks: int
    trial_empty_blocks: int  # used by the trial filesystem holding only the root
    content_blocks: int  # trial_used_blocks - trial_empty_blocks
    margin_blocks: int  # for what the trial's settings may count differently
    overhead_blocks: int  # used by an empty filesystem of the final size
    additional_space: int  # bytes (additionalSpace)
    slack: int  # bytes of free space kept for the guest's writes
    filesystem_size: int  # bytes (the root partition)
    free_blocks: int  # expected free blocks after mke2fs -d, before the guest
    disk_image_size: int  # bytes
    method: str


@dataclass(frozen=True)
class DiskPlan:
    partition_table_type: str
    table: str | None
    disk_size: int  # bytes
    # "diskSize", "auto", "minimal", or "tool": a store image its tool reads straight
    # from the store, as large as the tool makes it (disk_size is then nominal).
    size_source: str
    auto: SizeComputation | None
    boot_size: int  # bytes, after the reference's rounding
    disk_guid: str | None
    mbr_disk_id: str | None
    partitions: tuple[PlannedPartition, ...]
    root_number: int | None
    root_offset: int  # bytes
    root_size: int  # bytes
    fs_type: str
    label: str
    root_fs_uuid: str | None
    image: str = "nixos.raw"
    extras: dict[str, Any] = field(default_factory=dict)
    # mke2fs -N for the root filesystem (diskSize = "minimal"); None: mke2fs's default.
    root_inodes: int | None = None
    minimal: MinimalSize | None = None
    # What a store image is compressed with (spec.compression or the fsType's default).
    compression: str | None = None

    @property
    def root_partition(self) -> PlannedPartition | None:
        if self.root_number is None:
            return None
        return self.partitions[self.root_number - 1]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["root_partition_device"] = (
            f"/dev/vda{self.root_number}" if self.root_number else "/dev/vda"
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DiskPlan:
        data = dict(data)
        data.pop("root_partition_device", None)
        auto = data.pop("auto")
        minimal = data.pop("minimal", None)
        parts = data.pop("partitions")
        return cls(
            auto=SizeComputation(**auto) if auto else None,
            minimal=MinimalSize(**minimal) if minimal else None,
            partitions=tuple(PlannedPartition(**{**p, "flags": tuple(p["flags"])}) for p in parts),
            **data,
        )


def image_path(build_dir: Path, plan: DiskPlan) -> Path:
    return build_dir / plan.image


# "hardlink", devices and fifos come from `contents` sources or from what the guest left.
Kind = Literal["dir", "file", "symlink", "hardlink", "chardev", "blockdev", "fifo"]


@dataclass(frozen=True)
class Entry:
    """One path of the root filesystem and where its bytes come from."""

    path: str  # relative to the filesystem root, "" is the root itself
    kind: Kind
    mode: int  # permission bits
    uid: int = 0
    gid: int = 0
    # A host path (a str: prepare and finish handle 10^5 of them, pathlib would cost
    # seconds): file contents come from here ...
    source: str | None = None
    data: bytes | None = None  # ... or from here
    link: str | None = None  # symlink target; for a hardlink, the path it shares an inode with
    device: tuple[int, int] | None = None  # (major, minor) of a chardev or blockdev
    size: int = 0  # apparent size (du --apparent-size): file length or link length
    mtime: int | None = None  # seconds; None: the store's time (1)


@dataclass(frozen=True)
class Handoff:
    """What prepare leaves for the guest and for finish (xchg/make-disk-image.json).

    prepare decides everything both filesystem runs must agree on: the plan, the root
    filesystem's UUID and the FAT volume ids (random ones too, when not deterministic:
    the bootloader may record them), and which Nix database files the tree holds.
    """

    plan: DiskPlan
    root_uuid: str | None  # the UUID of both root filesystems (None: the fs takes none)
    fat_volume_ids: dict[int, str]  # partition number -> 8 hex digits
    guest_mounts: bool  # the guest has work: bootloader or owners by name
    nix_db_files: dict[str, str]  # db file name -> path relative to xchg/
    # What the guest compares the root filesystem against, without listing the closure:
    # prepare's entries outside the store's paths, and the store paths' names.
    outside_store: tuple[Entry, ...] = ()
    store_names: tuple[str, ...] = ()
    # A store image whose tool reads these store paths itself (a filesystem with
    # `reads_store_paths`): prepare described no tree, finish hands the tool the paths.
    store_image_paths: tuple[str, ...] = ()
    # Every inode of the build VM's root filesystem has its mtime and ctime at most this
    # (ns since the epoch): mke2fs' fixed 1 s, or for the filesystems whose tools write
    # their own clock (xfs, btrfs' ctime) the moment after prepare made it. Whatever the
    # guest changes gets a later time (make_disk_image.changes).
    prepared_until_ns: int = 1_000_000_000


Origin = Literal["prepare", "guest"]


@dataclass(frozen=True)
class GuestRecord:
    """What the guest left on the root filesystem (xchg/guest-record.json), for finish.

    `entries` is every path outside the store's paths, as the guest left it, in tree
    order. An entry whose origin is "prepare" has prepare's bytes (finish takes them
    from prepare's tree); a "guest" entry's bytes were copied to `source`, relative to
    xchg/. `store_walked` names store paths the guest added or changed at their top;
    their whole trees are in `entries` too, and prepare's entries for them are dropped.
    """

    mounted: bool
    entries: tuple[tuple[Entry, Origin], ...] = ()
    store_walked: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

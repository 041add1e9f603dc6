"""The root filesystems: one module each behind one protocol, found by interface.json.

interface.json's `fsTypes` holds what Nix checks too (read-only, label length, UUID,
partition table, kernel module) and names each row's module in this package. The
module holds everything else: how the filesystem is made and filled, sized, tuned,
which owners it can hold. The engine asks `FILESYSTEMS[name]` and never compares a
filesystem's name; a new filesystem is one module here and one row in interface.json.

Modules are imported when a row is first asked for, so a build of ext4 never imports
the xfs protofile writer.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from make_disk_image.interface import ARGUMENTS, FS_TYPES, FsTypeInfo
from make_disk_image.models import FS_BLOCK, ContentEntry, DiskPlan, Entry, PlannedPartition

if TYPE_CHECKING:
    from make_disk_image.models import Spec
    from make_disk_image.staging import Tree


@dataclass(frozen=True)
class Filesystem(ABC):
    """One `fsType`: its row's data, and what the engine asks of it."""

    name: str
    # The program that makes it, for messages and the README table.
    tool: str
    # What `deterministic` achieves with Debian 12's tools; the README table says more.
    determinism: str
    # Smallest filesystem the tool makes, in bytes.
    min_size: int = 0
    # Bytes per entry (inode, directory entry, tree items) the auto size counts on top
    # of the files' blocks.
    bytes_per_entry: int = 0
    # Factor (per mille) on the files' bytes: btrfs allocates data and metadata chunks
    # apart and keeps the smallest files inline in metadata, which mkfs duplicates.
    data_per_mille: int = 0
    # Fixed bytes on top: journal/log, superblocks, allocation-group headers.
    fixed: int = 0
    # The filesystem type parted's mkpart is given for the root partition (it sets
    # the partition's type; every Linux filesystem gets the same).
    parted_name: str | None = None
    # rootFSUID defaults to rootGPUID and must not be null when deterministic: the
    # reference's rule, which it applies to ext4 only.
    uuid_is_root_gpuid: bool = False
    # Every inode the tool writes has the deterministic time (1 s), so that the guest
    # tells its changes by their times; otherwise prepare records the moment after mkfs
    # (make_disk_image.changes).
    fixed_times: bool = False
    # A store image's tool: the help command whose output lists the compressors it was
    # built with, and the words the list follows (make_disk_image.compression).
    compressor_help: tuple[tuple[str, ...], str] | None = None
    # A store image's tool that reads the store paths themselves as its sources when
    # the image is only them (onlyNixStore, no `deduplicate`): prepare then need not
    # walk the closure, nor finish read the tree back (make_from_store).
    reads_store_paths: bool = False

    @abstractmethod
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        """Make the filesystem holding `entries` at the plan's root range of `target`
        (or as the whole of it, without a table). `checksums` false: the build VM's copy,
        which only the bootloader reads, may leave out what costs time and nothing else."""

    def make_from_store(self, target: Path, plan: DiskPlan, store_paths: Sequence[str], *,
                        uuid: str | None, deterministic: bool, step: str) -> None:
        """Make the store image of `store_paths` (each at the root under its own name) as
        the whole of `target`. A row with `reads_store_paths` hands them to its tool; any
        other stages them here, once, as onlyNixStore's tree, and makes it from that."""
        from make_disk_image.staging import Tree

        tree = Tree()
        for path in store_paths:
            tree.add_host(path, path.rsplit("/", 1)[-1])
        self.make(target, plan, tree.ordered(), uuid=uuid, deterministic=deterministic,
                  checksums=True, step=step)

    def tune(self, target: Path, plan: DiskPlan, *, deterministic: bool, step: str) -> None:
        """After `make` of the image's own filesystem: what the image needs on top."""
        return None  # most are complete as their tool makes them

    def auto_bytes(self, file_blocks: int, entries: int) -> int | None:
        """The filesystem's bytes for `diskSize = "auto"`; None: the reference's formula."""
        return needed_bytes(self, file_blocks, entries)

    def minimal_plan(self, spec: Spec, tree: Tree, work: Path | None) -> DiskPlan:
        """The plan for `diskSize = "minimal"` (make_disk_image.minimal)."""
        from make_disk_image.minimal import estimated_minimal_plan

        return estimated_minimal_plan(spec, tree, self, work)

    def minimal_floor(self) -> int:
        """The least root filesystem `diskSize = "minimal"` gives it."""
        return self.min_size

    def minimal_content(self, work: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                        estimate: int, step: str, room: int = 0) -> tuple[int, str, int]:
        """The bytes "minimal" gives the tree, how they were found, and the size of the
        trial filesystem that measured them (0: none). `room`: the free bytes that will be
        added (additionalSpace and the slack), which some layouts need to know."""
        return estimate, (f"the auto formula of {self.name} (filesystems.needed_bytes): "
                          f"{estimate} bytes"), 0

    def owner_problem(self, entry: ContentEntry) -> str | None:
        """Why this filesystem cannot give `entry` its owner, or None."""
        return None

    def links_problem(self, step: str) -> str | None:
        """Why this filesystem, made with this host's tools, would lose the tree's hard
        links (`deduplicate`), or None. Asked once, before the store is read; the row's
        `hardLinks` says whether it can hold them at all (checked at evaluation)."""
        return None

    # What Nix checks too is interface.json's.
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

    @property
    def kernel_module(self) -> str:
        return self.interface.kernel_module


def needed_bytes(fs: Filesystem, file_blocks: int, entries: int) -> int:
    """The auto size's filesystem bytes for a tree, by a row's data.

    files' bytes x data_per_mille/1000 + entries x bytes_per_entry + fixed, at least
    min_size. For erofs and squashfs the made image's own size is the result; this only
    bounds the scratch disk prepare allocates.
    """
    data = file_blocks * FS_BLOCK * fs.data_per_mille // 1000
    return max(fs.min_size, data + entries * fs.bytes_per_entry + fs.fixed)


class _Registry(Mapping[str, Filesystem]):
    """interface.json's fsTypes, in its order, each row's module imported when asked."""

    def __init__(self) -> None:
        self._loaded: dict[str, Filesystem] = {}

    def __getitem__(self, name: str) -> Filesystem:
        if name not in self._loaded:
            info = FS_TYPES[name]
            module = importlib.import_module(f"{__name__}.{info.module}")
            rows: Sequence[Filesystem] = module.FILESYSTEMS
            found = [fs for fs in rows if fs.name == name]
            if len(found) != 1:
                raise ImportError(
                    f"make_disk_image/filesystems/{info.module}.py defines "
                    f"{[fs.name for fs in rows]}, not the fsType {name} interface.json "
                    "gives it"
                )
            self._loaded[name] = found[0]
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(FS_TYPES)

    def __len__(self) -> int:
        return len(FS_TYPES)


FILESYSTEMS: Mapping[str, Filesystem] = _Registry()

_MISSING = sorted({i.module for i in FS_TYPES.values()}
                  - {p.stem for p in Path(__file__).parent.glob("*.py")})
if _MISSING:
    raise ImportError(
        f"make_disk_image/interface.json's fsTypes name modules that "
        f"make_disk_image/filesystems/ lacks: {_MISSING}"
    )


def lookup(name: str) -> Filesystem | None:
    return FILESYSTEMS[name] if name in FS_TYPES else None


def default() -> Filesystem:
    """The filesystem of a spec without fsType."""
    return FILESYSTEMS[ARGUMENTS["fsType"].default]


def partition_filesystem(part: PlannedPartition, plan: DiskPlan) -> str | None:
    """The parted filesystem type of a planned partition (None: none, as bios_grub)."""
    from make_disk_image.filesystems import vfat

    if part.role == "root":
        return FILESYSTEMS[plan.fs_type].parted_name
    return vfat.PARTED_NAME if vfat.holds(part) else None


def vm_kernel_modules() -> tuple[str, ...]:
    """The filesystem modules a build VM loads at boot: the default root's and FAT's;
    others it can modprobe."""
    from make_disk_image.filesystems import vfat

    return (default().kernel_module, vfat.KERNEL_MODULE)

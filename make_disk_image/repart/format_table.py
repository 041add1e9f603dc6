"""repart's `Format=` vocabulary as data: what each value asks of the build.

repart.d(5)'s `Format=` is a vocabulary of its own (swap, no ext2/ext3), with
systemd-repart 254's own least sizes; its makers (make_disk_image.repart.filesystems)
call the filesystem modules for what they share. This table is the only place in
repart/ that names a filesystem: the rest asks a row for what it needs, so a format is
one row here and one maker there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.models import Entry
from make_disk_image.repart import filesystems


@dataclass(frozen=True)
class Job:
    """One filesystem to make: everything a maker may need, each taking its part."""

    target: Path  # its own file, or the image for a format made in place
    size: int  # bytes; a read-only format's maker decides its size itself
    entries: Sequence[Entry]
    fs_uuid: uuid.UUID
    label: str
    work: Path
    sector_size: int
    step: str
    extra: Sequence[str] = ()  # mkfsOptions, last on the tool's command line
    offset: int | None = None  # in place: the partition's first byte in `target`


@dataclass(frozen=True)
class RepartFormat:
    name: str  # the `Format=` value
    # systemd-repart 254's least size for a partition of it (0: none beyond the grain).
    minimum_size: int = 0
    # It holds files (`CopyFiles=`, `MakeDirectories=`, the closure); swap does not.
    holds_files: bool = True
    # Made before placement, its size the partition's (Minimize=best is for these).
    read_only: bool = False
    # Made straight into the image at its partition's offset: nothing to copy after.
    in_place: bool = False
    # Makes the filesystem of a job; None: repart accepts it, this engine refuses it.
    make: Callable[[Job], None] | None = None
    # Minimize=guess: the bytes the partition gets; None: refused (use SizeMinBytes).
    guess: Callable[[Job], int] | None = None
    # Why its guess cannot be made with these mkfsOptions on this host, or None.
    guess_problem: Callable[[Sequence[str]], str | None] = lambda extra: None


def _ext4(job: Job) -> None:
    filesystems.make_ext4(job.target, job.size, job.entries, fs_uuid=job.fs_uuid,
                          label=job.label, step=job.step, extra=job.extra, offset=job.offset)


def _ext4_guess(job: Job) -> int:
    return filesystems.guess_ext4_size(job.work, job.entries, fs_uuid=job.fs_uuid,
                                       label=job.label, step=job.step, extra=job.extra)


def _btrfs(job: Job) -> None:
    filesystems.make_btrfs(job.target, job.size, job.entries, fs_uuid=job.fs_uuid,
                           label=job.label, step=job.step, work=job.work, extra=job.extra,
                           offset=job.offset)


def _btrfs_guess(job: Job) -> int:
    return filesystems.guess_btrfs_size(job.entries, step=job.step)


def _xfs(job: Job) -> None:
    # mkfs.xfs refuses a label longer than xfs keeps; repart 254 shortens it.
    label = job.label.encode()[:FILESYSTEMS["xfs"].label_bytes].decode(errors="ignore")
    filesystems.make_xfs(job.target, job.size, job.entries, fs_uuid=job.fs_uuid,
                         label=label, step=job.step, extra=job.extra)


def _vfat(job: Job) -> None:
    from make_disk_image.repart.uuids import vfat_volume_id  # uuids reads the definitions

    filesystems.make_vfat(job.target, job.size, job.entries,
                          volume_id=vfat_volume_id(job.fs_uuid), label=job.label,
                          sector_size=job.sector_size, work=job.work, step=job.step,
                          extra=job.extra)


def _swap(job: Job) -> None:
    filesystems.make_swap(job.target, job.size, fs_uuid=job.fs_uuid, label=job.label,
                          step=job.step, extra=job.extra)


def _erofs(job: Job) -> None:
    filesystems.make_erofs(job.target, job.entries, fs_uuid=job.fs_uuid, work=job.work,
                           step=job.step, extra=job.extra)


def _squashfs(job: Job) -> None:
    filesystems.make_squashfs(job.target, job.entries, step=job.step)


FORMATS: Mapping[str, RepartFormat] = {f.name: f for f in (
    RepartFormat("ext4", minimum_size=1 << 20, in_place=True, make=_ext4, guess=_ext4_guess),
    RepartFormat("btrfs", minimum_size=256 << 20, in_place=True, make=_btrfs,
                  guess=_btrfs_guess, guess_problem=filesystems.guess_btrfs_problem),
    RepartFormat("xfs", minimum_size=300 << 20, make=_xfs),
    RepartFormat("vfat", make=_vfat),
    RepartFormat("erofs", read_only=True, make=_erofs),
    RepartFormat("squashfs", read_only=True, make=_squashfs),
    RepartFormat("swap", holds_files=False, make=_swap),
)}


def built() -> list[str]:
    """The formats this engine makes, in the table's order."""
    return [name for name, f in FORMATS.items() if f.make is not None]


def guessed() -> list[str]:
    """The formats whose Minimize=guess this engine computes."""
    return [name for name, f in FORMATS.items() if f.guess is not None]

"""vfat: the boot partitions (ESP, XBOOTLDR, /boot) inside an image file, on the host:
mkfs.vfat --offset and mtools. Not an fsType: a layout's boot partitions name it.

prepare formats them (empty) for the build VM, where the bootloader writes into them;
finish copies out what the bootloader left (mtools reads the guest's disk) and makes
them again, filled in sorted order, with fixed ids and times when deterministic.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import DiskPlan, PlannedPartition
from make_disk_image.process import CommandError, StepError

logger = logging.getLogger("make_disk_image")

STEP = "FAT"
# The name layouts give their boot partitions' filesystem, parted's name for it (it sets
# the partition's type) and the Linux module that mounts it.
NAME = "vfat"
PARTED_NAME = "fat32"
KERNEL_MODULE = "vfat"
# FAT times when deterministic: 1980-01-01, the earliest time FAT can store.
FAT_EPOCH = 315532800
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
DETERMINISTIC_ENV = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(FAT_EPOCH)}
# Paths (relative to a FAT partition's root, compared case-insensitively as FAT does)
# that must not be copied into a deterministic image: systemd-boot's random seed is
# random by design, and every machine booting the image would share it; systemd-boot
# and systemd make one on first boot.
DROPPED_WHEN_DETERMINISTIC = ("loader/random-seed",)


@dataclass(frozen=True)
class FatContent:
    """A FAT filesystem's directories and files (relative paths), bytes under `copy`."""

    directories: tuple[str, ...]
    files: tuple[str, ...]
    copy: Path
    dropped: tuple[str, ...] = ()


def holds(part: PlannedPartition) -> bool:
    return part.filesystem == NAME


def partitions(plan: DiskPlan) -> list[PlannedPartition]:
    """The plan's FAT partitions."""
    return [p for p in plan.partitions if holds(p)]


def volume_id(part: PlannedPartition, *, deterministic: bool) -> str:
    """8 hex digits: from the reference's fixed partition GUIDs, or random."""
    if deterministic:
        return (part.guid or "970C694F")[:8].upper()
    return secrets.token_hex(4).upper()


def _env(deterministic: bool) -> dict[str, str]:
    return {**MTOOLS_ENV, **(DETERMINISTIC_ENV if deterministic else {})}


def _drive(image: Path, part: PlannedPartition) -> str:
    return f"{image}@@{part.offset_bytes}"


def make(image: Path, part: PlannedPartition, vol_id: str, *, deterministic: bool) -> None:
    """An empty FAT filesystem on `part` of `image`, as mkfs.vfat makes one on the device.

    mkfs.vfat picks the FAT type and cluster size from the size it finds after the
    offset, not from the size it is given: the image must end where the partition ends
    while it runs (`make_all` does that, before anything after the partition is written).
    """
    end = part.offset_bytes + part.size_bytes
    if image.stat().st_size != end:
        raise StepError(STEP, f"{image} must end at {end} bytes while {part.label} is made")
    argv = ["mkfs.vfat"]
    if deterministic:
        # --invariant before -i: it would reset the volume id otherwise.
        argv.append("--invariant")
    argv += [
        "-i", vol_id,
        "-n", part.label or "BOOT",
        # On the partition's device, mkfs.vfat takes the hidden sectors from the
        # partition's start; in an image file it must be told.
        "-h", str(part.start),
        f"--offset={part.start}",
        str(image),
        str(part.size_bytes // 1024),
    ]
    process.run(argv, step=f"{STEP}: mkfs.vfat {part.label}", env=_env(deterministic))


def make_all(
    image: Path, parts: list[PlannedPartition], volume_ids: dict[int, str], *,
    deterministic: bool, disk_size: int,
) -> None:
    """Every FAT partition of a new, still empty image file, then its full size.

    The file grows to each partition's end in turn, so mkfs.vfat sees the partition's
    size, as it would on the partition's device.
    """
    with image.open("r+b") as fh:
        for part in sorted(parts, key=lambda p: p.start):
            fh.truncate(part.offset_bytes + part.size_bytes)
            fh.flush()
            make(image, part, volume_ids[part.number], deterministic=deterministic)
        fh.truncate(disk_size)


# What mtools says, with exit status 1, when a path matches nothing: for "::/" in batch
# mode, that the root directory is empty (some mtools releases say so; Debian 12's 4.0.32
# lists nothing and exits 0). Anything else (an unreadable image, a bad boot sector, a
# missing file) is an error.
_ROOT_NOT_FOUND = ('File "::/" not found', 'mdir: File "::/" not found')


def _empty_root(exc: CommandError) -> bool:
    said = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
    return exc.returncode == 1 and len(said) == 1 and said[0] in _ROOT_NOT_FOUND


def extract(image: Path, part: PlannedPartition, dest: Path, *, deterministic: bool) -> FatContent:
    """Copy every file of the FAT filesystem on `part` into `dest` (natively, mtools)."""
    step = f"{STEP}: read {part.label}"
    drive = _drive(image, part)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listing = process.run(
            ["mdir", "-b", "-a", "-i", drive, "::/"], step=step, env=MTOOLS_ENV
        ).stdout.decode(errors="surrogateescape")
    except CommandError as exc:
        if not _empty_root(exc):
            raise
        listing = ""
    top = sorted(line for line in listing.splitlines() if line.strip())
    if top:
        process.run(
            ["mcopy", "-s", "-n", "-m", "-i", drive, *top, f"{dest}/"], step=step, env=MTOOLS_ENV
        )
    directories: list[str] = []
    files: list[str] = []
    dropped: list[str] = []
    for rel, path, st in walk(dest):
        if stat.S_ISDIR(st.st_mode):
            directories.append(rel)
        elif deterministic and rel.lower() in DROPPED_WHEN_DETERMINISTIC:
            path.unlink()
            dropped.append(rel)
            logger.info("left out /%s of %s: random by design, made on first boot", rel,
                        part.label)
        elif stat.S_ISREG(st.st_mode):
            files.append(rel)
        else:
            raise StepError(step, f"{path} is neither a file nor a directory on a FAT filesystem")
    return FatContent(tuple(directories), tuple(files), dest, tuple(dropped))


def walk(directory: Path, rel: str = "") -> list[tuple[str, Path, os.stat_result]]:
    """Everything under `directory`: parents first, siblings by name, no symlink followed."""
    found = []
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        child_rel = f"{rel}/{child.name}" if rel else child.name
        st = child.stat(follow_symlinks=False)
        found.append((child_rel, Path(child.path), st))
        if stat.S_ISDIR(st.st_mode):
            found += walk(Path(child.path), child_rel)
    return found


def fill(image: Path, part: PlannedPartition, content: FatContent, *, deterministic: bool) -> None:
    """Put `content` into the freshly made FAT filesystem on `part`: sorted."""
    step = f"{STEP}: fill {part.label}"
    drive = _drive(image, part)
    env = _env(deterministic)
    if content.directories:
        process.run(
            ["mmd", "-i", drive, *[f"::/{d}" for d in content.directories]], step=step, env=env
        )
    # One mcopy per run of files of the same directory, in sorted order. -m keeps the
    # guest's times where not deterministic (else SOURCE_DATE_EPOCH clamps them).
    for parent, group in groupby(content.files, key=lambda f: f.rpartition("/")[0]):
        sources = [str(content.copy / f) for f in group]
        process.run(
            ["mcopy", *([] if deterministic else ["-m"]), "-i", drive, *sources,
             f"::/{parent}/" if parent else "::/"],
            step=step,
            env=env,
        )


def remove_copy(content: FatContent) -> None:
    shutil.rmtree(content.copy, ignore_errors=True)

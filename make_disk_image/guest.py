"""The phase inside the build VM: root, the disk is /dev/vda, no udev.

It does what needs a kernel: FAT filesystems on the boot partitions (mkfs.vfat has no
offset option for a partition inside an image file, and the bootloader wants them
mounted), the bootloader installation through the system's own
switch-to-configuration, ownership by user names the image itself defines, and the
final ext4 tuning. When deterministic and the root filesystem had to be mounted, the
filesystems are made again from what the guest left (make_disk_image.repack).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from make_disk_image import process, repack
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, DiskPlan, PlannedPartition, Spec
from make_disk_image.prepare import NIX_DB_KEY
from make_disk_image.repack import FAT_EPOCH, FatSnapshot, RootSnapshot

logger = logging.getLogger("make_disk_image")
T = TypeVar("T")

DISK = "vda"
MOUNT_POINT = Path("/mnt")
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
# The guest's tmpfs: what the repack copies out of the filesystems before making them again.
SCRATCH = Path("/tmp")


@dataclass(frozen=True)
class Handoff:
    plan: DiskPlan
    from_prepare: bool  # False: derived from the spec, the sizes are not the disk's
    nix_db_files: dict[str, Path]  # prepare's Nix database files, for the repack


def load_handoff(spec: Spec, handoff: Path | None) -> Handoff:
    if handoff is not None and handoff.is_file():
        data = json.loads(handoff.read_text())
        kept = data.pop(NIX_DB_KEY, {})
        return Handoff(
            DiskPlan.from_json(data),
            True,
            {name: handoff.parent / rel for name, rel in kept.items()},
        )
    # Numbers, roles and labels do not depend on the disk size.
    logger.info("no handoff file; deriving the layout from the spec")
    plan = plan_disk(spec, spec.diskSize * MIB if spec.diskSize else 4096 * MIB, None)
    return Handoff(plan, False, {})


def device(dev_root: Path, number: int | None) -> Path:
    return dev_root / (f"{DISK}{number}" if number else DISK)


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise process.StepError(
                "guest", f"{path} did not appear; is the disk attached as the first virtio disk?"
            )
        time.sleep(0.1)


def link_block_devices(dev_root: Path) -> None:
    """/dev/block/MAJ:MIN for the disk and its partitions, as udev would make them.

    systemd-boot's installer (bootctl) finds the ESP through these links. There is no
    udev daemon in the build VM; libudev (pyudev) enumerates sysfs directly, so the
    numbers are the kernel's, not assumed (the reference hard-codes 254:1).
    """
    import pyudev

    block = dev_root / "block"
    block.mkdir(exist_ok=True)
    found = False
    for dev in pyudev.Context().list_devices(subsystem="block"):
        parent = dev.find_parent("block")
        if dev.sys_name != DISK and (parent is None or parent.sys_name != DISK):
            continue
        found = found or dev.sys_name == DISK
        link = block / f"{dev.properties['MAJOR']}:{dev.properties['MINOR']}"
        if not link.is_symlink() and not link.exists():
            link.symlink_to(dev_root / dev.sys_name)
            logger.info("linked %s -> %s", link, dev_root / dev.sys_name)
    if not found:
        raise process.StepError("guest", f"no block device {DISK} in this VM (sysfs)")


def link_boot_devices(spec: Spec, dev_root: Path) -> None:
    """The target system may name its boot disk otherwise (/dev/sda, by-id); here it is vda."""
    disk = dev_root / DISK
    devices = list(spec.grubDevices)
    if spec.limineBiosDevice:
        devices.append(spec.limineBiosDevice)
    for name in devices:
        # "nodev" (GRUB on EFI only) is no device at all.
        if not name.startswith("/") or Path(name) == disk:
            continue
        link = Path(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and not link.exists():
            link.symlink_to(disk)


def make_fat(part: PlannedPartition, dev: Path, *, deterministic: bool) -> None:
    # FAT volume ids when deterministic, from the reference's fixed partition GUIDs.
    argv = ["mkfs.vfat"]
    env = {}
    if deterministic:
        volume_id = (part.guid or "970C694F")[:8]
        argv += ["--invariant", "-i", volume_id]
        env = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(FAT_EPOCH)}
    argv += ["-n", part.label or "BOOT", str(dev)]
    process.run(argv, step=f"guest: mkfs.vfat {part.label}", env=env)


def tune_root(spec: Spec, dev: Path) -> None:
    """The reference's final tuning: no forced checks, times resize2fs accepts.

    One tune2fs run. The reference also runs `tune2fs -U rootFSUID` before mounting and
    again at the end, then a third time for the check time; here mke2fs already wrote
    the UUID (and the hash seed) when deterministic, so one call sets the rest, with the
    last check at 1970-01-01 as the reference leaves it.
    """
    if spec.fsType != "ext4":
        return
    if spec.deterministic:
        args, env = ["-T", "19700101"], {"E2FSPROGS_FAKE_TIME": "1"}
    else:
        args, env = ["-T", "now"], {}
    process.run(["tune2fs", *args, "-c", "0", "-i", "0", str(dev)], step="guest: tune2fs", env=env)


def nixos_enter(args: list[str], *, step: str, env: dict[str, str] | None = None) -> None:
    process.run(["nixos-enter", "--root", str(MOUNT_POINT), "--", *args], step=step, env=env)


def check_repack_inputs(handoff: Handoff) -> None:
    """The repack needs prepare's sizes and Nix database: fail before any slow work."""
    if not handoff.from_prepare:
        raise process.StepError(
            repack.STEP,
            "a deterministic build whose guest mounts the root filesystem needs prepare's "
            "handoff file (pass --handoff xchg/make-disk-image.json)",
        )
    missing = [str(p) for p in handoff.nix_db_files.values() if not p.is_file()]
    if not handoff.nix_db_files or missing:
        raise process.StepError(
            repack.STEP,
            "the handoff file names no readable Nix database files "
            f"({', '.join(missing) or 'none listed'}); run this version's prepare first",
        )


def guest(
    spec: Spec,
    handoff_file: Path | None,
    *,
    dev_root: Path = Path("/dev"),
) -> None:
    handoff = load_handoff(spec, handoff_file)
    plan = handoff.plan
    root_dev = device(dev_root, plan.root_number)
    wait_for(root_dev)
    # The kernel's ext4 allocates inodes with some randomness (Orlov) and writes real
    # times, vfat writes real times: the root filesystem is mounted only when the
    # bootloader or owners given by name need it, and a deterministic build then makes
    # the filesystems again from what was written.
    needs_mount = repack.guest_mounts_root(spec)
    repacking = repack.repacks(spec)
    if repacking:
        check_repack_inputs(handoff)
    link_block_devices(dev_root)

    boot_partitions = sorted(
        (p for p in plan.partitions if p.filesystem),
        key=lambda p: (p.mountpoint or "").count("/"),
    )
    for part in boot_partitions:
        make_fat(part, device(dev_root, part.number), deterministic=spec.deterministic)
    if not needs_mount:
        tune_root(spec, root_dev)
        return

    fat_snapshots: dict[int, FatSnapshot] = {}
    root_snapshot: RootSnapshot | None = None
    scratch = Path(tempfile.mkdtemp(prefix="mdi-repack-", dir=SCRATCH)) if repacking else None
    MOUNT_POINT.mkdir(exist_ok=True)
    process.run(["mount", str(root_dev), str(MOUNT_POINT)], step="guest: mount root")
    try:
        for part in boot_partitions:
            process.run(
                ["mount", str(device(dev_root, part.number)), str(mount_point(part))],
                step=f"guest: mount {part.label}",
            )
        if spec.touchEFIVars:
            mount_efivarfs()
        (MOUNT_POINT / "etc/nixos").mkdir(parents=True, exist_ok=True)
        if spec.installBootLoader:
            link_boot_devices(spec, dev_root)
            # HOME: systemd-boot's builder runs nix-env, which would otherwise create
            # /homeless-shelter in the image.
            nixos_enter(
                [f"{SYSTEM_PROFILE}/bin/switch-to-configuration", "boot"],
                step="guest: switch-to-configuration boot",
                env={"NIXOS_INSTALL_BOOTLOADER": "1", "HOME": os.environ.get("TMPDIR", "/tmp")},
            )
        for entry in spec.contents:
            if entry.needs_guest_chown:
                # Names resolve against the image's own /etc/passwd, hence nixos-enter.
                nixos_enter(
                    ["chown", "-R", f"{entry.user}:{entry.group}", entry.target],
                    step=f"guest: chown {entry.target}",
                )
        if scratch is not None:
            # Deepest first: with a FAT partition unmounted, the directory it covered on
            # the root filesystem is what the root's walk must see.
            for part in reversed(boot_partitions):
                where = mount_point(part)
                fat_snapshots[part.number] = timed(
                    f"copied the {part.label} partition",
                    partial(repack.snapshot_fat, where, scratch / f"fat-{part.number}"),
                )
                process.run(["umount", str(where)], step=f"guest: umount {part.label}")
            prepared = timed(
                "listed prepare's tree",
                partial(repack.prepared_tree, spec, handoff.nix_db_files),
            )
            root_snapshot = timed(
                "walked the root filesystem",
                lambda: repack.snapshot_root(MOUNT_POINT, prepared, scratch / "root"),
            )
            logger.info(
                "repack: %d entries, %d files from prepare's sources, %d files (%d bytes) "
                "written in the guest",
                len(root_snapshot.entries),
                root_snapshot.reused,
                root_snapshot.copied,
                root_snapshot.copied_bytes,
            )
    finally:
        process.run(["umount", "-R", str(MOUNT_POINT)], step="guest: umount")

    if root_snapshot is not None:
        for part in boot_partitions:
            timed(
                f"made the {part.label} partition again",
                partial(
                    remake_fat, part, device(dev_root, part.number), fat_snapshots[part.number]
                ),
            )
        timed(
            "made the root filesystem again",
            partial(repack.make_root, root_dev, plan, root_snapshot),
        )
    tune_root(spec, root_dev)


def remake_fat(part: PlannedPartition, dev: Path, snapshot: FatSnapshot) -> None:
    repack.zero_device(dev)
    make_fat(part, dev, deterministic=True)
    repack.fill_fat(dev, snapshot)


def mount_point(part: PlannedPartition) -> Path:
    assert part.mountpoint is not None
    where = MOUNT_POINT / part.mountpoint.lstrip("/")
    where.mkdir(parents=True, exist_ok=True)
    return where


def timed(what: str, func: Callable[[], T]) -> T:
    started = time.monotonic()
    result = func()
    logger.info("repack: %s in %.1f s", what, time.monotonic() - started)
    return result


def mount_efivarfs() -> None:
    efivars = Path("/sys/firmware/efi/efivars")
    mounts = Path("/proc/mounts").read_text()
    if f" {efivars} efivarfs " in mounts:
        return
    process.run(["mount", "-t", "efivarfs", "efivarfs", str(efivars)], step="guest: mount efivarfs")

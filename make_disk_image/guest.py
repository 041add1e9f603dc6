"""The phase inside the build VM: root, the disk is /dev/vda, no udev.

It does what needs a kernel: FAT filesystems on the boot partitions (mkfs.vfat has no
offset option for a partition inside an image file, and the bootloader wants them
mounted), the bootloader installation through the system's own
switch-to-configuration, ownership by user names the image itself defines, and the
final ext4 tuning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from make_disk_image import process
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, DiskPlan, PlannedPartition, Spec

logger = logging.getLogger("make_disk_image")

DISK = "vda"
MOUNT_POINT = Path("/mnt")
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
# FAT volume ids when deterministic, from the reference's fixed partition GUIDs.
FAT_EPOCH = 315532800  # 1980-01-01, the earliest time FAT can store


def load_plan(spec: Spec, handoff: Path | None) -> DiskPlan:
    if handoff is not None and handoff.is_file():
        return DiskPlan.from_json(json.loads(handoff.read_text()))
    # Numbers, roles and labels do not depend on the disk size.
    logger.info("no handoff file; deriving the layout from the spec")
    return plan_disk(spec, spec.diskSize * MIB if spec.diskSize else 4096 * MIB, None)


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
    argv = ["mkfs.vfat"]
    env = {}
    if deterministic:
        volume_id = (part.guid or "970C694F")[:8]
        argv += ["--invariant", "-i", volume_id]
        env = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(FAT_EPOCH)}
    argv += ["-n", part.label or "BOOT", str(dev)]
    process.run(argv, step=f"guest: mkfs.vfat {part.label}", env=env)


def tune_root(spec: Spec, dev: Path, *, final: bool) -> None:
    """The reference's tune2fs calls: fixed UUID, no forced checks, resize2fs-able times."""
    if spec.fsType != "ext4":
        return
    uuid = ["-U", spec.rootFSUID] if spec.deterministic and spec.rootFSUID else []
    env = {"E2FSPROGS_FAKE_TIME": "1"} if spec.deterministic else {}
    process.run(
        ["tune2fs", "-T", "now", *uuid, "-c", "0", "-i", "0", str(dev)],
        step="guest: tune2fs",
        env=env,
    )
    if final and spec.deterministic:
        process.run(["tune2fs", "-f", "-T", "19700101", str(dev)], step="guest: tune2fs", env=env)


def reset_mount_traces(dev: Path) -> None:
    """Mounting writes times, a path and counters into the superblock; put them back."""
    commands = "\n".join(
        [
            "ssv mtime 0",
            "ssv wtime 1",
            "ssv mnt_count 0",
            'ssv last_mounted ""',
            "ssv kbytes_written 0",
            "ssv lastcheck 0",
        ]
    )
    process.run(
        ["debugfs", "-w", "-f", "-", str(dev)],
        step="guest: debugfs",
        input=commands.encode(),
        env={"E2FSPROGS_FAKE_TIME": "1"},
    )


def nixos_enter(args: list[str], *, step: str, env: dict[str, str] | None = None) -> None:
    process.run(["nixos-enter", "--root", str(MOUNT_POINT), "--", *args], step=step, env=env)


def guest(
    spec: Spec,
    handoff: Path | None,
    *,
    dev_root: Path = Path("/dev"),
) -> None:
    plan = load_plan(spec, handoff)
    root_dev = device(dev_root, plan.root_number)
    wait_for(root_dev)
    if spec.deterministic:
        tune_root(spec, root_dev, final=False)
    link_block_devices(dev_root)

    boot_partitions = sorted(
        (p for p in plan.partitions if p.filesystem),
        key=lambda p: (p.mountpoint or "").count("/"),
    )
    for part in boot_partitions:
        make_fat(part, device(dev_root, part.number), deterministic=spec.deterministic)
    # The kernel's ext4 allocates inodes with some randomness (Orlov) and writes real
    # times: the root filesystem is mounted only when the bootloader or owners given by
    # name need it, so that other deterministic images stay bit-identical.
    needs_mount = spec.installBootLoader or any(c.needs_guest_chown for c in spec.contents)
    if needs_mount:
        MOUNT_POINT.mkdir(exist_ok=True)
        process.run(["mount", str(root_dev), str(MOUNT_POINT)], step="guest: mount root")
        try:
            for part in boot_partitions:
                dev = device(dev_root, part.number)
                assert part.mountpoint is not None
                where = MOUNT_POINT / part.mountpoint.lstrip("/")
                where.mkdir(parents=True, exist_ok=True)
                process.run(["mount", str(dev), str(where)], step=f"guest: mount {part.label}")
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
        finally:
            process.run(["umount", "-R", str(MOUNT_POINT)], step="guest: umount")
        if spec.fsType == "ext4" and spec.deterministic:
            reset_mount_traces(root_dev)
    tune_root(spec, root_dev, final=True)


def mount_efivarfs() -> None:
    efivars = Path("/sys/firmware/efi/efivars")
    mounts = Path("/proc/mounts").read_text()
    if f" {efivars} efivarfs " in mounts:
        return
    process.run(["mount", "-t", "efivarfs", "efivarfs", str(efivars)], step="guest: mount efivarfs")

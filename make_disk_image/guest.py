"""The phase inside the build VM: root, the disk is /dev/vda, no udev.

It does only what needs a kernel and the image's own tools: it mounts the filesystems
prepare made, installs the bootloader through the system's own
switch-to-configuration (nixos-enter), sets owners given by names the image itself
defines, and records what changed (make_disk_image.changes) for finish, which makes
the final filesystems natively. No mkfs, no copy of the closure: the root filesystem
prepare made holds only mount points for the store paths, over which the guest binds
the store the VM shares (make_disk_image.storebind); its time does not grow with the
closure's bytes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from make_disk_image import efiboot, process, storebind
from make_disk_image.changes import record_changes
from make_disk_image.handoff import write_record
from make_disk_image.interface import FS_TYPES
from make_disk_image.models import GuestRecord, Handoff, PlannedPartition, Spec
from make_disk_image.process import StepError

logger = logging.getLogger("make_disk_image")

DISK = "vda"
MOUNT_POINT = Path("/mnt")
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


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


def nixos_enter(args: list[str], *, step: str, env: dict[str, str] | None = None) -> None:
    process.run(["nixos-enter", "--root", str(MOUNT_POINT), "--", *args], step=step, env=env)


def chown_command(user: str, group: str, target: str, root: Path = MOUNT_POINT) -> list[str]:
    """chown by the image system's own binary, not whatever the caller's PATH has.

    nixos-enter keeps the caller's PATH (nixpkgs' puts only util-linux in front), so a
    bare `chown` would be the build VM's. The system profile's sw/bin is the image's
    /run/current-system/sw/bin; its store path is the same inside the chroot.
    """
    chown = f"{SYSTEM_PROFILE}/sw/bin/chown"
    if not os.path.exists(f"{root}{chown}"):
        logger.info("guest: the image system has no %s; using chown from PATH", chown)
        chown = "chown"
    return [chown, "-R", f"{user}:{group}", target]


def guest(spec: Spec, handoff: Handoff, xchg: Path, *, dev_root: Path = Path("/dev")) -> None:
    started = time.monotonic()
    if not handoff.guest_mounts:
        # Nothing needs the image's kernel: finish makes the filesystems from the tree.
        logger.info("guest: no bootloader to install and no owners by name; nothing to do")
        write_record(xchg, GuestRecord(mounted=False))
        return
    plan = handoff.plan
    root_dev = device(dev_root, plan.root_number)
    wait_for(root_dev)
    link_block_devices(dev_root)
    boot_partitions = sorted(
        (p for p in plan.partitions if p.filesystem),
        key=lambda p: (p.mountpoint or "").count("/"),
    )
    seconds: dict[str, float] = {}
    MOUNT_POINT.mkdir(exist_ok=True)
    load_filesystem(plan.fs_type)
    process.run(["mount", str(root_dev), str(MOUNT_POINT)], step="guest: mount root")
    try:
        store_bound = storebind.bind_store_paths(handoff.store_names, MOUNT_POINT)
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
            mark = time.monotonic()
            # HOME: systemd-boot's builder runs nix-env, which would otherwise create
            # /homeless-shelter in the image.
            nixos_enter(
                [f"{SYSTEM_PROFILE}/bin/switch-to-configuration", "boot"],
                step="guest: switch-to-configuration boot",
                env={"NIXOS_INSTALL_BOOTLOADER": "1", "HOME": os.environ.get("TMPDIR", "/tmp")},
            )
            seconds["bootloader"] = time.monotonic() - mark
            esp = next((p for p in plan.partitions if p.role == "esp"), None)
            if spec.touchEFIVars and esp is not None:
                # systemd >= 257's bootctl skips EFI variables inside nixos-enter's PID
                # namespace: make sure the firmware gets its boot entry all the same.
                efiboot.ensure_boot_entry(mount_point(esp), esp, dev_root / DISK)
        for entry in spec.contents:
            if entry.needs_guest_chown:
                assert entry.user is not None and entry.group is not None
                # Names resolve against the image's own /etc/passwd, hence nixos-enter.
                nixos_enter(
                    chown_command(entry.user, entry.group, entry.target),
                    step=f"guest: chown {entry.target}",
                )
        # Deepest first: with a FAT partition unmounted, the directory it covered on the
        # root filesystem is what the record must see. finish reads the FAT partitions
        # from the disk itself.
        for part in reversed(boot_partitions):
            process.run(["umount", str(mount_point(part))], step=f"guest: umount {part.label}")
        storebind.unbind(store_bound)
        mark = time.monotonic()
        record = record_changes(MOUNT_POINT, handoff, xchg)
        seconds["record"] = time.monotonic() - mark
    finally:
        process.run(["umount", "-R", str(MOUNT_POINT)], step="guest: umount")
    process.run(["sync"], step="guest: sync")
    seconds["guest"] = time.monotonic() - started
    write_record(xchg, GuestRecord(True, record.entries, record.store_walked, seconds))
    logger.info(
        "guest: done in %.1f s (%s)",
        seconds["guest"],
        ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != "guest"),
    )


def mount_point(part: PlannedPartition) -> Path:
    assert part.mountpoint is not None
    where = MOUNT_POINT / part.mountpoint.lstrip("/")
    where.mkdir(parents=True, exist_ok=True)
    return where


def mount_efivarfs() -> None:
    efivars = Path("/sys/firmware/efi/efivars")
    mounts = Path("/proc/mounts").read_text()
    if f" {efivars} efivarfs " in mounts:
        return
    process.run(["mount", "-t", "efivarfs", "efivarfs", str(efivars)], step="guest: mount efivarfs")


def load_filesystem(fs_type: str) -> None:
    """The root filesystem's driver, unless the kernel has it already.

    nixpkgs' build VM loads its rootModules (default.nix adds the fsType's kernelModule
    from interface.json there); the stand-in's loads ext4 and vfat, and the guest sees
    the kernel's modules to load more.
    """
    known = Path("/proc/filesystems").read_text().split()
    if fs_type in known:
        return
    module = FS_TYPES[fs_type].kernel_module
    try:
        process.run(["modprobe", module], step="guest: load the root filesystem's driver")
    except StepError as exc:
        raise StepError(
            "guest: mount root",
            f"the build VM's kernel has no {fs_type} driver and cannot load one ({exc}); "
            f"give the VM the {module} module (vmTools rootModules)",
        ) from exc

"""installBootLoader for image.repart images: the system's own switch-to-configuration,
run inside a VM on the built image, as make-disk-image's guest phase runs it.

The host side writes what the guest needs (guest.json: which partition is mounted where,
the toplevel, GRUB's devices) and starts the VM with the image as /dev/vda; the guest
side (`python3 -m make_disk_image.repart.bootloader GUEST.json`) mounts the partitions,
links the block devices and GRUB's device names, and runs
`switch-to-configuration boot` through nixos-enter. The boot loader writes into the
filesystems in place: those it touches (the ESP, the root's /boot) are no longer
bit-identical from build to build; the others are.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from make_disk_image import guest, process
from make_disk_image.process import StepError
from make_disk_image.repart.spec import RepartSpec

logger = logging.getLogger("make_disk_image")
STEP = "repart boot loader"
GUEST_FILE = "guest.json"
GUEST_DIR = "/tmp/build"


def guest_plan(spec: RepartSpec) -> dict[str, object]:
    assert spec.boot_loader is not None
    numbers = {name: i + 1 for i, name in enumerate(sorted(spec.partitions))}
    return {
        "toplevel": spec.boot_loader.toplevel,
        "mounts": {str(numbers[n]): m for n, m in spec.boot_loader.mount_points.items()},
        "grubDevices": list(spec.boot_loader.grub_devices),
    }


def install_in_vm(spec: RepartSpec, image: Path, work: Path) -> None:
    from make_disk_image import runner
    from make_disk_image.hostkernel import host_guest

    (work / GUEST_FILE).write_text(json.dumps(guest_plan(spec)))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/tmp",
           "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    argv = [sys.executable, "-m", "make_disk_image.repart.bootloader",
            f"{GUEST_DIR}/{GUEST_FILE}"]
    status = runner.run_in_vm(argv, host_guest(), disk=image, env=env, cwd=GUEST_DIR,
                              shares=[runner.Share(host=work, guest=GUEST_DIR)])
    if status != 0:
        raise StepError(STEP, f"switch-to-configuration failed in the VM (exit {status}); "
                        "its output is above")


def install(plan: dict[str, object], dev_root: Path = Path("/dev")) -> None:
    """Inside the VM: mount, install the boot loader, unmount."""
    mounts = {int(k): str(v) for k, v in dict(plan["mounts"]).items()}  # type: ignore[call-overload]
    root_number = next(n for n, m in mounts.items() if m == "/")
    root = guest.device(dev_root, root_number)
    guest.wait_for(root)
    guest.link_block_devices(dev_root)
    mounted: list[Path] = []
    guest.MOUNT_POINT.mkdir(exist_ok=True)
    process.run(["mount", str(root), str(guest.MOUNT_POINT)], step=f"{STEP}: mount /")
    try:
        for number, where in sorted(mounts.items(), key=lambda item: item[1].count("/")):
            if where == "/":
                continue
            target = guest.MOUNT_POINT / where.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            process.run(["mount", str(guest.device(dev_root, number)), str(target)],
                        step=f"{STEP}: mount {where}")
            mounted.append(target)
        disk = dev_root / guest.DISK
        for name in plan.get("grubDevices") or []:  # type: ignore[attr-defined]
            link = Path(str(name))
            if name != "nodev" and link != disk and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(disk)
        guest.nixos_enter([f"{guest.SYSTEM_PROFILE}/bin/switch-to-configuration", "boot"],
                          step=f"{STEP}: switch-to-configuration boot",
                          env={"NIXOS_INSTALL_BOOTLOADER": "1", "HOME": "/tmp"})
    finally:
        for target in reversed(mounted):
            process.run(["umount", str(target)], step=f"{STEP}: umount")
        process.run(["umount", str(guest.MOUNT_POINT)], step=f"{STEP}: umount /")
        process.run(["sync"], step=f"{STEP}: sync")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="make-disk-image-repart: %(message)s")
    install(json.loads(Path(sys.argv[1]).read_text()))

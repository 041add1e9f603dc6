"""Run one command as root inside a throw-away qemu guest, and return its exit status.

Given a kernel, its modules, a busybox (static, or dynamically linked with its
interpreter and libraries readable at their paths), a root directory, shares and a disk, the
guest boots the kernel with a small busybox initramfs, mounts the root directory
read-only over 9p (in a tmpfs, so that shares can be mounted anywhere), puts fresh
devtmpfs/proc/sysfs/tmpfs mounts inside it, chroots there and runs the command. The
only writable things are the disk image, the tmpfs mounts and the shares asked for.
Where the kernel and the root come from is the caller's business: a Nix build passes
packages, `make-disk-image build` the host's own (make_disk_image.hostkernel).
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .filesystems import vm_kernel_modules
from .guestinit import command_snippet, run_init_script
from .initramfs import build_initramfs, check_busybox
from .kernel import Kernel, pvh_kernel
from .platforms import Platform
from .process import StepError
from .qemu import Share, qemu_command, stream_qemu

logger = logging.getLogger("make_disk_image")

STEP = "vm"

__all__ = ["DEFAULT_MODULES", "Guest", "Share", "run_in_vm"]

# What a guest needs to reach a disk, the root directory and the shares, and to format
# and mount ESPs and ext4 roots. Anything else can be modprobed from inside the guest
# where the root directory holds the kernel's modules.
DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "crc32c",
    *vm_kernel_modules(),
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859-1",
    "efivarfs",
    "loop",
)


@dataclass(frozen=True)
class Guest:
    """What the guest is: its machine, the kernel it boots, the busybox its initramfs
    runs (static, of the guest's architecture) and the directory it sees as its root
    (read-only: programs of the guest's architecture)."""

    platform: Platform
    kernel: Kernel
    busybox: Path
    root: Path

    def check(self) -> None:
        self.kernel.check()
        check_busybox(self.busybox)
        if not self.root.is_dir():
            raise StepError(STEP, f"root directory {self.root} is not a directory")


def uses_firmware(qemu_opts: Sequence[str]) -> bool:
    """Whether the extra options bring their own firmware (OVMF pflash, -bios).

    OVMF boots only an EFI-stub bzImage (and makes the guest a UEFI one); the PVH
    shortcut would bypass it.
    """
    return any(opt in ("-bios", "-pflash") or "if=pflash" in opt for opt in qemu_opts)


def _check_inputs(argv: Sequence[str], shares: Sequence[Share], disk: Path | None) -> None:
    if not argv:
        raise StepError(STEP, "no command given to run in the VM")
    for share in shares:
        if not share.guest.startswith("/") or any(c.isspace() for c in share.guest):
            raise StepError(
                STEP, f"share guest path must be absolute without spaces: {share.guest!r}"
            )
        if not share.host.is_dir():
            raise StepError(STEP, f"share {share.host} is not a directory")
    if disk is not None and not disk.is_file():
        raise StepError(STEP, f"disk image {disk} does not exist")


def _write_control(
    control_dir: Path, root: Path, argv: Sequence[str], env: Mapping[str, str], cwd: str,
    shares: Sequence[Share],
) -> None:  # fmt: skip
    """What the guest's init reads from the control share (make_disk_image.guestinit)."""
    (control_dir / "command").write_text(command_snippet(argv, env, cwd))
    lines = [f"share{i} {s.guest} {'rw' if s.writable else 'ro'}\n" for i, s in enumerate(shares)]
    (control_dir / "shares").write_text("".join(lines))
    entries = sorted(entry.name for entry in root.iterdir())
    (control_dir / "root-entries").write_text("".join(f"/{name}\n" for name in entries))


def _status(control_dir: Path, tail: str) -> int:
    status_file = control_dir / "status"
    if not status_file.is_file():
        raise StepError(
            STEP,
            "the guest stopped without reporting the command's exit status; "
            f"last console output:\n{tail}",
        )
    kind, _, value = status_file.read_text().strip().partition(" ")
    if kind == "exit" and value.isdigit():
        logger.info("[%s] guest command exited with status %s", STEP, value)
        return int(value)
    raise StepError(STEP, f"guest setup failed: {value or kind}")


def run_in_vm(
    argv: Sequence[str],
    guest: Guest,
    *,
    disk: Path | None = None,
    shares: Sequence[Share] = (),
    env: Mapping[str, str] = {},
    cwd: str = "/",
    mem_mib: int = 1024,
    qemu_opts: Sequence[str] = (),
    timeout: float = 900,
    log: IO[str] | None = None,
    accel: str = "tcg",
) -> int:
    """Run `argv` as root in a qemu guest and return its exit status.

    The guest sees `disk` as /dev/vda (partitions as /dev/vdaN), `guest.root` read-only
    as its root, fresh tmpfs on /tmp, /run and /mnt, and each share over its guest path.
    The command gets exactly `env` (PATH defaults to guestinit.DEFAULT_PATH), runs in
    `cwd`, reads /dev/null; its output and the guest kernel's messages stream to `log`
    (stderr by default). `accel`: qemu's accelerators, "kvm:tcg" as nixpkgs' qemu-kvm.
    Raises StepError on timeout or when the guest ends without having run the command
    to completion.
    """
    _check_inputs(argv, shares, disk)
    guest.check()
    kernel_image = guest.kernel.image
    if guest.platform.pvh and not uses_firmware(qemu_opts):
        kernel_image = pvh_kernel(kernel_image) or kernel_image
    initramfs = build_initramfs(
        run_init_script(guest.kernel.version),
        kernel=guest.kernel,
        modules=DEFAULT_MODULES,
        busybox=guest.busybox,
    )
    with tempfile.TemporaryDirectory(prefix="make-disk-image-vm-") as control:
        control_dir = Path(control)
        _write_control(control_dir, guest.root, argv, env, cwd, shares)
        qemu = qemu_command(
            platform=guest.platform, kernel=kernel_image, initramfs=initramfs,
            root=guest.root, control_dir=control_dir, disk=disk, shares=shares,
            mem_mib=mem_mib, qemu_opts=qemu_opts, accel=accel,
        )  # fmt: skip
        logger.info("[%s] $ %s", STEP, shlex.join(qemu))
        logger.info("[%s] guest command: %s (cwd %s)", STEP, shlex.join(argv), cwd)
        tail = stream_qemu(qemu, log if log is not None else sys.stderr, timeout)
        return _status(control_dir, tail)

"""Boot a built image under qemu (TCG) with SeaBIOS or OVMF and check what it reports.

The image's boot loader loads the test system's kernel and initramfs; the initramfs
(scripts/stage-1-init.sh) mounts the root by label and prints "MDI-REPORT ..." lines on
the serial console, then switches to the system's stage 2, which prints its version
and powers off. `boot_image` runs that boot bounded by a timeout and parses the report
(testsys.guest_report); testsys.report_check compares a report with the SPEC.json the
image was built from.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from make_disk_image.platforms import Platform, host_platform, platform_for
from testsys.guest_report import BootError as BootError  # raised by boot_image
from testsys.guest_report import GuestReport, parse_report

Firmware = Literal["bios", "uefi"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's qemu-efi-aarch64: edk2 for qemu's virt board, both padded to its 64 MiB banks.
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
# (code, empty variable store) of each system's UEFI firmware.
UEFI_FIRMWARE: dict[str, tuple[Path, Path]] = {
    "x86_64-linux": (OVMF_CODE, OVMF_VARS),
    "aarch64-linux": (AAVMF_CODE, AAVMF_VARS),
}

# Firmware messages that mean nothing will boot: stop waiting for the timeout.
NO_BOOT_MARKERS = (
    "No bootable device",  # SeaBIOS (on its debug console)
    "No bootable option or device was found",  # OVMF's BDS
    "UEFI Interactive Shell",  # OVMF's last boot option, after the disk's failed
    "Kernel panic",
)
# The kernel's first console line: a boot loader that works gets here within seconds.
KERNEL_STARTED = "Linux version"

QEMU_FORMATS = {
    ".img": "raw",
    ".raw": "raw",
    ".qcow2": "qcow2",
    ".vhd": "vpc",
    ".vdi": "vdi",
    ".vmdk": "vmdk",
    ".vhdx": "vhdx",
}


@dataclass(frozen=True)
class BootResult:
    report: GuestReport
    serial: str
    seconds: float


def qemu_format(image: Path) -> str:
    """The qemu block driver for an image file, by make-disk-image's file extensions."""
    try:
        return QEMU_FORMATS[image.suffix]
    except KeyError:
        raise ValueError(f"unknown image format of {image} (extension {image.suffix!r})") from None


def qemu_command(
    image: Path,
    *,
    firmware: Firmware,
    image_format: str,
    efi_vars: Path | None,
    debug_log: Path,
    memory_mib: int,
    platform: Platform | None = None,
) -> list[str]:
    plat = platform or host_platform()
    argv = [
        plat.qemu_binary,
        "-accel",
        "tcg",
        # The build VM's cpu (interface.json's platforms say why aarch64's is not plain max).
        "-cpu",
        plat.qemu_cpu,
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        # snapshot=on: the boot never writes to the image under test.
        "-drive",
        f"file={str(image).replace(',', ',,')},if=virtio,format={image_format},snapshot=on",
    ]
    if not plat.bios:
        # No ISA bus for the firmware's debug port: the firmware writes to the serial
        # console, where the markers are found too.
        if firmware != "uefi":
            raise ValueError(f"{plat.system} machines boot only through UEFI")
        code, _ = UEFI_FIRMWARE[plat.system]
        if efi_vars is None:
            raise ValueError("UEFI boot needs a writable EFI variable store")
        return argv + [
            "-machine",
            plat.qemu_machine,
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars}",
        ]
    argv += [
        "-chardev",
        f"file,id=firmware-debug,path={debug_log}",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=firmware-debug",
    ]
    if firmware == "uefi":
        if efi_vars is None:
            raise ValueError("UEFI boot needs a writable EFI variable store")
        argv += [
            "-machine",
            "q35",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars}",
        ]
    else:
        argv += ["-machine", "pc"]
    return argv


def boot_image(
    image: Path,
    *,
    firmware: Firmware,
    efi_vars: Path | None = None,
    image_format: str | None = None,
    timeout: float = 180,
    kernel_timeout: float = 60,
    memory_mib: int = 512,
    serial_log: Path | None = None,
    system: str | None = None,
) -> BootResult:
    """Boot `image` until the guest powers off, at most `timeout` seconds; parse its report.

    The kernel must have started within `kernel_timeout` seconds: a disk whose boot
    sector holds no loader can hang the firmware without any message.

    UEFI boots use a copy of `efi_vars` (the image's efi-vars.fd when it was built with
    touchEFIVars), or of OVMF's empty variable store. The serial console is also written
    to `serial_log` when given. Raises BootError when the guest does not report.
    `system`: the image's architecture (the host's by default): its qemu and firmware.
    """
    plat = platform_for(system) if system else host_platform()
    fmt = image_format or qemu_format(image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="testsys-boot-") as scratch:
        vars_copy: Path | None = None
        if firmware == "uefi":
            vars_copy = Path(scratch) / "efi-vars.fd"
            shutil.copyfile(efi_vars or UEFI_FIRMWARE[plat.system][1], vars_copy)
            vars_copy.chmod(0o644)
        debug_log = Path(scratch) / "firmware-debug.log"
        argv = qemu_command(
            image,
            firmware=firmware,
            image_format=fmt,
            efi_vars=vars_copy,
            debug_log=debug_log,
            memory_mib=memory_mib,
            platform=plat,
        )
        serial, failure = _run_qemu(
            argv, timeout=timeout, kernel_timeout=kernel_timeout, debug_log=debug_log
        )
    if serial_log is not None:
        serial_log.write_text(serial)
    if failure:
        raise BootError(failure, serial)
    report = parse_report(serial)
    return BootResult(report=report, serial=serial, seconds=time.monotonic() - started)


def _run_qemu(
    argv: Sequence[str], *, timeout: float, kernel_timeout: float, debug_log: Path
) -> tuple[str, str | None]:
    """Run qemu until it exits; return (serial output, failure message or None)."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    started = time.monotonic()
    deadline = started + timeout
    kernel_started = False
    failure: str | None = None
    try:
        fd = proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = f"no power-off within {timeout:g} s"
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            # The whole console so far: firmware menus redraw the screen after a message.
            seen = b"".join(chunks).decode(errors="replace")
            kernel_started = kernel_started or KERNEL_STARTED in seen
            if not kernel_started and time.monotonic() - started > kernel_timeout:
                failure = f"no kernel started within {kernel_timeout:g} s"
                break
            debug = debug_log.read_text(errors="replace") if debug_log.exists() else ""
            marker = next((m for m in NO_BOOT_MARKERS if m in seen or m in debug), None)
            if marker is not None:
                failure = f"the firmware or kernel gave up: {marker!r}"
                break
        if failure is None:
            proc.wait(timeout=30)
            if proc.returncode != 0:
                failure = f"qemu exited with status {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    serial = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return serial, failure

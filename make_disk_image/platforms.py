"""The architectures an image can be built for, as data.

An image's architecture is that of its NixOS system (`config.nixpkgs.hostPlatform`,
the spec's `system`), not the builder's. Everything that grows with the closure runs
natively on the builder whatever the image's architecture; only the guest phase runs
in a VM of the image's architecture (qemu TCG when it differs from the builder's).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from make_disk_image.process import StepError


@dataclass(frozen=True)
class Platform:
    """What building and booting an image of one architecture needs to know."""

    system: str  # Nix's name: "x86_64-linux"
    machine: str  # uname -m / platform.machine()
    debian_arch: str  # dpkg's name, for the test system's packages
    qemu_binary: str  # nixos/lib/qemu-common.nix's qemuBinary picks by the same system
    qemu_machine: str  # -machine
    qemu_cpu: str  # -cpu
    qemu_package: str  # the Debian package holding qemu_binary
    console: str  # the serial console device the guest kernel writes to
    efi_arch: str  # UEFI's short name in removable-media paths (BOOTX64.EFI, BOOTAA64.EFI)
    grub_efi_target: str  # grub-install/grub-mkimage -O for UEFI
    kernel_file: str  # the kernel's file name in a NixOS kernel package
    bios: bool  # whether the machine has BIOS (SeaBIOS) firmware at all
    # The firmware's pflash images must have this exact size (qemu's virt board maps
    # two 64 MiB flash banks); None when any size the firmware file has is fine.
    pflash_bytes: int | None


PLATFORMS: dict[str, Platform] = {
    "x86_64-linux": Platform(
        system="x86_64-linux",
        machine="x86_64",
        debian_arch="amd64",
        qemu_binary="qemu-system-x86_64",
        qemu_machine="pc",
        qemu_cpu="max",
        qemu_package="qemu-system-x86",
        console="ttyS0",
        efi_arch="x64",
        grub_efi_target="x86_64-efi",
        kernel_file="bzImage",
        bios=True,
        pflash_bytes=None,
    ),
    "aarch64-linux": Platform(
        system="aarch64-linux",
        machine="aarch64",
        debian_arch="arm64",
        qemu_binary="qemu-system-aarch64",
        # gic-version=max: the newest interrupt controller TCG emulates (GICv3), as
        # qemu-common.nix starts aarch64 guests.
        qemu_machine="virt,gic-version=max",
        qemu_cpu="max",
        qemu_package="qemu-system-arm",
        console="ttyAMA0",
        efi_arch="aa64",
        grub_efi_target="arm64-efi",
        kernel_file="Image",
        bios=False,
        pflash_bytes=64 * 1024 * 1024,
    ),
}


def host_system() -> str:
    """The builder's own system name, from the running kernel's machine."""
    machine = _platform.machine()
    for plat in PLATFORMS.values():
        if plat.machine == machine:
            return plat.system
    return f"{machine}-linux"


def platform_for(system: str) -> Platform:
    try:
        return PLATFORMS[system]
    except KeyError:
        raise StepError(
            "platform",
            f"no support for system {system!r}; supported: " + ", ".join(sorted(PLATFORMS)),
        ) from None


def host_platform() -> Platform:
    return platform_for(host_system())

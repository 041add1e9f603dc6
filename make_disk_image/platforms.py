"""The architectures an image can be built for, as data (interface.json's `platforms`).

An image's architecture is that of its NixOS system (`config.nixpkgs.hostPlatform`,
the spec's `system`), not the builder's. Everything that grows with the closure runs
natively on the builder whatever the image's architecture; only the guest phase runs
in a VM of the image's architecture (qemu TCG when it differs from the builder's).
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass
from typing import Any

from make_disk_image.interface import PATH as INTERFACE_PATH
from make_disk_image.process import StepError


@dataclass(frozen=True)
class Platform:
    """What building and booting an image of one architecture needs to know."""

    system: str  # Nix's name: "x86_64-linux"
    machine: str  # uname -m / platform.machine()
    qemu_binary: str  # nixos/lib/qemu-common.nix's qemuBinary picks by the same system
    qemu_machine: str  # -machine
    qemu_cpu: str  # -cpu
    console: str  # the serial console device the guest kernel writes to
    efi_arch: str  # UEFI's short name in removable-media paths (BOOTX64.EFI, BOOTAA64.EFI)
    grub_efi_target: str  # grub-install/grub-mkimage -O for UEFI
    kernel_file: str  # the kernel's file name in a NixOS kernel package
    bios: bool  # whether the machine has BIOS (SeaBIOS) firmware at all
    pvh: bool  # whether qemu boots its kernels' plain ELF image through a PVH entry
    smm: bool  # whether its UEFI firmware may need SMM (QEMU_OPTS then pick q35,smm=on)
    # The firmware's pflash images must have this exact size (qemu's virt board maps
    # two 64 MiB flash banks); None when any size the firmware file has is fine.
    pflash_bytes: int | None
    # The partitionTableTypes its firmware can boot (the others have no ESP).
    bootable_partition_table_types: tuple[str, ...]
    # Added to the build VM's kernel command line (interface.json says why).
    vm_kernel_params: tuple[str, ...]


# interface.json's keys (as Nix spells them) -> the dataclass' field names.
_FIELDS = {
    "qemuBinary": "qemu_binary",
    "qemuMachine": "qemu_machine",
    "qemuCpu": "qemu_cpu",
    "efiArch": "efi_arch",
    "grubEfiTarget": "grub_efi_target",
    "kernelFile": "kernel_file",
    "pflashBytes": "pflash_bytes",
    "bootablePartitionTableTypes": "bootable_partition_table_types",
    "vmKernelParams": "vm_kernel_params",
}


def _field(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _load() -> dict[str, Platform]:
    # The same table Nix reads (default.nix: which layouts the image's system can boot).
    table = json.loads(INTERFACE_PATH.read_text())["platforms"]
    platforms: dict[str, Platform] = {}
    for system, facts in table.items():
        if not system.startswith("_"):
            fields: dict[str, Any] = {_FIELDS.get(k, k): _field(v) for k, v in facts.items()}
            platforms[system] = Platform(system=system, **fields)
    return platforms


PLATFORMS: dict[str, Platform] = _load()


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

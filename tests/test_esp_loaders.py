"""testsys.esp_loaders: the .EFI files on an image's ESP with their PE machine types, on an
image made here with sfdisk, mkfs.vfat and mtools."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from testsys.esp_loaders import efi_loaders

MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def pe_binary(machine: int) -> bytes:
    """The start of a PE/COFF file: "MZ", the PE header's offset at 0x3C, its machine."""
    return b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + struct.pack("<H", machine)


def image_with_esp(tmp_path: Path, esp_type: str, files: dict[str, bytes]) -> Path:
    image = tmp_path / "disk.raw"
    with image.open("wb") as disk:
        disk.truncate(40 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(image)], check=True,
                   input=f"label: gpt\nstart=2048, size=65536, type={esp_type}\n".encode())
    # FAT16: 32 MiB is too small a FAT32 for mtools (field notes); the reader cares not.
    subprocess.run(["mkfs.vfat", "-F", "16", "--offset=2048", str(image), "32768"],
                   check=True, capture_output=True)
    target = f"{image}@@{2048 * 512}"
    for path, data in files.items():
        source = tmp_path / "file"
        source.write_bytes(data)
        for directory in reversed(Path(path).parents[:-1]):  # mmd makes no parents
            subprocess.run(["mmd", "-D", "s", "-i", target, f"::{directory}"], env=MTOOLS,
                           check=False, capture_output=True)  # fmt: skip
        subprocess.run(["mcopy", "-i", target, str(source), f"::{path}"], env=MTOOLS,
                       check=True)
    return image


ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def test_loaders_and_their_machines(tmp_path: Path) -> None:
    image = image_with_esp(tmp_path, ESP, {
        "/EFI/BOOT/BOOTAA64.EFI": pe_binary(0xAA64),
        "/EFI/systemd/systemd-bootx64.efi": pe_binary(0x8664),
        "/EFI/nixos/initrd.efi": b"not an executable",
        "/EFI/nixos/odd.efi": pe_binary(0x5064),
        "/EFI/nixos/readme.txt": pe_binary(0x8664),
    })
    assert efi_loaders(image) == {
        "/EFI/BOOT/BOOTAA64.EFI": "aarch64",
        "/EFI/nixos/initrd.efi": "not a PE binary",
        "/EFI/nixos/odd.efi": "0x5064",
        "/EFI/systemd/systemd-bootx64.efi": "x86_64",
    }


def test_no_esp_no_loaders(tmp_path: Path) -> None:
    linux_data = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    image = image_with_esp(tmp_path, linux_data, {"/EFI/BOOT/BOOTX64.EFI": pe_binary(0x8664)})
    assert efi_loaders(image) == {}
    unpartitioned = tmp_path / "blank.raw"
    unpartitioned.write_bytes(bytes(1024 * 1024))
    assert efi_loaders(unpartitioned) == {}

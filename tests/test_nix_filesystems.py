"""default.nix with the filesystems beyond ext4, through Nix and the stand-in nixpkgs.

Store images (erofs, squashfs) are plain derivations without a VM; an xfs root goes
through vmTools.runInLinuxVM; nixpkgs' vmTools gets the root filesystem's driver in its
rootModules (checked by evaluation against a vmTools that records its override).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import NEEDS_NIX
from nixbuild import (
    BOOTLOADER_MARKER,
    build_image,
    checked,
    fat_read,
    partition_table,
)

pytestmark = [pytest.mark.nix, NEEDS_NIX]

STORE_IMAGE_ARGS = {"onlyNixStore": True, "installBootLoader": False,
                    "partitionTableType": "none", "copyChannel": False}


@pytest.mark.parametrize("fs_type", ["erofs", "squashfs"])
def test_nix_store_image(checkout: Path, tmp_path: Path, fs_type: str) -> None:
    result = build_image(checkout, tmp_path, {**STORE_IMAGE_ARGS, "fsType": fs_type})
    image = result.out / "nixos.img"
    if fs_type == "erofs":
        listing = checked(["dump.erofs", "--ls", "--path=/", str(image)])
        checked(["fsck.erofs", str(image)])
    else:
        listing = checked(["unsquashfs", "-l", "-max-depth", "1", str(image)])
    assert "-busybox-static-debian" in listing, listing
    assert "Virtual machine" not in result.log


@pytest.mark.parametrize("deduplicate", [False, True])
def test_nix_xfs_root(checkout: Path, tmp_path: Path, deduplicate: bool) -> None:
    """With `deduplicate`, the Nix build finds the CRC-32C the engine's xfs writer needs
    (else prepare refuses it: mkfs.xfs -p has no hard links)."""
    result = build_image(checkout, tmp_path, {"fsType": "xfs", "partitionTableType": "efi",
                                              "installBootLoader": False,
                                              "deduplicate": deduplicate})
    if deduplicate:
        assert "store files are copies of another" in result.log, result.log[-3000:]
        assert "xfs_fill took" in result.log, result.log[-3000:]
    image = result.out / "nixos.img"
    _, parts = partition_table(image)
    root = parts[-1]
    part = tmp_path / "root.xfs"
    with image.open("rb") as src, part.open("wb") as dst:
        src.seek(root.offset)
        dst.write(src.read(root.size * 512))
    proc = subprocess.run(["xfs_repair", "-n", "-f", str(part)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blkid = checked(["blkid", "-p", "-o", "export", str(part)])
    assert "TYPE=xfs" in blkid and "LABEL=nixos" in blkid


@pytest.mark.vm
def test_nix_btrfs_root_with_the_boot_loader(checkout: Path, tmp_path: Path) -> None:
    """The stand-in's build VM has no btrfs driver loaded: the guest phase loads it with
    modprobe (kmod on its PATH), mounts the root and installs the boot loader."""
    result = build_image(checkout, tmp_path, {"fsType": "btrfs", "partitionTableType": "efi",
                                              "copyChannel": False})
    assert "$ modprobe btrfs" in result.log, result.log[-3000:]
    image = result.out / "nixos.img"
    _, parts = partition_table(image)
    part = tmp_path / "root.btrfs"
    with image.open("rb") as src, part.open("wb") as dst:
        src.seek(parts[-1].offset)
        dst.write(src.read(parts[-1].size * 512))
    checked(["btrfs", "check", "--readonly", str(part)])
    marker = fat_read(image, parts[0], f"/{BOOTLOADER_MARKER}")
    assert "install=1" in marker.splitlines(), marker


def test_nixpkgs_vm_gets_the_root_filesystem_driver(checkout: Path) -> None:
    """A vmTools with `override` (nixpkgs') is given rootModules with btrfs or xfs."""
    expr = f"""
      let
        standInPkgs = import {checkout}/tests/nixpkgs {{ }};
        recording = standInPkgs.vmTools // {{
          override = args: recording // {{
            runInLinuxVM = drv: {{ rootModules = args.rootModules; }};
          }};
          runInLinuxVM = drv: {{ rootModules = "vmTools' own"; }};
        }};
        pkgs = standInPkgs // {{ vmTools = recording; }};
        standIn = (import {checkout}/tests/nixpkgs/flake.nix).outputs {{ self = null; }};
        config = (standIn.lib.nixosSystem {{ modules = [ ]; }}).config;
        image = fsType: (import {checkout}/default.nix {{
          inherit pkgs config fsType; inherit (pkgs) lib; partitionTableType = "efi";
        }}).rootModules;
      in {{ btrfs = image "btrfs"; xfs = image "xfs"; ext4 = image "ext4"; }}
    """
    seen = json.loads(checked(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]))
    assert seen["ext4"] == "vmTools' own"
    for fs_type in ("btrfs", "xfs"):
        assert seen[fs_type][-1] == fs_type
        assert {"ext4", "virtio_blk", "virtio_pci"} <= set(seen[fs_type])

"""makeDiskImage.repart through Nix: nixpkgs' image.repart options (the stand-in's, as
nixpkgs declares them) with the switch on give system.build.image built by the engine;
keys it does not build fail at evaluation, naming the option."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import NEEDS_NIX, REPO

pytestmark = [pytest.mark.nix, NEEDS_NIX]

# A system of the check configuration, nixpkgs' image.repart and one more module.
PRELUDE = """
let
  repo = REPO;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  flake = (import (repo + "/flake.nix")).outputs { self = flake; nixpkgs = standIn; };
  system = standIn.lib.nixosSystem {
    system = "x86_64-linux";
    modules = [
      (repo + "/nix/check-configuration.nix")
      { boot.loader.grub.device = "/dev/vda"; }
      flake.nixosModules.default
      ({ config, modulesPath, ... }: {
        imports = [ (modulesPath + "/image/repart.nix") ];
"""
EXPR = PRELUDE + """
        image.repart = {
          name = "appliance";
          version = "1";
          split = true;
          partitions = {
            "10-esp" = {
              contents."/EFI/BOOT/README".source = repo + "/README.md";
              repartConfig = { Type = "esp"; Format = "vfat"; SizeMinBytes = "64M"; } // EXTRA;
            };
            "20-root" = {
              storePaths = [ config.system.build.toplevel ];
              repartConfig = {
                Type = "root"; Format = "ext4"; Label = "nixos"; Minimize = "guess";
              };
            };
          };
        };
        makeDiskImage.repart = { enable = ENABLE; format = "FORMAT"; };
      })
    ];
  };
in system.config.system.build.image
"""


def _expr(*, enable: bool = True, extra: str = "{ }", fmt: str = "raw") -> str:
    return (EXPR.replace("REPO", str(REPO)).replace("EXTRA", extra)
            .replace("ENABLE", "true" if enable else "false").replace("FORMAT", fmt))


def _build(expr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix-build", "--no-out-link", "-E", expr], capture_output=True,
                          text=True)


def test_switch_builds_the_image_with_the_engine() -> None:
    proc = _build(_expr())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == [
        "appliance_1.esp.raw", "appliance_1.raw", "appliance_1.root-x86-64.raw", "nix-support",
        "repart-output.json"]
    records = json.loads((out / "repart-output.json").read_text())
    assert [(r["type"], r["label"], r["uuid"]) for r in records] == [
        ("esp", "esp", "dac4058a-2fc0-4808-a7ef-b8b4501c00ce"),
        ("root-x86-64", "nixos", "57bd1ad1-c688-450a-ba37-d1792ec72fbb")]
    root = f"{out / 'appliance_1.raw'}?offset={records[1]['offset']}"
    listing = subprocess.run(["debugfs", "-R", "ls -p /nix/var/nix/db", root],
                             capture_output=True, text=True, check=True).stdout
    assert "/db.sqlite/" in listing
    assert (out / "nix-support/hydra-build-products").read_text() == \
        f"file raw-image {out / 'appliance_1.raw'}\n"


def test_without_the_switch_nixpkgs_builder_stays() -> None:
    proc = _build(_expr(enable=False))
    assert proc.returncode != 0
    assert "the nixpkgs stand-in has no systemd-repart" in proc.stderr


def test_verity_refused_at_evaluation() -> None:
    proc = subprocess.run(["nix-instantiate", "-E", _expr(extra='{ Verity = "data"; }')],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "image.repart.partitions.10-esp.repartConfig.Verity: dm-verity" in proc.stderr


def test_qcow2_format() -> None:
    proc = _build(_expr(fmt="qcow2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    products = (out / "nix-support/hydra-build-products").read_text()
    assert products == f"file qcow2-image {out / 'appliance_1.qcow2'}\n"


HYBRID = PRELUDE + """
        image.repart = {
          name = "hybrid";
          partitions = {
            "00-bios".repartConfig = {
              Type = "21686148-6449-6e6f-744e-656564454649"; SizeMinBytes = "1M";
            };
            "10-esp".repartConfig = { Type = "esp"; Format = "vfat"; SizeMinBytes = "64M"; };
            "20-swap".repartConfig = { Type = "swap"; Format = "swap"; SizeMinBytes = "16M"; };
            "30-root" = {
              storePaths = [ config.system.build.toplevel ];
              repartConfig = {
                Type = "root"; Format = "ext4"; Label = "nixos"; Minimize = "guess";
              };
            };
          };
        };
        makeDiskImage.repart = {
          enable = true; installBootLoader = true; mountPoints."30-root" = "/";
        };
      })
    ];
  };
in { image = system.config.system.build.image; toplevel = system.config.system.build.toplevel; }
"""


@pytest.mark.vm
def test_install_boot_loader_in_the_build_vm() -> None:
    """preVM builds the image, the build VM runs the system's switch-to-configuration on
    it (the stand-in's records what it was asked: system, NIXOS_INSTALL_BOOTLOADER, the
    GRUB device it found as a block device), postVM writes the outputs."""
    expr = HYBRID.replace("REPO", str(REPO))
    proc = subprocess.run(["nix-build", "--no-out-link", "-E", expr, "-A", "image"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    toplevel = subprocess.run(["nix-build", "--no-out-link", "-E", expr, "-A", "toplevel"],
                              capture_output=True, text=True, check=True).stdout.strip()
    records = json.loads((out / "repart-output.json").read_text())
    assert [r["label"] for r in records] == ["linux", "esp", "swap", "nixos"]
    root = f"{out / 'hybrid.raw'}?offset={records[3]['offset']}"
    recorded = subprocess.run(["debugfs", "-R", "cat /boot/nixos-standin-bootloader", root],
                              capture_output=True, text=True, check=True).stdout
    assert recorded.splitlines() == [f"system={toplevel}", "install=1", "device=/dev/vda"]

"""default.nix's crossImage built by nix-build: an aarch64 image on this x86_64 builder.

The image's package set is the stand-in's aarch64 set (tests/nixpkgs/cross.nix): Debian's
arm64 packages, fetched and unpacked by derivations of this builder, in place of the
binary cache real nixpkgs substitutes them from. Its NixOS system is the bootable test
system (testsys/system.nix) for aarch64-linux with systemd-boot. The image is booted
under qemu-system-aarch64 (TCG) with AAVMF. See docs/aarch64.md.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aarch64boot import AARCH64_BOOT
from conftest import REPO, boot_work_dir

from testsys import boot, efi_vars, esp_loaders, guestroot, report_check, system

SYSTEM = "aarch64-linux"
pytestmark = [pytest.mark.nix, *AARCH64_BOOT]
BOOT_TIMEOUT = 600.0  # a good boot takes 25-50 s under TCG

# The stand-in NixOS cannot boot, so the bootable test system stands for its toplevel;
# everything else default.nix reads of the configuration is the stand-in's.
IMAGE_NIX = """
{ repo, toplevel, lock }:
let
  pkgs = import (repo + "/tests/nixpkgs") { };
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  evaluated = (standIn.lib.nixosSystem {
    system = null;
    modules = [
      {
        nixpkgs.hostPlatform = "aarch64-linux";
        nixpkgs.config.foreignDebianPackages = /. + lock;
        fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
        boot.loader.grub.enable = false;
        boot.loader.systemd-boot.enable = true;
      }
    ];
  }).config;
  config = evaluated // {
    system = evaluated.system // {
      build = evaluated.system.build // { toplevel = builtins.storePath toplevel; };
    };
  };
  image = import (repo + "/default.nix") {
    inherit pkgs config;
    inherit (pkgs) lib;
    partitionTableType = "efi";
    touchEFIVars = true;
    additionalSpace = "16M";
  };
in
{ inherit image; inherit (image) spec; }
"""


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-nix-cross-tests-")


def test_cross_image_is_built_by_nix_build_and_boots_under_aavmf(work_dir: Path) -> None:
    lock = work_dir / "arm64.json"
    lock.write_text(json.dumps(guestroot.package_lock("arm64")))
    loader = system.boot_loader_for("efi", touch_efi_vars=True, system=SYSTEM)
    # default.nix copies its own channel (the stand-in nixpkgs), not the test system's.
    test_system = system.build_test_system(work_dir / "system", loader, system=SYSTEM,
                                           copy_channel=False)  # fmt: skip
    expr = work_dir / "image.nix"
    expr.write_text(IMAGE_NIX)

    started = time.monotonic()
    proc = subprocess.run(
        ["nix-build", str(expr), "--arg", "repo", str(REPO), "--argstr", "toplevel",
         str(test_system.toplevel), "--argstr", "lock", str(lock),
         "--out-link", str(work_dir / "result")],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    build_seconds = time.monotonic() - started
    (work_dir / "nix-build.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"nix-build failed:\n{proc.stderr[-6000:]}"
    out, spec_file = (Path(line) for line in proc.stdout.split())
    spec = json.loads(spec_file.read_text())
    assert spec["system"] == SYSTEM and spec["toplevel"] == str(test_system.toplevel)

    image = out / "nixos.img"
    loaders = esp_loaders.efi_loaders(image)
    assert loaders["/EFI/BOOT/BOOTAA64.EFI"] == "aarch64"
    assert loaders["/EFI/systemd/systemd-bootaa64.efi"] == "aarch64"
    assert "x86_64" not in loaders.values()
    # The engine's guest phase wrote the boot entry into AAVMF's variable store.
    options, order = efi_vars.efi_boot_entries(out / "efi-vars.fd")
    ours = [o for o in options if o.file_path == "\\EFI\\systemd\\systemd-bootaa64.efi"]
    assert len(ours) == 1 and order[0] == ours[0].number

    started = time.monotonic()
    result = boot.boot_image(image, firmware="uefi", efi_vars=out / "efi-vars.fd",
                             system=SYSTEM, timeout=BOOT_TIMEOUT, kernel_timeout=BOOT_TIMEOUT,
                             serial_log=work_dir / "serial.log")  # fmt: skip
    boot_seconds = time.monotonic() - started
    print(f"nix-build {build_seconds:.1f} s, boot {boot_seconds:.1f} s")
    assert result.report.machine == "aarch64"
    assert report_check.check_report(result.report, spec, firmware="uefi",
                             store_paths=test_system.store_paths()) == []  # fmt: skip

"""Faults through the Nix layer: nix-build of default.nix against the stand-in nixpkgs,
with a failing postVM and a failing finish. The reason must be the last thing the build
log says before Nix's own summary, and no result is made.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NEEDS_NIX,
)
from nixbuild import nix_build_expression

MIB = 1024 * 1024


# Through the Nix layer: nix-build of default.nix against the stand-in nixpkgs. A
# store-only image needs no VM, so these are quick once the engine package is built.

FAULT_NIX = """
{ repo, imageArgs, failingQemuImg }:
let
  base = import (repo + "/tests/nixpkgs") { };
  # qemu-img failing as it does when $out is full (the real fault is tested above).
  brokenQemuUtils = base.runCommand "qemu-utils-out-full" { } ''
    mkdir -p $out/bin
    printf '%s\\n' '#!/bin/sh' \\
      'echo "qemu-img: error while writing at byte 0: No space left on device" >&2' \\
      'exit 1' > $out/bin/qemu-img
    chmod +x $out/bin/qemu-img
  '';
  pkgs = if failingQemuImg then base // { qemu-utils = brokenQemuUtils; } else base;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  config = (standIn.lib.nixosSystem {
    system = builtins.currentSystem;
    modules = [ {
      boot.loader.grub.enable = false;
      fileSystems."/" = { device = "/dev/disk/by-label/nix-store"; fsType = "ext4"; };
    } ];
  }).config;
in
import (repo + "/default.nix") ({ inherit pkgs config; inherit (pkgs) lib; }
  // builtins.fromJSON imageArgs)
"""

STORE_ONLY = {"onlyNixStore": True, "installBootLoader": False, "partitionTableType": "none",
              "copyChannel": False}


def nix_build_fault(repo: Path, tmp_path: Path, args: dict[str, Any],
                    failing_qemu_img: bool = False) -> subprocess.CompletedProcess[str]:
    return nix_build_expression(
        tmp_path, "fault.nix", FAULT_NIX,
        ["--arg", "repo", str(repo), "--argstr", "imageArgs", json.dumps(STORE_ONLY | args),
         "--arg", "failingQemuImg", "true" if failing_qemu_img else "false"])


def assert_reason_is_last(stderr: str, reason: str) -> None:
    """The build failed, and the reason is what the log ends with (before Nix's own
    summary), so a user reading the bottom of the log sees it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    summary = next(i for i, line in enumerate(lines) if "error: builder for" in line)
    assert any(reason in line for line in lines[max(0, summary - 3):summary]), stderr[-3000:]


@pytest.mark.nix
@NEEDS_NIX
def test_nix_build_failing_post_vm(checkout: Path, tmp_path: Path) -> None:
    proc = nix_build_fault(checkout, tmp_path,
                           {"postVM": 'echo "postVM: cannot upload $diskImage" >&2; exit 3'})
    assert proc.returncode != 0
    assert "failed with exit code 3" in proc.stderr, proc.stderr[-3000:]
    assert_reason_is_last(proc.stderr, "postVM: cannot upload /nix/store/")
    assert not (tmp_path / "result").exists()


@pytest.mark.nix
@NEEDS_NIX
def test_nix_build_failing_finish(checkout: Path, tmp_path: Path) -> None:
    proc = nix_build_fault(checkout, tmp_path, {"format": "qcow2"}, failing_qemu_img=True)
    assert proc.returncode != 0, "nix-build succeeded although finish failed"
    assert_reason_is_last(proc.stderr, "No space left on device")
    assert "error: finish: command failed (exit 1): qemu-img convert" in proc.stderr
    assert not (tmp_path / "result").exists()

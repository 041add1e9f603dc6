"""What default.nix evaluates to, against the offline nixpkgs stand-in: exactly the
reference's arguments plus the extensions, copyChannel's channel, and QEMU_OPTS."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from nixbuild import NIX_BUILD_TESTS, checked

from make_disk_image import interface

pytestmark = NIX_BUILD_TESTS


def test_default_nix_takes_the_reference_arguments(checkout: Path) -> None:
    args = json.loads(
        checked(
            [
                "nix-instantiate",
                "--eval",
                "--json",
                "-E",
                f"builtins.functionArgs (import {checkout}/default.nix)",
            ]
        )
    )
    # Exactly the reference's arguments, the same ones optional, and the extensions,
    # all optional (their defaults keep the reference's behaviour).
    assert args == {**REFERENCE_ARGUMENTS, **EXTENSION_ARGUMENTS}


# The extensions are the table's (all optional): adding one is a row there.
EXTENSION_ARGUMENTS = {
    name: True for name, row in interface.ARGUMENTS.items() if row.origin == "extension"
}


# The reference's argument list: name -> has a default.
REFERENCE_ARGUMENTS = {
    "pkgs": False,
    "lib": False,
    "config": False,
    "diskSize": True,
    "additionalSpace": True,
    "bootSize": True,
    "contents": True,
    "partitionTableType": True,
    "installBootLoader": True,
    "touchEFIVars": True,
    "OVMF": True,
    "efiFirmware": True,
    "efiVariables": True,
    "fsType": True,
    "label": True,
    "configFile": True,
    "postVM": True,
    "memSize": True,
    "onlyNixStore": True,
    "name": True,
    "format": True,
    "baseName": True,
    "deterministic": True,
    "rootGPUID": True,
    "rootFSUID": True,
    "copyChannel": True,
    "additionalPaths": True,
}


# default.nix's spec for a nixpkgs whose source (pkgs.path) is SOURCE and a NixOS version
# suffix SUFFIX: building it builds channelSources, which the spec names.
CHANNEL_NIX = """
{ repo, source, suffix }:
let
  pkgs = import (repo + "/tests/nixpkgs") { } // { path = /. + source; };
  inherit (pkgs) lib;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  config = (standIn.lib.nixosSystem {
    system = builtins.currentSystem;
    modules = [ {
      system.nixos.versionSuffix = lib.mkForce suffix;
      system.stateVersion = "26.05";
      fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
      boot.loader.grub.devices = [ "/dev/vda" ];
    } ];
  }).config;
in (import (repo + "/default.nix") { inherit pkgs lib config; }).passthru.spec
"""


def tree_listing(root: Path) -> dict[str, tuple[str, str]]:
    """Each entry under root: (kind, what it holds): a file's text and executable bit, a
    link's target; directories by name only."""
    listing = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            listing[name] = ("link", os.readlink(path))
        elif path.is_dir():
            listing[name] = ("dir", "")
        else:
            executable = "x" if path.stat().st_mode & 0o100 else "-"
            listing[name] = ("file", executable + path.read_text())
    return listing


@pytest.mark.parametrize("has_nixpkgs", [False, True], ids=["nixpkgs-linked", "nixpkgs-kept"])
def test_channel_is_the_nixpkgs_source_with_link_and_suffix(
    checkout: Path, tmp_path: Path, has_nixpkgs: bool
) -> None:
    """copyChannel's channel: directory `nixos` holds pkgs.path's source without .git,
    `nixos/nixpkgs` links to `.` unless the source has one, `nixos/.version-suffix`
    holds the configuration's system.nixos.versionSuffix (no newline)."""
    source = tmp_path / "nixpkgs-source"
    (source / "pkgs" / "top").mkdir(parents=True)
    (source / "default.nix").write_text("{ }: { }\n")
    (source / "pkgs" / "top" / "run").write_text("#!/bin/sh\n")
    (source / "pkgs" / "top" / "run").chmod(0o755)
    (source / "lib").symlink_to("pkgs/top")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    if has_nixpkgs:
        (source / "nixpkgs").write_text("a file of the source\n")
    spec_file = checked(["nix-build", "--no-out-link", "-E", CHANNEL_NIX,
                         "--argstr", "repo", str(checkout), "--argstr", "source", str(source),
                         "--argstr", "suffix", ".pre-test-1"]).strip()
    channel = Path(json.loads(Path(spec_file).read_text())["channelSources"])
    # Named as the reference names it: nixos-RELEASE plus the suffix.
    assert re.fullmatch(r"[0-9a-z]{32}-nixos-[0-9.]+\.pre-test-1", channel.name), channel
    expected = {f"nixos/{name}": entry for name, entry in tree_listing(source).items()
                if not name.startswith(".git")}
    expected |= {"nixos": ("dir", ""), "nixos/.version-suffix": ("file", "-.pre-test-1")}
    if not has_nixpkgs:
        expected["nixos/nixpkgs"] = ("link", ".")
    assert tree_listing(channel) == expected


def test_default_nix_qemu_opts_follow_the_reference(checkout: Path) -> None:
    """QEMU_OPTS: both pflash drives with touchEFIVars, SMM options when OVMF needs them."""
    expr = f"""
      let
        pkgs = import {checkout}/tests/nixpkgs {{ }};
        standIn = (import {checkout}/tests/nixpkgs/flake.nix).outputs {{ self = null; }};
        config = (standIn.lib.nixosSystem {{ modules = [ ]; }}).config;
        image = args: import {checkout}/default.nix
          ({{ inherit pkgs config; inherit (pkgs) lib; }} // args);
        smmOVMF = pkgs.OVMF.fd // {{ systemManagementModeRequired = true; }};
      in {{
        plain = (image {{ }}).QEMU_OPTS;
        efi = (image {{ partitionTableType = "efi"; touchEFIVars = true; }}).QEMU_OPTS;
        smm = (image {{ partitionTableType = "efi"; touchEFIVars = true; OVMF = smmOVMF; }})
          .QEMU_OPTS;
        memSize = (image {{ memSize = 768; }}).memSize;
      }}
    """
    opts = json.loads(checked(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]))
    assert opts["plain"] == ""
    firmware = "if=pflash,format=raw,unit=0,readonly=on,file=/nix/store/"
    assert opts["efi"].startswith(f"-drive {firmware}")
    assert opts["efi"].endswith("-drive if=pflash,format=raw,unit=1,file=$out/efi-vars.fd")
    assert "smm" not in opts["efi"]
    assert opts["smm"].startswith(opts["efi"])
    assert opts["smm"].endswith(
        "-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on"
    )
    assert opts["memSize"] == 768



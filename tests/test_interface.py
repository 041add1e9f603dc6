"""make_disk_image/interface.json, the one description of makeDiskImage's interface that
default.nix, nix/module.nix and the engine read: its Python view agrees with the
engine's code and with default.nix's function, and it is installed with the package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NEEDS_NIX

from make_disk_image import interface
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.layouts import LAYOUTS
from make_disk_image.models import Format
from make_disk_image.spec import FIELDS

REPO = Path(__file__).resolve().parent.parent

needs_nix = NEEDS_NIX


def test_the_engine_has_code_for_every_table_entry() -> None:
    assert [f.value for f in Format] == list(interface.FORMATS)
    assert list(FILESYSTEMS) == list(interface.FS_TYPES)
    assert list(LAYOUTS) == list(interface.PARTITION_TABLE_TYPES)
    assert Format.VPC.extension == "vhd" and Format.QCOW2_COMPRESSED.product_type == "qcow2-image"


def test_every_spec_argument_is_an_interface_argument() -> None:
    """The spec carries the arguments (but pkgs, lib, config, OVMF and requireKVM, which
    only Nix uses) plus what Nix computes from them."""
    computed = {"toplevel", "closureInfo", "channelSources", "grubDevices",
                "limineBiosDevice", "ovmfSystemManagementModeRequired",
                "system"}  # fmt: skip
    nix_only = {"pkgs", "lib", "config", "OVMF", "requireKVM"}
    assert set(FIELDS) - computed == set(interface.ARGUMENTS) - nix_only


def test_reference_messages_list_what_the_tables_allow() -> None:
    """The reference's messages are kept word for word; when a table grows (a filesystem
    allowed in a partition table, a layout with EFI variables) the message must too."""
    messages = interface.REFERENCE_MESSAGES
    efi = re.search(r"type: (.*)\.$", messages["touchEFIVars"])
    assert efi
    listed = set(efi.group(1).replace(", or ", ", ").split(", "))
    assert listed == {n for n, p in interface.PARTITION_TABLE_TYPES.items() if p.efi_variables}
    # The fsType message stays the reference's (it speaks of ext4's -E offset); the
    # engine and default.nix add which filesystems a partition table may hold.
    assert messages["fsType"].endswith("fsType = ext4")


def test_every_argument_is_described() -> None:
    for argument in interface.ARGUMENTS.values():
        assert argument.description, argument.name
        if argument.type != "context":
            # A constant default, or the text of one computed from other arguments.
            assert argument.has_default != (argument.default_text is not None), argument.name


def test_the_package_installs_interface_json(tmp_path: Path) -> None:
    """The nixpkgs stand-in's buildPythonApplication installs [options.package_data], as a
    wheel would: without interface.json the engine cannot start."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "make_disk_image", source / "make_disk_image",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO / "setup.cfg", source)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, REPO / "tests/nixpkgs/build-support/python-application.py",
         sys.executable],
        cwd=source, env={**os.environ, "out": str(out)}, check=True, capture_output=True,
    )  # fmt: skip
    installed = out / "lib/python3.11/site-packages/make_disk_image/interface.json"
    assert json.loads(installed.read_text()) == json.loads(interface.PATH.read_text())


@pytest.mark.nix
@needs_nix
def test_default_nix_takes_exactly_the_interface_arguments() -> None:
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E",
         f"builtins.functionArgs (import {REPO}/default.nix)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    function_args: dict[str, bool] = json.loads(proc.stdout)
    assert set(function_args) == set(interface.ARGUMENTS)
    # Those with a default in the function have one (constant or computed) in the table.
    for name, has_default in function_args.items():
        argument = interface.ARGUMENTS[name]
        assert has_default == (argument.type != "context"), name


# --- default.nix refuses wrong arguments at evaluation -----------------------------------

# pkgs and config throw when forced: a check that needed them, or anything that would
# build (the toplevel, the closure, the engine), would show here instead of the message.
EVALUATION = """
import REPO/default.nix ({
  lib = import REPO/tests/nixpkgs/selected-lib.nix;
  pkgs = throw "pkgs was forced";
  config = throw "config was forced";
} // ARGS)
"""

BAD_ARGUMENTS: list[tuple[str, str, str, str]] = [
    # id, Nix arguments, argument named, fragment of the message
    ("partitionTableType-gpt", 'partitionTableType = "gpt";', "partitionTableType",
     'must be one of [\n         "legacy"'),
    ("format-ova", 'format = "ova";', "format", '"vmdk"'),
    ("fsType-zfs", 'fsType = "zfs"; partitionTableType = "none";', "fsType", '"xfs"'),
    ("fsType-ext3-in-table", 'fsType = "ext3";', "fsType",
     "to produce a partition table, we need to use -E offset flag which is support only "
     "for fsType = ext4"),
    ("fsType-read-only-root", 'fsType = "squashfs"; partitionTableType = "none";', "fsType",
     "read-only"),
    ("read-only-in-table",
     'fsType = "erofs"; onlyNixStore = true; installBootLoader = false;',
     "partitionTableType", "whole image"),
    ("touchEFIVars-legacy", "touchEFIVars = true;", "touchEFIVars",
     "EFI variables can be used only with a partition table of type: hybrid, efi, "
     "efixbootldr, or legacy+gpt."),
    ("onlyNixStore-bootloader", 'onlyNixStore = true; partitionTableType = "none";',
     "onlyNixStore", "In a only Nix store image, the contents must be empty, no "
     "configuration must be provided and no bootloader should be installed."),
    ("onlyNixStore-contents",
     'onlyNixStore = true; installBootLoader = false; contents = [ { source = ./x; '
     'target = "/x"; } ];', "onlyNixStore", "contents must be empty"),
    ("onlyNixStore-configFile",
     "onlyNixStore = true; installBootLoader = false; configFile = ./configuration.nix;",
     "onlyNixStore", "no configuration must be provided"),
    ("contents-user-only", 'contents = [ { source = ./x; target = "/x"; user = "bob"; } ];',
     "contents", "Contents of the disk image should set none of {user, group} or both at "
     "the same time."),
    ("contents-group-only",
     'contents = [ { source = ./x; target = "/x"; user = null; group = "users"; } ];',
     "contents", "should set none of {user, group}"),
    ("rootFSUID-null", "rootFSUID = null;", "rootFSUID",
     "In deterministic mode with a ext4 partition, rootFSUID must be non-null, by default, "
     "it is equal to rootGPUID."),
    ("label-too-long", 'label = "a-label-that-is-too-long";', "label", "16 bytes"),
    ("deduplicate-xfs", 'fsType = "xfs"; deduplicate = true;', "deduplicate",
     "ext4 or btrfs"),
    ("deduplicate-string", 'deduplicate = "yes";', "deduplicate", "true or false"),
    ("compression-ext4", 'compression = "xz";', "compression", "is not compressed"),
    ("compression-squashfs-brotli",
     'fsType = "squashfs"; onlyNixStore = true; installBootLoader = false; '
     'partitionTableType = "none"; compression = "brotli";', "compression",
     'null or one of "none"'),
    ("compression-erofs-gzip",
     'fsType = "erofs"; onlyNixStore = true; installBootLoader = false; '
     'partitionTableType = "none"; compression = "gzip";', "compression",
     '"none", "lz4", "lz4hc"'),
    ("diskSize-word", 'diskSize = "big";', "diskSize", '"auto", "minimal"'),
    ("diskSize-negative", "diskSize = -1;", "diskSize", "but is: -1"),
    ("requireKVM-string", 'requireKVM = "no";', "requireKVM", "true or false"),
    ("memSize-string", 'memSize = "1G";', "memSize", "a positive integer"),
    ("installBootLoader-string", 'installBootLoader = "yes";', "installBootLoader",
     "true or false"),
    ("deterministic-int", "deterministic = 1;", "deterministic", "but is: 1"),
    ("copyChannel-null", "copyChannel = null;", "copyChannel", "but is: null"),
    ("rootGPUID-short", 'rootGPUID = "F222513B-DED1-49FA-B591";', "rootGPUID", "GUID"),
    ("rootFSUID-word", 'rootFSUID = "root";', "rootFSUID", "UUID"),
    ("label-int", "label = 5;", "label", "a string"),
    ("name-list", 'name = [ "image" ];', "name", "but is: a list"),
    ("baseName-int", "baseName = 1;", "baseName", "a string"),
    ("postVM-list", "postVM = [ ];", "postVM", "a string"),
    ("bootSize-bool", "bootSize = true;", "bootSize", "512M"),
    ("additionalSpace-list", 'additionalSpace = [ "1G" ];', "additionalSpace", "512M"),
    ("contents-string", 'contents = "/etc/motd";', "contents", "a list of"),
    ("contents-no-target", "contents = [ { source = ./x; } ];", "contents", "a list of"),
    ("configFile-int", "configFile = 3;", "configFile", "null, a path"),
    ("additionalPaths-string", 'additionalPaths = "/nix/store/x";', "additionalPaths",
     "a list of store paths"),
    ("efiFirmware-int", 'partitionTableType = "efi"; touchEFIVars = true; efiFirmware = 1;',
     "efiFirmware", "a path"),
    ("OVMF-string", 'OVMF = "ovmf";', "OVMF", "a derivation"),
]  # fmt: skip


def instantiate(arguments: str) -> subprocess.CompletedProcess[str]:
    expr = EVALUATION.replace("REPO", str(REPO)).replace("ARGS", "{ " + arguments + " }")
    # --readonly-mode: not even a .drv may be written to the store.
    return subprocess.run(["nix-instantiate", "--readonly-mode", "-E", expr],
                          capture_output=True, text=True, check=False)  # fmt: skip


@pytest.mark.nix
@needs_nix
@pytest.mark.parametrize(("arguments", "argument", "fragment"),
                         [case[1:] for case in BAD_ARGUMENTS],
                         ids=[case[0] for case in BAD_ARGUMENTS])  # fmt: skip
def test_default_nix_refuses_a_wrong_argument_at_evaluation(
    arguments: str, argument: str, fragment: str
) -> None:
    proc = instantiate(arguments)
    assert proc.returncode != 0, proc.stdout
    assert f"error: makeDiskImage: argument `{argument}`" in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr
    # Nothing was looked at but the arguments.
    assert "was forced" not in proc.stderr, proc.stderr


@pytest.mark.nix
@needs_nix
@pytest.mark.parametrize("arguments", [
    "",
    'partitionTableType = "efi"; touchEFIVars = true; format = "vhdx"; diskSize = "minimal";',
    'onlyNixStore = true; installBootLoader = false; partitionTableType = "none"; '
    'fsType = "squashfs"; rootFSUID = null;',
    'fsType = "xfs"; partitionTableType = "hybrid"; label = "root"; requireKVM = false;',
    'contents = [ { source = ./x; target = "/x"; user = "bob"; group = "users"; } ]; '
    'diskSize = 2048; memSize = 2048; additionalPaths = [ ./x ];',
    # Keys the reference ignores are ignored (default.nix warns when it reads them).
    'contents = [ { source = ./x; target = "/x"; owner = "root"; } ];',
], ids=["defaults", "efi-vhdx-minimal", "squashfs-store", "xfs-hybrid", "contents",
        "contents-unknown-key"])  # fmt: skip
def test_right_arguments_pass_the_checks(arguments: str) -> None:
    """The control: right arguments get past the checks, to where pkgs or config is
    first needed, so the checks above are what stopped the wrong ones."""
    proc = instantiate(arguments)
    assert proc.returncode != 0
    assert re.search(r"error: (pkgs|config) was forced", proc.stderr), proc.stderr


@pytest.mark.nix
@needs_nix
def test_build_vm_gets_the_root_filesystem_s_kernel_module() -> None:
    """With nixpkgs' vmTools (it has `override`), a root filesystem whose module the
    build VM does not load already (interface.json: kernelModule) is added to its
    rootModules; ext2/3/4 need none."""
    expr = f"""
      let
        standIn = (import {REPO}/tests/nixpkgs/flake.nix).outputs {{ self = null; }};
        system = standIn.lib.nixosSystem {{
          system = "x86_64-linux";
          modules = [ {REPO}/nix/check-configuration.nix
                      {{ boot.loader.grub.device = "/dev/vda"; }} ];
        }};
        pkgs = system.pkgs // {{
          vmTools = system.pkgs.vmTools // {{
            override = args: system.pkgs.vmTools // {{
              runInLinuxVM = drv: drv // {{ inherit (args) rootModules; }};
            }};
          }};
        }};
        image = fsType: import {REPO}/default.nix {{
          inherit pkgs fsType; inherit (pkgs) lib; inherit (system) config;
          partitionTableType = "none";
        }};
      in map (fsType: (image fsType).rootModules or null) [ "ext4" "ext3" "btrfs" "xfs" ]
    """
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ext4, ext3, btrfs, xfs = json.loads(proc.stdout)
    assert ext4 is None and ext3 is None
    assert btrfs[-1] == "btrfs" and xfs[-1] == "xfs" and "ext4" in btrfs

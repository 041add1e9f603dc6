"""make_disk_image/interface.json, the one description of makeDiskImage's interface that
default.nix, nix/module.nix and the engine read: its Python view agrees with the
engine's code and with default.nix's function, and it is installed with the package;
default.nix refuses a wrong argument at evaluation as the engine does. (default.nix's
defaults against the table's and the engine's: tests/test_interface_defaults.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX
from nix_expressions import NixPath, nix

from make_disk_image import interface
from make_disk_image.arguments import ROWS
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.layouts import LAYOUTS
from make_disk_image.models import Format
from make_disk_image.spec import SpecError, parse_spec

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
    assert set(interface.COMPUTED) == computed
    assert set(ROWS) - computed == set(interface.ARGUMENTS) - nix_only


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

X = NixPath("x")
STORE_X = "/nix/store/" + "0" * 32 + "-x"


def in_spec(value: Any) -> Any:
    """A Python value as default.nix's builtins.toJSON writes it into the spec."""
    if isinstance(value, NixPath):
        return STORE_X
    if isinstance(value, list):
        return [in_spec(v) for v in value]
    if isinstance(value, dict):
        return {k: in_spec(v) for k, v in value.items()}
    return value


STORE_IMAGE = {"onlyNixStore": True, "installBootLoader": False, "partitionTableType": "none"}
# id, arguments, the argument named, a fragment of the message. Each goes through Nix's
# evaluation and, but for OVMF and requireKVM (only Nix uses them), through the engine.
BAD_ARGUMENTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("partitionTableType-gpt", {"partitionTableType": "gpt"}, "partitionTableType",
     'must be one of "legacy", "legacy+boot"'),
    ("format-ova", {"format": "ova"}, "format", '"vmdk"'),
    ("fsType-zfs", {"fsType": "zfs", "partitionTableType": "none"}, "fsType", '"xfs"'),
    ("fsType-ext3-in-table", {"fsType": "ext3"}, "fsType",
     "to produce a partition table, we need to use -E offset flag which is support only "
     "for fsType = ext4"),
    ("fsType-read-only-root", {"fsType": "squashfs", "partitionTableType": "none"}, "fsType",
     'use one of "ext2", "ext3", "ext4", "btrfs", "xfs"'),
    ("read-only-in-table", {"fsType": "erofs", "onlyNixStore": True,
                            "installBootLoader": False}, "partitionTableType", "whole image"),
    ("touchEFIVars-legacy", {"touchEFIVars": True}, "touchEFIVars",
     "EFI variables can be used only with a partition table of type: hybrid, efi, "
     "efixbootldr, or legacy+gpt."),
    ("onlyNixStore-bootloader", {"onlyNixStore": True, "partitionTableType": "none"},
     "onlyNixStore", "In a only Nix store image, the contents must be empty, no "
     "configuration must be provided and no bootloader should be installed."),
    ("onlyNixStore-contents", {"onlyNixStore": True, "installBootLoader": False,
                               "contents": [{"source": X, "target": "/x"}]},
     "onlyNixStore", "contents must be empty"),
    ("onlyNixStore-configFile", {"onlyNixStore": True, "installBootLoader": False,
                                 "configFile": X},
     "onlyNixStore", "no configuration must be provided"),
    ("contents-user-only", {"contents": [{"source": X, "target": "/x", "user": "bob"}]},
     "contents[0]", "Contents of the disk image should set none of {user, group} or both at "
     "the same time."),
    ("contents-group-only",
     {"contents": [{"source": X, "target": "/x"},
                   {"source": X, "target": "/y", "user": None, "group": "users"}]},
     "contents[1]", "should set none of {user, group}"),
    ("rootFSUID-null", {"rootFSUID": None}, "rootFSUID",
     "In deterministic mode with a ext4 partition, rootFSUID must be non-null, by default, "
     "it is equal to rootGPUID."),
    ("rootFSUID-squashfs", {"fsType": "squashfs", "onlyNixStore": True,
                            "installBootLoader": False, "partitionTableType": "none",
                            "rootFSUID": "F222513B-DED1-49FA-B591-20CE86A2FE7F"},
     "rootFSUID", "squashfs has no filesystem UUID"),
    ("label-too-long", {"label": "a-label-that-is-too-long"}, "label", "16 bytes"),
    ("label-xfs", {"label": "thirteen-char", "fsType": "xfs"}, "label", "12 bytes a xfs"),
    ("deduplicate-string", {"deduplicate": "yes"}, "deduplicate", "true or false"),
    ("compression-ext4", {"compression": "xz"}, "compression", "is not compressed"),
    ("compression-squashfs-brotli", {**STORE_IMAGE, "fsType": "squashfs",
                                     "compression": "brotli"},
     "compression", '"brotli" is not a squashfs compression; use one of "none", "gzip"'),
    ("compression-erofs-gzip", {**STORE_IMAGE, "fsType": "erofs", "compression": "gzip"},
     "compression", '"none", "lz4", "lz4hc"'),
    ("diskSize-word", {"diskSize": "big"}, "diskSize", '"auto", "minimal"'),
    ("diskSize-negative", {"diskSize": -1}, "diskSize", "-1 MiB leaves no room"),
    ("diskSize-zero", {"diskSize": "0"}, "diskSize", "give a positive number of MiB"),
    ("diskSize-zero-int", {"diskSize": 0}, "diskSize", "give a positive number of MiB"),
    ("diskSize-huge", {"diskSize": "99999999999999"}, "diskSize", "1E (2^60 bytes)"),
    ("additionalSpace-negative", {"additionalSpace": "-5G"}, "additionalSpace",
     'numfmt --from=iec reads, such as "512M"'),
    ("additionalSpace-negative-int", {"additionalSpace": -5}, "additionalSpace", "but is: -5"),
    ("additionalSpace-huge", {"additionalSpace": "2Y"}, "additionalSpace", "1E (2^60 bytes)"),
    ("bootSize-1M-efi", {"bootSize": "1M", "partitionTableType": "efi"}, "bootSize",
     "at least 8M"),
    ("bootSize-7.5M-hybrid", {"bootSize": "7.5M", "partitionTableType": "hybrid"},
     "bootSize", "at least 8M"),
    ("bootSize-xbootldr", {"bootSize": "64M", "partitionTableType": "efixbootldr"},
     "bootSize", "at least 100M"),
    ("bootSize-iec-i", {"bootSize": "1Gi"}, "bootSize", "no 'i'"),
    ("requireKVM-string", {"requireKVM": "no"}, "requireKVM", "true or false"),
    ("OVMF-string", {"OVMF": "ovmf"}, "OVMF", "a derivation"),
    ("memSize-string", {"memSize": "1G"}, "memSize", "a positive integer"),
    ("memSize-small", {"memSize": 128}, "memSize", "at least 256"),
    ("installBootLoader-string", {"installBootLoader": "yes"}, "installBootLoader",
     "true or false"),
    ("deterministic-int", {"deterministic": 1}, "deterministic", "but is: 1"),
    ("copyChannel-null", {"copyChannel": None}, "copyChannel", "but is: null"),
    ("rootGPUID-short", {"rootGPUID": "F222513B-DED1-49FA-B591"}, "rootGPUID", "GUID"),
    ("rootFSUID-word", {"rootFSUID": "root"}, "rootFSUID", "UUID"),
    ("label-int", {"label": 5}, "label", "a string"),
    ("name-list", {"name": ["image"]}, "name", "but is: a list"),
    ("name-space", {"name": "my image"}, "name", "not a derivation name"),
    ("baseName-int", {"baseName": 1}, "baseName", "a string"),
    ("baseName-slash", {"baseName": "a/b"}, "baseName", 'without "/"'),
    ("baseName-empty", {"baseName": ""}, "baseName", "not empty"),
    ("postVM-list", {"postVM": []}, "postVM", "a string"),
    ("bootSize-bool", {"bootSize": True}, "bootSize", "512M"),
    ("additionalSpace-list", {"additionalSpace": ["1G"]}, "additionalSpace", "512M"),
    ("contents-string", {"contents": "/etc/motd"}, "contents", "a list of"),
    ("contents-no-target", {"contents": [{"source": X, "target": "/x"}, {"source": X}]},
     "contents[1]", "an attribute set { source; target;"),
    ("additionalPaths-empty", {"additionalPaths": [X, ""]}, "additionalPaths[1]",
     "a store path (a derivation or a path), not empty"),
    ("configFile-int", {"configFile": 3}, "configFile", "null, a path"),
    ("configFile-empty", {"configFile": ""}, "configFile", "null, a path"),
    ("additionalPaths-string", {"additionalPaths": "/nix/store/x"}, "additionalPaths",
     "a list of store paths"),
    ("efiFirmware-int", {"partitionTableType": "efi", "touchEFIVars": True, "efiFirmware": 1},
     "efiFirmware", "a path"),
    ("two-faults-type-first", {"fsType": "zfs", "memSize": "1G"}, "memSize",
     "a positive integer"),
    ("two-faults-table-order", {"fsType": "zfs", "bootSize": "1M",
                                "partitionTableType": "efi"}, "bootSize", "at least 8M"),
]  # fmt: skip
NIX_ONLY = {"requireKVM", "OVMF"}


def instantiate(arguments: str) -> subprocess.CompletedProcess[str]:
    expr = EVALUATION.replace("REPO", str(REPO)).replace("ARGS", "{ " + arguments + " }")
    # --readonly-mode: not even a .drv may be written to the store.
    return subprocess.run(["nix-instantiate", "--readonly-mode", "-E", expr],
                          capture_output=True, text=True, check=False)  # fmt: skip


def nix_message(arguments: dict[str, Any]) -> str:
    """The message Nix's evaluation of default.nix stops with (without "makeDiskImage: ")."""
    call = " ".join(f"{key} = {nix(value)};" for key, value in arguments.items())
    proc = instantiate(call)
    assert proc.returncode != 0, proc.stdout
    # Nothing was looked at but the arguments.
    assert "was forced" not in proc.stderr, proc.stderr
    found = re.search(r"error: makeDiskImage: (.*)", proc.stderr, re.DOTALL)
    assert found, proc.stderr
    lines = [line.strip() for line in found[1].splitlines() if not line.startswith("(use")]
    return " ".join(line for line in lines if line)


def engine_message(arguments: dict[str, Any]) -> str:
    """The message the engine's spec validation stops with for the same arguments."""
    spec = {"toplevel": STORE_X, "closureInfo": STORE_X, "channelSources": STORE_X,
            **in_spec(arguments)}  # fmt: skip
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    return str(err.value)


@pytest.mark.nix
@needs_nix
@pytest.mark.parametrize(("arguments", "argument", "fragment"),
                         [case[1:] for case in BAD_ARGUMENTS],
                         ids=[case[0] for case in BAD_ARGUMENTS])  # fmt: skip
def test_nix_and_the_engine_refuse_a_wrong_argument_alike(
    arguments: dict[str, Any], argument: str, fragment: str
) -> None:
    """default.nix refuses it at evaluation; the engine refuses the spec default.nix
    would have written for it with the same message, word for word."""
    message = nix_message(arguments)
    assert message.startswith(f"argument `{argument}`: "), message
    assert fragment in message, message
    if not NIX_ONLY & set(arguments):
        assert engine_message(arguments) == message


def test_the_comparison_covers_every_rule_and_type() -> None:
    """Every rule Nix checks, and every argument type, is met by a case above."""
    named = {case[2] for case in BAD_ARGUMENTS}
    ruled = {rule.argument or name for name, row in interface.ARGUMENTS.items()
             for rule in row.rules if rule.checked_by != "engine"}  # fmt: skip
    assert ruled - {"contents"} <= named
    assert len(BAD_ARGUMENTS) >= 50


@pytest.mark.nix
@needs_nix
@pytest.mark.parametrize("arguments", [
    "",
    'partitionTableType = "efi"; touchEFIVars = true; format = "vhdx"; diskSize = "minimal";',
    'onlyNixStore = true; installBootLoader = false; partitionTableType = "none"; '
    'fsType = "squashfs"; rootFSUID = null;',
    'fsType = "xfs"; partitionTableType = "hybrid"; label = "root"; requireKVM = false;',
    'fsType = "xfs"; deduplicate = true;',
    'contents = [ { source = ./x; target = "/x"; user = "bob"; group = "users"; } ]; '
    'diskSize = 2048; memSize = 2048; additionalPaths = [ ./x ];',
    # Keys the reference ignores are ignored (default.nix warns when it reads them).
    'contents = [ { source = ./x; target = "/x"; owner = "root"; } ];',
], ids=["defaults", "efi-vhdx-minimal", "squashfs-store", "xfs-hybrid", "xfs-deduplicate",
        "contents", "contents-unknown-key"])  # fmt: skip
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

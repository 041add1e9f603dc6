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

from make_disk_image import interface
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.layouts import LAYOUTS
from make_disk_image.models import Format
from make_disk_image.spec import FIELDS

REPO = Path(__file__).resolve().parent.parent

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate (nix-bin) not installed"
)


def test_the_engine_has_code_for_every_table_entry() -> None:
    assert [f.value for f in Format] == list(interface.FORMATS)
    assert list(FILESYSTEMS) == list(interface.FS_TYPES)
    assert list(LAYOUTS) == list(interface.PARTITION_TABLE_TYPES)
    assert Format.VPC.extension == "vhd" and Format.QCOW2_COMPRESSED.product_type == "qcow2-image"


def test_every_spec_argument_is_an_interface_argument() -> None:
    """The spec carries the arguments (but pkgs, lib, config, OVMF and requireKVM, which
    only Nix uses) plus what Nix computes from them."""
    computed = {"toplevel", "closureInfo", "channelSources", "grubDevices",
                "limineBiosDevice", "ovmfSystemManagementModeRequired"}  # fmt: skip
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

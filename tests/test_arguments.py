"""make_disk_image/arguments.py: interface.json's argument table as the engine applies it
(the comparison with Nix's evaluation, message for message and default for default, is
tests/test_interface.py's and tests/test_interface_defaults.py's)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX

from make_disk_image import arguments, interface
from make_disk_image.layouts import LAYOUTS
from make_disk_image.models import Bound

SPEC = {"toplevel": "/nix/store/x", "closureInfo": "/nix/store/y", "channelSources": "/z"}


def test_every_type_and_rule_the_table_names_is_implemented() -> None:
    rows = {**interface.ARGUMENTS, **interface.COMPUTED}
    assert {row.type for row in rows.values()} <= set(arguments.TYPES) | {"context", "package"}
    assert {rule.name for row in rows.values() for rule in row.rules} == set(arguments.RULES)
    rules = {row.default_rule for row in rows.values()} - {None, "ovmfOfPkgs"}
    assert rules == set(arguments.DEFAULTS)


def test_a_row_without_a_default_is_required() -> None:
    with pytest.raises(arguments.SpecError, match="`closureInfo`: is required"):
        arguments.check_types({"toplevel": "/nix/store/x"})
    with pytest.raises(arguments.SpecError, match="`toplevel`: is required"):
        arguments.check_types({"toplevel": None, "closureInfo": "/nix/store/y"})


@pytest.mark.parametrize(("given", "label", "root_fs_uid"), [
    ({}, "nixos", "F222513B-DED1-49FA-B591-20CE86A2FE7F"),
    ({"onlyNixStore": True}, "nix-store", "F222513B-DED1-49FA-B591-20CE86A2FE7F"),
    ({"fsType": "btrfs"}, "nixos", None),
    ({"rootGPUID": "01234567-89AB-CDEF-0123-456789ABCDEF", "label": "root"}, "root",
     "01234567-89AB-CDEF-0123-456789ABCDEF"),
    ({"rootFSUID": None}, "nixos", None),
])  # fmt: skip
def test_default_rules(given: dict[str, Any], label: str, root_fs_uid: str | None) -> None:
    values = arguments.with_defaults({**SPEC, **given})
    assert values["label"] == label and values["rootFSUID"] == root_fs_uid
    assert values["diskSize"] == "auto" and values["grubDevices"] == []


def test_the_boot_partition_starts_where_the_table_says() -> None:
    """bootPartitionFits reads interface.json's bootStartMiB: it is the start of the
    partition each layout ends at bootSize."""
    for name, layout in LAYOUTS.items():
        starts = [p.start for p in layout.partitions if p.end is Bound.BOOT_SIZE]
        expected = interface.PARTITION_TABLE_TYPES[name].boot_start_mib
        assert starts == ([] if expected is None else [expected]), name


@pytest.mark.parametrize(("size", "layout", "fails"), [
    ("1M", "efi", True), ("7M", "efi", True), ("8M", "efi", False), ("7.5M", "hybrid", True),
    ("8388607", "hybrid", True), ("8388608", "hybrid", False), ("99M", "efixbootldr", True),
    ("100M", "efixbootldr", False), ("0", "legacy+boot", True), ("1M", "legacy+boot", False),
    ("0", "legacy", False), ("0", "none", False),
])  # fmt: skip
def test_boot_partition_fits(size: str, layout: str, fails: bool) -> None:
    """The reference rounds bootSize up one MiB: the partition must still end after its
    start (an ESP of 0 MiB is what parted refuses at build time)."""
    values = arguments.with_defaults({**SPEC, "bootSize": size, "partitionTableType": layout})
    rule = interface.ARGUMENTS["bootSize"].rules[1]
    assert (arguments.RULES[rule.name](values, "bootSize", rule) is not None) == fails


@pytest.mark.nix
@NEEDS_NIX
def test_values_are_shown_as_nix_shows_them() -> None:
    values: list[Any] = ["a \"quoted\" name", "ü", 5, -1, True, None, [1], {"a": 1}]
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E",
         f"map (v: if builtins.isList v then \"a list\" else if builtins.isAttrs v then "
         f"\"a set\" else builtins.toJSON v) (builtins.fromJSON {json.dumps(json.dumps(values))})"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [arguments.shown(v) for v in values] == json.loads(proc.stdout)


@pytest.mark.nix
@NEEDS_NIX
def test_a_fs_type_without_hard_links_refuses_deduplicate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsType holds hard links now (xfs through the engine's writer), so no
    argument set meets the rule hardLinksInFs; it stays for one that cannot. With a
    table whose xfs row has none, Nix and the engine refuse alike."""
    from test_interface import EVALUATION, REPO, engine_message, nix

    table = json.loads(interface.PATH.read_text())
    assert all(row["hardLinks"] for row in table["fsTypes"])
    for row in table["fsTypes"]:
        row["hardLinks"] = row["name"] != "xfs"
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "nix", copy / "nix")
    shutil.copy(REPO / "default.nix", copy)
    (copy / "make_disk_image").mkdir()
    (copy / "make_disk_image/interface.json").write_text(json.dumps(table))
    arguments = {"fsType": "xfs", "deduplicate": True}
    call = " ".join(f"{key} = {nix(value)};" for key, value in arguments.items())
    expr = EVALUATION.replace("REPO/default.nix", f"{copy}/default.nix")
    proc = subprocess.run(["nix-instantiate", "--readonly-mode", "-E",
                           expr.replace("REPO", str(REPO)).replace("ARGS", "{ " + call + " }")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    found = re.search(r"error: makeDiskImage: (.*)", proc.stderr, re.DOTALL)
    assert found, proc.stderr
    message = " ".join(line.strip() for line in found[1].splitlines()
                       if line.strip() and not line.startswith("(use"))
    assert message == ("argument `deduplicate`: fsType xfs cannot hold hard links; set "
                       "deduplicate = false, or use a fsType with hard links: \"ext2\", "
                       '"ext3", "ext4", "btrfs", "erofs", "squashfs"')
    monkeypatch.setitem(interface.FS_TYPES, "xfs",
                        replace(interface.FS_TYPES["xfs"], hard_links=False))
    assert engine_message(arguments) == message

"""Spec validation: every reference assert, types, unknown keys; messages name the argument."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from make_disk_image import platforms
from make_disk_image.models import MIB, Format, Spec
from make_disk_image.spec import SpecError, load_spec, parse_spec

BASE: dict[str, Any] = {"toplevel": "/nix/store/x-system", "closureInfo": "/nix/store/y-ci",
                        "channelSources": "/nix/store/z-chan"}


def spec(**kw: Any) -> dict[str, Any]:
    return {**BASE, **kw}


def test_defaults_are_the_references() -> None:
    s = parse_spec(spec())
    assert s.diskSize is None and s.additionalSpace == 512 * MIB and s.bootSize == 256 * MIB
    assert s.partitionTableType == "legacy" and s.installBootLoader and not s.touchEFIVars
    assert s.fsType == "ext4" and s.label == "nixos" and s.memSize == 1024
    assert s.format is Format.RAW and s.filename == "nixos.img" and s.deterministic
    assert s.rootGPUID == "F222513B-DED1-49FA-B591-20CE86A2FE7F" == s.rootFSUID
    assert s.copyChannel and s.name == "nixos-disk-image"


def test_label_default_follows_only_nix_store() -> None:
    s = parse_spec(spec(onlyNixStore=True, installBootLoader=False, partitionTableType="none"))
    assert s.label == "nix-store"


@pytest.mark.parametrize(("fmt", "filename"), [("raw", "nixos.img"), ("qcow2", "nixos.qcow2"),
                         ("qcow2-compressed", "nixos.qcow2"), ("vdi", "nixos.vdi"),
                         ("vpc", "nixos.vhd"), ("vmdk", "nixos.vmdk"), ("vhdx", "nixos.vhdx"),
                         ("qcow2-zstd", "nixos.qcow2"), ("raw-zstd", "nixos.img.zst")])
def test_filenames(fmt: str, filename: str) -> None:
    assert parse_spec(spec(format=fmt)).filename == filename


@pytest.mark.parametrize(("overrides", "argument", "fragment"), [
    ({"partitionTableType": "gpt"}, "partitionTableType", '"legacy"'),
    ({"fsType": "ext3", "partitionTableType": "efi"}, "fsType", "-E offset"),
    ({"fsType": "zfs", "partitionTableType": "none"}, "fsType", '"btrfs", "xfs"'),
    ({"fsType": "erofs", "partitionTableType": "none"}, "fsType", "read-only"),
    ({"rootFSUID": None}, "rootFSUID", "deterministic mode"),
    ({"touchEFIVars": True, "partitionTableType": "legacy"}, "touchEFIVars", "hybrid, efi"),
    ({"touchEFIVars": True, "partitionTableType": "efi"}, "efiFirmware", "OVMF"),
    ({"onlyNixStore": True}, "onlyNixStore", "bootloader"),
    ({"onlyNixStore": True, "installBootLoader": False, "configFile": "/x"}, "onlyNixStore",
     "no configuration"),
    ({"contents": [{"source": "/a", "target": "/b", "user": "u"}]}, "contents[0]",
     "none of {user, group} or both"),
    ({"contents": [{"source": "/a", "target": "/b"}, {"source": "/c", "target": "/b/"}]},
     "contents[1].target", "duplicate entry"),
    ({"contents": [{"source": "/a", "target": "/b", "mode": "rwx"}]}, "contents[0].mode",
     "octal"),
    ({"contents": [{"source": "/a"}]}, "contents[0]", "an attribute set { source; target;"),
    ({"contents": [{"source": "/a", "target": "/b", "owner": "x"}]}, "contents[0]", "owner"),
    ({"format": "ova"}, "format", '"raw-zstd"'),
    ({"diskSize": "big"}, "diskSize", '"auto"'),
    ({"diskSize": 0}, "diskSize", "positive"),
    ({"bootSize": "1Gi"}, "bootSize", "numfmt"),
    ({"additionalSpace": "lots"}, "additionalSpace", "numfmt"),
    ({"bootSize": "7M", "partitionTableType": "efi"}, "bootSize", "at least 8M"),
    ({"bootSize": "64M", "partitionTableType": "efixbootldr"}, "bootSize", "at least 100M"),
    ({"rootGPUID": "not-a-guid"}, "rootGPUID", "GUID"),
    ({"label": "a-label-that-is-too-long"}, "label", "16 bytes"),
    ({"copyChannel": True, "channelSources": None}, "channelSources", "copyChannel"),
    ({"memSize": "1024"}, "memSize", "integer"),
    ({"installBootLoader": "yes"}, "installBootLoader", "true or false"),
    ({"additionalPaths": "/nix/store/a"}, "additionalPaths", "list"),
    ({"baseName": "a/b"}, "baseName", "/"),
    ({"colour": "blue"}, "colour", "unknown argument"),
])
def test_bad_input_names_the_argument(overrides: dict[str, Any], argument: str,
                                      fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec(**overrides))
    assert err.value.argument == argument
    assert fragment in str(err.value)
    assert f"`{argument}`" in str(err.value)


def test_required_keys() -> None:
    with pytest.raises(SpecError, match="toplevel"):
        parse_spec({"closureInfo": "/x", "copyChannel": False})


def test_non_ext4_rootfsuid_defaults_to_null() -> None:
    s = parse_spec(spec(fsType="ext2", partitionTableType="none"))
    assert s.rootFSUID is None


def test_globs_may_share_a_target() -> None:
    s = parse_spec(spec(contents=[{"source": "/a/*", "target": "/t"},
                                  {"source": "/b/*", "target": "/t"}]))
    assert len(s.contents) == 2 and all(c.is_glob for c in s.contents)


def test_load_spec_reports_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    bad.write_text(json.dumps(spec(diskSize=2048)))
    assert load_spec(bad).diskSize == 2048


def test_a_spec_without_system_is_checked_against_the_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No `system` means the builder's (default.nix names only another one), and the
    builder's platform is checked too: a BIOS layout on a native aarch64 builder fails."""
    monkeypatch.setattr(platforms._platform, "machine", lambda: "aarch64")
    with pytest.raises(SpecError) as err:
        parse_spec(spec())  # legacy, installBootLoader
    assert err.value.argument == "partitionTableType" and "aarch64-linux" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec(spec(partitionTableType="efi", grubDevices=["/dev/vda"]))
    assert err.value.argument == "grubDevices"
    with pytest.raises(SpecError) as err:
        parse_spec(spec(partitionTableType="efi", ovmfSystemManagementModeRequired=True))
    assert err.value.argument == "ovmfSystemManagementModeRequired"
    assert parse_spec(spec(partitionTableType="efi")).system is None
    assert parse_spec(spec(installBootLoader=False)).system is None
    # A builder of no known system builds no image, whatever the spec.
    monkeypatch.setattr(platforms._platform, "machine", lambda: "riscv64")
    with pytest.raises(SpecError, match='"riscv64-linux" is not a system'):
        parse_spec(spec(partitionTableType="efi"))


def test_spec_defaults_are_the_argument_table_s() -> None:
    """models.Spec's defaults are what the table's defaults parse to (the rules' defaults,
    label and rootFSUID, are the table's for ext4 without onlyNixStore)."""
    assert parse_spec(spec()) == Spec(**spec(), rootFSUID=Spec.rootGPUID)

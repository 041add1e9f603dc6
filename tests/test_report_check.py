"""testsys.report_check: a booted guest's report against the spec its image was built
from; every difference named. The boot tests check real reports; here one report that
matches and each way it can differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from testsys.guest_report import FileStat, GuestReport
from testsys.report_check import ESP_PARTITION_GUID, LINUX_FS_TYPE_GUID, check_report

ROOT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


@pytest.fixture
def toplevel(tmp_path: Path) -> Path:
    system = tmp_path / "x-nixos-system"
    system.mkdir()
    (system / "nixos-version").write_text("25.05.test")
    return system


def spec(toplevel: Path, **overrides: Any) -> dict[str, Any]:
    return {"toplevel": str(toplevel), "closureInfo": "/nix/store/x-closure-info",
            "copyChannel": False, "partitionTableType": "efi",
            "contents": [{"source": "/etc/hostname", "target": "/etc/motd", "mode": "0640",
                          "user": "alice", "group": "users"}], **overrides}


def report(toplevel: Path, **changes: Any) -> GuestReport:
    matching = GuestReport(
        firmware="efi",
        cmdline=f"initrd=\\EFI\\nixos\\initrd.efi init={toplevel}/init root=LABEL=nixos",
        root_device="/dev/vda2", partition_table="gpt", root_partition_number=2,
        disk_guid=None, root_partition_guid=ROOT_GUID,
        root_partition_type_guid=LINUX_FS_TYPE_GUID, disk_signature=None,
        root_partition_type=None, fs_type="ext4", fs_uuid=ROOT_GUID, fs_label="nixos",
        etc_nixos=True, profile_links={"/nix/var/nix/profiles/system": str(toplevel)},
        store_entries=frozenset({"a-lib", toplevel.name}),
        files={"/etc/motd": FileStat(1000, 100, 0o100640)},
        users={"alice": 1000}, groups={"users": 100},
        efi_variables={"LoaderEntrySelected": "nixos-generation-1.conf".encode("utf-16-le")},
        stage2_version="25.05.test",
    )
    return dataclasses.replace(matching, **changes)


def problems(toplevel: Path, raw_spec: dict[str, Any], **changes: Any) -> list[str]:
    return check_report(report(toplevel, **changes), raw_spec, firmware="uefi",
                        store_paths=[Path("/nix/store/a-lib"), toplevel])


def test_a_report_that_matches_has_no_problems(toplevel: Path) -> None:
    assert problems(toplevel, spec(toplevel)) == []


@pytest.mark.parametrize(("changes", "problem"), [
    ({"firmware": "bios"}, "firmware: got 'bios', expected 'efi'"),
    ({"fs_label": "other"}, "root file system label: got 'other', expected 'nixos'"),
    ({"fs_uuid": "0" * 8}, "root file system UUID"),
    ({"root_partition_number": 3}, "root partition number: got 3, expected 2"),
    ({"root_partition_guid": ESP_PARTITION_GUID}, "root partition GUID"),
    ({"cmdline": "root=/dev/vda2"}, "root found by label"),
    ({"etc_nixos": False}, "/etc/NIXOS exists"),
    ({"profile_links": {}}, "system profile"),
    ({"stage2_version": None}, "stage 2 of the system ran"),
    ({"efi_variables": {}}, "systemd-boot's entry"),
    ({"store_entries": frozenset({"a-lib"})}, "closure store paths missing from the image"),
    ({"files": {"/etc/motd": FileStat(0, 0, 0o100640)}}, "owner of /etc/motd"),
    ({"files": {"/etc/motd": FileStat(1000, 100, 0o100644)}}, "mode of /etc/motd"),
    ({"files": {}}, "contents target /etc/motd is missing"),
    ({"users": {}}, "/etc/motd: alice:users unknown in the image"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_each_difference_is_named(toplevel: Path, changes: dict[str, Any], problem: str) -> None:
    found = problems(toplevel, spec(toplevel), **changes)
    assert any(problem in line for line in found), found


def test_a_bios_layout_is_checked_for_mbr_and_grub(toplevel: Path) -> None:
    legacy = spec(toplevel, partitionTableType="legacy", contents=[])
    booted = report(toplevel, firmware="bios", partition_table="dos", root_partition_number=1,
                    root_partition_type="83", root_partition_type_guid=None,
                    root_partition_guid=None, efi_variables={},
                    cmdline=f"BOOT_IMAGE=/kernel init={toplevel}/init root=LABEL=nixos")
    stores = [toplevel]
    assert check_report(booted, legacy, firmware="bios", store_paths=stores) == []
    not_grub = dataclasses.replace(
        booted, cmdline=booted.cmdline.removeprefix("BOOT_IMAGE=/kernel "))
    assert check_report(not_grub, legacy, firmware="bios", store_paths=stores) == [
        "booted by GRUB: got False, expected True"]

"""testsys.guest_report: the MDI-REPORT lines of a serial console log, parsed. The boot
tests (test_boot.py) parse real logs; these are the parser's rules on logs made here."""

from __future__ import annotations

import uuid

import pytest

from testsys.guest_report import BootError, guid_le, parse_report

DISK_GUID = uuid.UUID("97FD5997-F390-0B4A-A3F8-D106C1723AEA")
FS_UUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


def console(*report_lines: str) -> str:
    """A console log: firmware and kernel noise around the report's lines, CR LF ends."""
    lines = ["BdsDxe: loading Boot0001", "[    0.000000] Linux version 6.1.0"]
    lines += [f"[    1.5] MDI-REPORT {line}" if i % 2 else f"MDI-REPORT {line}"
              for i, line in enumerate(report_lines)]
    return "\r\n".join([*lines, "reboot: Power down"]) + "\r\n"


COMPLETE = (
    "begin",
    "firmware efi",
    "cmdline BOOT_IMAGE=/kernel root=LABEL=nixos init=/nix/store/x-system/init",
    "root-device /dev/vda2",
    "partition-table gpt",
    "root-partition-number 2",
    f"disk-guid {DISK_GUID.bytes_le.hex()}",
    f"root-partition-guid {uuid.UUID(FS_UUID).bytes_le.hex()}",
    "root-partition-type-guid af3dc60f838472478e793d69d8477de4",
    "fs-type ext4",
    f"fs-uuid {uuid.UUID(FS_UUID).hex}",
    "fs-label nixos",
    "etc-nixos yes",
    "profile-link /nix/var/nix/profiles/system system-1-link",
    "profile-link /nix/var/nix/profiles/system-1-link /nix/store/x-system",
    "store x-system",
    "store y-lib",
    "stat 0 0 41ed /",
    "stat 1000 100 81a0 /etc/motd",
    "passwd alice:x:1000:100::/home/alice:/bin/sh",
    "passwd broken-line",
    "group users:x:100:",
    "efivar BootCurrent 0100",
    "efivar LoaderEntrySelected " + "nixos-generation-1.conf\0".encode("utf-16-le").hex(),
    "root-sectors 4096",
    "fs-blocks 512",
    "machine x86_64",
    "end",
)


def test_a_complete_report_is_parsed_field_by_field() -> None:
    report = parse_report(console(*COMPLETE, "stage2 25.05.test"))
    assert (report.firmware, report.root_device, report.partition_table) == (
        "efi", "/dev/vda2", "gpt")
    assert report.cmdline.split()[1] == "root=LABEL=nixos"
    assert report.root_partition_number == 2
    # GUIDs come as the disk holds them (mixed endian) and are given in canonical form.
    assert report.disk_guid == str(DISK_GUID).upper()
    assert report.root_partition_guid == FS_UUID
    assert report.root_partition_type_guid == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert (report.fs_type, report.fs_uuid, report.fs_label) == ("ext4", FS_UUID, "nixos")
    assert report.etc_nixos
    assert report.system_profile_target() == "/nix/store/x-system"
    assert report.store_entries == {"x-system", "y-lib"}
    motd = report.files["/etc/motd"]
    assert (motd.uid, motd.gid, motd.permissions, motd.is_dir) == (1000, 100, 0o640, False)
    assert report.files["/"].is_dir
    assert report.users == {"alice": 1000} and report.groups == {"users": 100}
    assert report.boot_current == 1
    assert report.loader_entry_selected == "nixos-generation-1.conf"
    assert (report.root_sectors, report.fs_blocks, report.machine) == (4096, 512, "x86_64")
    assert report.stage2_version == "25.05.test"
    assert report.disk_signature is None and report.root_partition_type is None


def test_what_the_guest_left_out_is_none() -> None:
    report = parse_report(console("begin", "partition-table dos", "disk-signature 1a2b3c4d",
                                  "root-partition-type 83", "end"))
    assert (report.disk_signature, report.root_partition_type) == ("1a2b3c4d", "83")
    assert report.disk_guid is None and report.root_partition_number is None
    assert report.fs_uuid == "" and not report.etc_nixos
    assert report.stage2_version is None and report.boot_current is None
    assert report.loader_entry_selected is None
    # No profile link: the profile path is where it leads.
    assert report.system_profile_target() == "/nix/var/nix/profiles/system"


def test_a_profile_link_loop_leads_nowhere() -> None:
    report = parse_report(console(
        "begin", "profile-link /nix/var/nix/profiles/system system-1-link",
        "profile-link /nix/var/nix/profiles/system-1-link system", "end"))
    assert report.system_profile_target() is None


@pytest.mark.parametrize(("lines", "message"), [
    (COMPLETE[:-1], "no complete report"),
    (COMPLETE[1:], "no complete report"),
    ((), "no complete report"),
    (("begin", "error root LABEL=nixos not found", "end"),
     "the guest's initramfs failed: root LABEL=nixos not found"),
], ids=["no-end", "no-begin", "no-report", "guest-error"])
def test_an_incomplete_or_failed_report_raises_with_the_console(
    lines: tuple[str, ...], message: str
) -> None:
    serial = console(*lines)
    with pytest.raises(BootError, match=message) as raised:
        parse_report(serial)
    assert raised.value.serial == serial
    assert "--- last serial console lines ---" in str(raised.value)


def test_guid_le_reads_the_mixed_endian_form() -> None:
    assert guid_le("3b5122f2d1defa49b59120ce86a2fe7f") == FS_UUID

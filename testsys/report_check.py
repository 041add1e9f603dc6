"""Compare a booted guest's report with the SPEC.json its image was built from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from make_disk_image.spec import parse_spec
from testsys.boot import Firmware
from testsys.guest_report import GuestReport

# The partition make-disk-image puts the root file system on, per layout.
ROOT_PARTITION = {
    "legacy": 1,
    "legacy+boot": 2,
    "legacy+gpt": 2,
    "efi": 2,
    "efixbootldr": 3,
    "hybrid": 3,
}
ESP_PARTITION_GUID = "1C06F03B-704E-4657-B9CD-681A087A2FDC"
LINUX_FS_TYPE_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def check_report(
    report: GuestReport,
    raw_spec: Mapping[str, Any],
    *,
    firmware: Firmware,
    store_paths: Sequence[Path],
    loader: Literal["grub", "systemd-boot"] | None = None,
) -> list[str]:
    """Every way the booted guest differs from what the spec asks for; [] when none.

    `loader`: the boot loader that booted it; by default GRUB for BIOS, systemd-boot
    for UEFI."""
    spec = parse_spec(dict(raw_spec))
    problems: list[str] = []

    def expect(what: str, got: object, wanted: object) -> None:
        if got != wanted:
            problems.append(f"{what}: got {got!r}, expected {wanted!r}")

    layout = spec.partitionTableType
    expect("firmware", report.firmware, "efi" if firmware == "uefi" else "bios")
    expect("root file system label", report.fs_label, spec.label)
    expect("root file system type", report.fs_type, spec.fsType)
    expect("root found by label", f"root=LABEL={spec.label}" in report.cmdline.split(), True)
    if spec.deterministic:
        expect("root file system UUID", report.fs_uuid, (spec.rootFSUID or spec.rootGPUID).upper())
    if layout in ROOT_PARTITION:
        expect("root partition number", report.root_partition_number, ROOT_PARTITION[layout])
        table = "dos" if layout in ("legacy", "legacy+boot") else "gpt"
        expect("partition table", report.partition_table, table)
        if table == "gpt":
            expect("root partition type", report.root_partition_type_guid, LINUX_FS_TYPE_GUID)
            if spec.deterministic:
                expect("root partition GUID", report.root_partition_guid, spec.rootGPUID.upper())
        else:
            expect("root partition type", report.root_partition_type, "83")
    expect("/etc/NIXOS exists", report.etc_nixos, True)
    expect("system profile", report.system_profile_target(), spec.toplevel)
    expect(
        "stage 2 of the system ran",
        report.stage2_version,
        (Path(spec.toplevel) / "nixos-version").read_text(),
    )
    expect("kernel's init", f"init={spec.toplevel}/init" in report.cmdline.split(), True)
    loader = loader or ("grub" if firmware == "bios" else "systemd-boot")
    if loader == "grub":
        # GRUB's `linux` command puts BOOT_IMAGE first; SeaBIOS alone cannot load a kernel.
        expect("booted by GRUB", report.cmdline.startswith("BOOT_IMAGE="), True)
    else:
        expect("systemd-boot's entry", report.loader_entry_selected, "nixos-generation-1.conf")
    missing = sorted(p.name for p in store_paths if p.name not in report.store_entries)
    expect("closure store paths missing from the image", missing, [])

    for entry in spec.contents:
        target = "/" + entry.target.strip("/")
        under = {
            path: stat
            for path, stat in report.files.items()
            if path == target or path.startswith(target + "/")
        }
        if target not in under:
            problems.append(f"contents target {target} is missing")
            continue
        if entry.user is not None and entry.group is not None:
            uid, gid = report.users.get(entry.user), report.groups.get(entry.group)
            if uid is None or gid is None:
                problems.append(f"{target}: {entry.user}:{entry.group} unknown in the image")
            for path, stat in sorted(under.items()):
                expect(f"owner of {path}", (stat.uid, stat.gid), (uid, gid))
        if entry.mode is not None and entry.mode.isdigit():
            expect(f"mode of {target}", oct(under[target].permissions), oct(int(entry.mode, 8)))
    return problems

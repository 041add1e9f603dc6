"""The guest's report: the MDI-REPORT lines the test system's initramfs prints.

The initramfs (scripts/stage-1-init.sh) mounts the root by label and prints what it
found on the serial console as "MDI-REPORT KEY VALUE" lines between "begin" and "end";
`parse_report` turns a console log into a `GuestReport`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

REPORT_PREFIX = "MDI-REPORT "


class BootError(Exception):
    """The image did not boot to a complete report; `serial` holds the console log."""

    def __init__(self, message: str, serial: str) -> None:
        tail = "\n".join(serial.splitlines()[-40:])
        super().__init__(f"{message}\n--- last serial console lines ---\n{tail}")
        self.serial = serial


@dataclass(frozen=True)
class FileStat:
    uid: int
    gid: int
    mode: int  # st_mode, type bits included

    @property
    def permissions(self) -> int:
        return self.mode & 0o7777

    @property
    def is_dir(self) -> bool:
        return self.mode & 0o170000 == 0o040000


@dataclass(frozen=True)
class GuestReport:
    """What the booted initramfs found, as parsed from its MDI-REPORT lines."""

    firmware: str
    cmdline: str
    root_device: str
    partition_table: str  # gpt, dos or none
    root_partition_number: int | None
    disk_guid: str | None
    root_partition_guid: str | None
    root_partition_type_guid: str | None
    disk_signature: str | None
    root_partition_type: str | None  # MBR partition type byte, hex
    fs_type: str
    fs_uuid: str
    fs_label: str
    etc_nixos: bool
    profile_links: Mapping[str, str]
    store_entries: frozenset[str]
    files: Mapping[str, FileStat]
    users: Mapping[str, int]
    groups: Mapping[str, int]
    efi_variables: Mapping[str, bytes] = field(default_factory=dict)
    stage2_version: str | None = None
    root_sectors: int | None = None  # the root device's size in 512-byte sectors
    fs_blocks: int | None = None  # the superblock's block count (low 32 bits)
    machine: str | None = None  # uname -m of the booted kernel

    def system_profile_target(self) -> str | None:
        """Where /nix/var/nix/profiles/system leads, following the profile's links."""
        path = "/nix/var/nix/profiles/system"
        for _ in range(10):
            target = self.profile_links.get(path)
            if target is None:
                return path
            path = target if target.startswith("/") else f"/nix/var/nix/profiles/{target}"
        return None

    @property
    def boot_current(self) -> int | None:
        data = self.efi_variables.get("BootCurrent")
        return struct.unpack("<H", data[:2])[0] if data and len(data) >= 2 else None

    @property
    def loader_entry_selected(self) -> str | None:
        data = self.efi_variables.get("LoaderEntrySelected")
        return data.decode("utf-16-le").rstrip("\0") if data else None



def guid_le(hex_text: str) -> str:
    """A GUID as stored on disk (GPT, EFI: mixed endian) -> canonical upper-case text."""
    return str(uuid.UUID(bytes_le=bytes.fromhex(hex_text))).upper()


def parse_report(serial: str) -> GuestReport:
    """Parse the MDI-REPORT lines of a serial console log; raise BootError if incomplete."""
    values: dict[str, str] = {}
    profile_links: dict[str, str] = {}
    store: set[str] = set()
    files: dict[str, FileStat] = {}
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    efi_variables: dict[str, bytes] = {}
    began = ended = False
    for raw_line in serial.splitlines():
        at = raw_line.find(REPORT_PREFIX)
        if at < 0:
            continue
        key, _, rest = raw_line[at + len(REPORT_PREFIX) :].rstrip("\r").partition(" ")
        match key:
            case "begin":
                began = True
            case "end":
                ended = True
            case "error":
                raise BootError(f"the guest's initramfs failed: {rest}", serial)
            case "profile-link":
                link, _, target = rest.partition(" ")
                profile_links[link] = target
            case "store":
                store.add(rest)
            case "stat":
                uid, gid, mode, *path = rest.split(" ", 3)
                files[path[0] if path and path[0] else "/"] = FileStat(
                    int(uid), int(gid), int(mode, 16)
                )
            case "passwd" | "group":
                fields = rest.split(":")
                if len(fields) >= 3 and fields[2].isdigit():
                    (users if key == "passwd" else groups)[fields[0]] = int(fields[2])
            case "efivar":
                name, _, data = rest.partition(" ")
                efi_variables[name] = bytes.fromhex(data)
            case _:
                values[key] = rest
    if not (began and ended):
        raise BootError("the guest printed no complete report", serial)

    def optional(key: str) -> str | None:
        return values.get(key) or None

    partition_number = optional("root-partition-number")
    part_guid = optional("root-partition-guid")
    part_type = optional("root-partition-type-guid")
    disk_guid = optional("disk-guid")
    return GuestReport(
        firmware=values.get("firmware", ""),
        cmdline=values.get("cmdline", ""),
        root_device=values.get("root-device", ""),
        partition_table=values.get("partition-table", ""),
        root_partition_number=int(partition_number) if partition_number else None,
        disk_guid=guid_le(disk_guid) if disk_guid else None,
        root_partition_guid=guid_le(part_guid) if part_guid else None,
        root_partition_type_guid=guid_le(part_type) if part_type else None,
        disk_signature=optional("disk-signature"),
        root_partition_type=optional("root-partition-type"),
        fs_type=values.get("fs-type", ""),
        fs_uuid=str(uuid.UUID(hex=values["fs-uuid"])).upper() if values.get("fs-uuid") else "",
        fs_label=values.get("fs-label", ""),
        etc_nixos=values.get("etc-nixos") == "yes",
        profile_links=profile_links,
        store_entries=frozenset(store),
        files=files,
        users=users,
        groups=groups,
        efi_variables=efi_variables,
        stage2_version=optional("stage2"),
        root_sectors=int(values["root-sectors"]) if values.get("root-sectors") else None,
        fs_blocks=int(values["fs-blocks"]) if values.get("fs-blocks") else None,
        machine=optional("machine"),
    )

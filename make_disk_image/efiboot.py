"""The EFI boot entry for systemd-boot, made sure of after switch-to-configuration.

With `touchEFIVars`, the image's `efi-vars.fd` must carry a Boot#### entry for the
boot loader on the ESP, which `bootctl install` writes. But nixpkgs' nixos-enter runs
its command in a new PID namespace, and bootctl of systemd >= 257 takes that for a
container and skips the EFI variables ("Not booted with EFI or running in a container,
skipping EFI variable modifications."). So the guest, outside nixos-enter, looks for an
entry that boots systemd-boot from the ESP and, when there is none, writes one as
bootctl would: a Boot#### variable (the first free number) with the description
"Linux Boot Manager", a hard-drive media device path (partition number, start, size,
GPT partition GUID) and the file path of systemd-boot, put first in BootOrder.

efivarfs files are the variable's 4 attribute bytes followed by its data; for Boot####
the data is an EFI_LOAD_OPTION (UEFI 2.10, 3.1.3). Both are read and written here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import PlannedPartition
from make_disk_image.platforms import PLATFORMS

logger = logging.getLogger("make_disk_image")

STEP = "guest: EFI boot entry"
EFIVARS = Path("/sys/firmware/efi/efivars")
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, as bootctl sets them.
BOOT_VARIABLE_ATTRIBUTES = 0x7
LOAD_OPTION_ACTIVE = 0x1
DESCRIPTION = "Linux Boot Manager"  # bootctl's default (--efi-boot-option-description)

# Device path nodes: (type, subtype).
MEDIA_HARD_DRIVE = (0x04, 0x01)
MEDIA_FILE_PATH = (0x04, 0x04)
END_ENTIRE = (0x7F, 0xFF)
HARD_DRIVE_NODE_LENGTH = 42
PARTITION_FORMAT_GPT = 0x02
SIGNATURE_TYPE_GUID = 0x02

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10

BOOT_VARIABLE = re.compile(rf"^Boot([0-9A-F]{{4}})-{EFI_GLOBAL_VARIABLE}$")


@dataclass(frozen=True)
class HardDrive:
    """A MEDIA_HARDDRIVE_DP node for a GPT partition."""

    partition: int
    start: int  # LBA
    size: int  # sectors
    guid: uuid.UUID


@dataclass(frozen=True)
class LoadOption:
    """An EFI_LOAD_OPTION; only the nodes this module reads are kept."""

    attributes: int
    description: str
    hard_drive: HardDrive | None
    path: str | None  # the file path node, with backslashes
    optional_data: bytes = b""

    def boots(self, guid: uuid.UUID, path: str) -> bool:
        # bootctl's same_entry(): the partition GUID, and the path case-insensitively
        # (some firmware upper-cases it).
        return (
            self.hard_drive is not None
            and self.hard_drive.guid == guid
            and self.path is not None
            and self.path.lower() == path.lower()
        )


def ucs2(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


def read_ucs2(data: bytes, offset: int) -> tuple[str, int]:
    """The NUL-terminated UCS-2 string at `offset`, and the offset after it."""
    end = offset
    while end + 1 < len(data) and data[end : end + 2] != b"\0\0":
        end += 2
    if end + 1 >= len(data):
        raise ValueError("unterminated UCS-2 string")
    return data[offset:end].decode("utf-16-le"), end + 2


def compose_load_option(option: LoadOption) -> bytes:
    nodes = b""
    if option.hard_drive is not None:
        hd = option.hard_drive
        nodes += struct.pack(
            "<BBHIQQ16sBB",
            *MEDIA_HARD_DRIVE,
            HARD_DRIVE_NODE_LENGTH,
            hd.partition,
            hd.start,
            hd.size,
            hd.guid.bytes_le,
            PARTITION_FORMAT_GPT,
            SIGNATURE_TYPE_GUID,
        )
    if option.path is not None:
        path = ucs2(option.path)
        nodes += struct.pack("<BBH", *MEDIA_FILE_PATH, 4 + len(path)) + path
    nodes += struct.pack("<BBH", *END_ENTIRE, 4)
    return (
        struct.pack("<IH", option.attributes, len(nodes))
        + ucs2(option.description)
        + nodes
        + option.optional_data
    )


def parse_load_option(data: bytes) -> LoadOption:
    if len(data) < 6:
        raise ValueError("shorter than an EFI_LOAD_OPTION header")
    attributes, path_length = struct.unpack_from("<IH", data)
    description, offset = read_ucs2(data, 6)
    end = offset + path_length
    if end > len(data):
        raise ValueError("device path runs past the end of the load option")
    hard_drive: HardDrive | None = None
    path: str | None = None
    # The first device path instance only; nodes until End Entire.
    while offset + 4 <= end:
        node_type, subtype, length = struct.unpack_from("<BBH", data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(f"bad device path node length {length}")
        body = data[offset + 4 : offset + length]
        if (node_type, subtype) == END_ENTIRE:
            break
        if (node_type, subtype) == MEDIA_HARD_DRIVE and length == HARD_DRIVE_NODE_LENGTH:
            number, start, size, signature, fmt, sig_type = struct.unpack("<IQQ16sBB", body)
            if fmt == PARTITION_FORMAT_GPT and sig_type == SIGNATURE_TYPE_GUID:
                hard_drive = HardDrive(number, start, size, uuid.UUID(bytes_le=signature))
        elif (node_type, subtype) == MEDIA_FILE_PATH:
            path = read_ucs2(body + b"\0\0", 0)[0]
        offset += length
    return LoadOption(attributes, description, hard_drive, path, data[end:])


def read_variable(efivars: Path, name: str) -> bytes | None:
    """The data of variable `name` (without its attribute bytes), None if absent."""
    try:
        raw = (efivars / f"{name}-{EFI_GLOBAL_VARIABLE}").read_bytes()
    except FileNotFoundError:
        return None
    return raw[4:]


def write_variable(efivars: Path, name: str, data: bytes) -> None:
    path = efivars / f"{name}-{EFI_GLOBAL_VARIABLE}"
    if path.exists():
        clear_immutable(path)
    # efivarfs takes a variable in one write: attributes and data together.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        payload = struct.pack("<I", BOOT_VARIABLE_ATTRIBUTES) + data
        if os.write(fd, payload) != len(payload):
            raise process.StepError(STEP, f"short write to {path}")
    finally:
        os.close(fd)


def clear_immutable(path: Path) -> None:
    """efivarfs marks most existing variables immutable against accidents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = bytearray(struct.pack("<l", 0))
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        value = struct.unpack("<l", flags)[0]
        if value & FS_IMMUTABLE_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<l", value & ~FS_IMMUTABLE_FL))
    except OSError as exc:
        # Not a file system with attribute flags (a test's plain directory): nothing set.
        if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def boot_entries(efivars: Path) -> dict[int, LoadOption]:
    entries: dict[int, LoadOption] = {}
    for child in efivars.iterdir():
        match = BOOT_VARIABLE.match(child.name)
        if not match:
            continue
        number = int(match.group(1), 16)
        try:
            entries[number] = parse_load_option(child.read_bytes()[4:])
        except ValueError as exc:
            # A firmware's own entry this parser does not follow is simply not ours.
            logger.info("efiboot: skipping %s: %s", child.name, exc)
    return entries


def boot_order(efivars: Path) -> list[int]:
    data = read_variable(efivars, "BootOrder") or b""
    return list(struct.unpack(f"<{len(data) // 2}H", data[: len(data) // 2 * 2]))


def free_slot(used: set[int]) -> int:
    """bootctl's find_slot(): the lowest number no Boot#### variable has."""
    for number in range(0x10000):
        if number not in used:
            return number
    raise process.StepError(STEP, "all 65536 Boot#### variables are in use")


def systemd_boot_path(machine: str | None = None) -> str:
    """systemd-boot's path on the ESP for `machine` (this one's by default): its file
    name ends in the platform's UEFI architecture name, as bootctl's get_efi_arch()."""
    machine = machine or platform.machine()
    for plat in PLATFORMS.values():
        if plat.machine == machine:
            return f"\\EFI\\systemd\\systemd-boot{plat.efi_arch}.efi"
    raise process.StepError(STEP, f"no systemd-boot EFI architecture for {machine}")


def esp_on_disk(disk: Path, number: int) -> HardDrive:
    """Partition `number` of `disk` as the GPT says, read by sfdisk."""
    out = process.run(["sfdisk", "--json", disk], step=STEP).stdout
    table = json.loads(out)["partitiontable"]
    if table.get("label") != "gpt":
        raise process.StepError(STEP, f"{disk} has no GPT; an EFI boot entry needs one")
    suffix = re.compile(rf"\D{number}$")
    for part in table["partitions"]:
        if suffix.search(part["node"]):
            return HardDrive(number, part["start"], part["size"], uuid.UUID(part["uuid"]))
    raise process.StepError(STEP, f"{disk} has no partition {number}")


def ensure_boot_entry(
    esp_mount: Path,
    esp_partition: PlannedPartition,
    disk: Path,
    *,
    efivars: Path = EFIVARS,
    machine: str | None = None,
) -> bool:
    """After switch-to-configuration: make sure an EFI boot entry starts systemd-boot
    from the ESP. Returns True when this wrote one, False when none was needed (no
    systemd-boot on the ESP, or an entry is there already)."""
    loader = systemd_boot_path(machine)
    if not (esp_mount / loader.lstrip("\\").replace("\\", "/")).is_file():
        logger.info("efiboot: no %s on the ESP, no boot entry to make sure of", loader)
        return False
    if not efivars.is_dir():
        raise process.StepError(
            STEP, f"touchEFIVars is set but there are no EFI variables at {efivars}"
        )
    esp = esp_on_disk(disk, esp_partition.number)
    if esp_partition.guid is not None and uuid.UUID(esp_partition.guid) != esp.guid:
        raise process.StepError(
            STEP,
            f"partition {esp.partition} of {disk} has GUID {esp.guid}, "
            f"the plan says {esp_partition.guid}",
        )
    entries = boot_entries(efivars)
    for number, entry in sorted(entries.items()):
        if entry.boots(esp.guid, loader):
            logger.info("efiboot: Boot%04X already boots %s from the ESP", number, loader)
            return False

    number = free_slot(set(entries))
    option = LoadOption(LOAD_OPTION_ACTIVE, DESCRIPTION, esp, loader)
    write_variable(efivars, f"Boot{number:04X}", compose_load_option(option))
    order = [number] + [n for n in boot_order(efivars) if n != number]
    write_variable(efivars, "BootOrder", struct.pack(f"<{len(order)}H", *order))
    logger.info(
        "efiboot: switch-to-configuration left no EFI boot entry for %s (bootctl skips EFI "
        "variables in a PID namespace since systemd 257); created Boot%04X %r on "
        "partition %d (%s), BootOrder %s",
        loader,
        number,
        DESCRIPTION,
        esp.partition,
        esp.guid,
        ",".join(f"{n:04X}" for n in order),
    )
    return True

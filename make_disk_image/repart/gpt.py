"""The GPT of a repart image, written directly: protective MBR, header, 128 entries and
their backup, for any sector size (sfdisk 2.38 cannot make 4096-byte sectors in a file).

The fields are those libfdisk writes for systemd-repart: the first usable LBA at 1 MiB,
the entries right after the header, the backup entries right before the backup header
(tests/test_repart_gpt.py compares the bytes with repart 254's).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENTRIES = 128
ENTRY_SIZE = 128
HEADER_SIZE = 92
FIRST_USABLE_BYTES = 1 << 20


@dataclass(frozen=True)
class GptPartition:
    type_uuid: uuid.UUID
    uuid: uuid.UUID
    first_lba: int
    last_lba: int
    attribute_bits: tuple[int, ...]
    name: str


def _entry(p: GptPartition) -> bytes:
    attributes = sum(1 << bit for bit in p.attribute_bits)
    name = p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
    return (p.type_uuid.bytes_le + p.uuid.bytes_le
            + struct.pack("<QQQ", p.first_lba, p.last_lba, attributes) + name)


def _header(*, current: int, backup: int, first: int, last: int, disk: uuid.UUID,
            entries_lba: int, entries_crc: int, sector_size: int) -> bytes:
    def pack(crc: int) -> bytes:
        return (b"EFI PART" + struct.pack("<IIII", 0x00010000, HEADER_SIZE, crc, 0)
                + struct.pack("<QQQQ", current, backup, first, last) + disk.bytes_le
                + struct.pack("<QIII", entries_lba, ENTRIES, ENTRY_SIZE, entries_crc))
    header = pack(zlib.crc32(pack(0)))
    return header.ljust(sector_size, b"\0")


def _protective_mbr(total_sectors: int, sector_size: int) -> bytes:
    size = min(total_sectors - 1, 0xFFFFFFFF)
    entry = bytes([0, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF]) + struct.pack("<II", 1, size)
    return (bytes(446) + entry + bytes(48) + b"\x55\xaa").ljust(sector_size, b"\0")


def usable_range(disk_size: int, sector_size: int) -> tuple[int, int]:
    """First and last usable LBA of a disk of `disk_size` bytes."""
    table_sectors = ENTRIES * ENTRY_SIZE // sector_size
    return FIRST_USABLE_BYTES // sector_size, disk_size // sector_size - table_sectors - 2


def write(image: Path, *, disk_uuid: uuid.UUID, sector_size: int,
          partitions: Sequence[GptPartition]) -> None:
    """Write the table into `image` (which has its final size)."""
    disk_size = image.stat().st_size
    total = disk_size // sector_size
    first, last = usable_range(disk_size, sector_size)
    table = b"".join(_entry(p) for p in partitions).ljust(ENTRIES * ENTRY_SIZE, b"\0")
    crc = zlib.crc32(table)
    table_sectors = len(table) // sector_size
    backup_entries = total - 1 - table_sectors
    common = {"first": first, "last": last, "disk": disk_uuid, "entries_crc": crc,
              "sector_size": sector_size}
    with image.open("r+b") as f:
        f.write(_protective_mbr(total, sector_size))
        f.write(_header(current=1, backup=total - 1, entries_lba=2, **common))  # type: ignore[arg-type]
        f.write(table)
        f.seek(backup_entries * sector_size)
        f.write(table)
        f.write(_header(current=total - 1, backup=1, entries_lba=backup_entries, **common))  # type: ignore[arg-type]

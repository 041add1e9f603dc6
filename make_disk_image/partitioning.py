"""Writing the partition table: libparted through pyparted, identities written directly
(GPT) or through sfdisk (MBR).

libparted is what the reference's `parted --script` runs; calling it directly with the
planned geometries (exact constraints) gives the same table without a shell script. The
reference then sets the GPT's GUIDs with sgdisk, which sleeps a second after every write
(for the kernel to reread a disk's table, even of a file): the same fields are patched
here, with both headers' CRCs, the same bytes as sgdisk's (tests/test_partitioning.py).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import partition_filesystem
from make_disk_image.models import DiskPlan
from make_disk_image.process import StepError

STEP = "partition table"


def write_partition_table(image: Path, plan: DiskPlan) -> None:
    if plan.table is None:
        return
    _write_with_libparted(image, plan)
    if plan.disk_guid is not None:
        set_gpt_guids(image, plan.disk_guid,
                      {p.number: p.guid for p in plan.partitions if p.guid})
    if plan.mbr_disk_id is not None:
        process.run(["sfdisk", "--disk-id", image, plan.mbr_disk_id], step=STEP)


def _write_with_libparted(image: Path, plan: DiskPlan) -> None:
    import _ped
    import parted

    try:
        device = parted.getDevice(str(image))
        disk = parted.freshDisk(device, plan.table)
        for planned in plan.partitions:
            geometry = parted.Geometry(device=device, start=planned.start, end=planned.end)
            template_fs = partition_filesystem(planned, plan)
            fs = parted.FileSystem(type=template_fs, geometry=geometry) if template_fs else None
            partition = parted.Partition(
                disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geometry
            )
            disk.addPartition(partition, parted.Constraint(exactGeom=geometry))
            if planned.name is not None:
                partition.name = planned.name
            for flag in planned.flags:
                partition.setFlag(_ped.partition_flag_get_by_name(flag))
            # parted's mkpart turns LBA on wherever the label has it (msdos: FAT32 -> 0x0c).
            if partition.isFlagAvailable(parted.PARTITION_LBA):
                partition.setFlag(parted.PARTITION_LBA)
        disk.commit()
    except (
        parted.PartedException,
        _ped.PartedException,
        _ped.PartitionException,
        _ped.DiskException,
        _ped.IOException,
        _ped.ConstraintException,
    ) as exc:
        raise StepError(
            STEP, f"libparted could not write the {plan.table} table to {image}: {exc}"
        ) from exc
    finally:
        if "device" in locals():
            device.removeFromCache()


SECTOR = 512


def set_gpt_guids(image: Path, disk_guid: str, partition_guids: dict[int, str]) -> None:
    """Set the disk's GUID and partitions' unique GUIDs (by number) in both GPT headers and
    entry arrays of `image`, with their CRC32s: what `sgdisk --disk-guid
    --partition-guid` changes in a table libparted wrote."""
    with image.open("r+b") as disk:
        disk.seek(SECTOR)
        primary = disk.read(SECTOR)
        if primary[:8] != b"EFI PART":
            raise StepError(STEP, f"{image} has no GPT header at LBA 1 after libparted wrote it")
        backup_lba = struct.unpack_from("<Q", primary, 32)[0]
        for lba in (1, backup_lba):
            disk.seek(lba * SECTOR)
            header = bytearray(disk.read(SECTOR))
            size, = struct.unpack_from("<I", header, 12)
            entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
            disk.seek(entries_lba * SECTOR)
            entries = bytearray(disk.read(count * entry_size))
            for number, guid in partition_guids.items():
                at = (number - 1) * entry_size + 16
                entries[at:at + 16] = uuid.UUID(guid).bytes_le
            header[56:72] = uuid.UUID(disk_guid).bytes_le
            struct.pack_into("<I", header, 88, zlib.crc32(entries))
            struct.pack_into("<I", header, 16, 0)
            struct.pack_into("<I", header, 16, zlib.crc32(header[:size]))
            disk.seek(entries_lba * SECTOR)
            disk.write(entries)
            disk.seek(lba * SECTOR)
            disk.write(header)

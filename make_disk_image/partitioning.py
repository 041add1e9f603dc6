"""Writing the partition table: libparted through pyparted, identities through sgdisk/sfdisk.

libparted is what the reference's `parted --script` runs; calling it directly with the
planned geometries (exact constraints) gives the same table without a shell script.
"""

from __future__ import annotations

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
        args = [f"--disk-guid={plan.disk_guid}"]
        args += [f"--partition-guid={p.number}:{p.guid}" for p in plan.partitions if p.guid]
        process.run(["sgdisk", *args, image], step=STEP)
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


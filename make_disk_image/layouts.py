"""The seven partitionTableTypes as data, and their geometry on a disk of a given size.

Geometry follows what the reference's `parted --script` lines produce with parted 3.5
(optimal alignment): "NMiB" starts are exact, "NMiB" ends are exclusive, and "100%" ends
at the last usable sector rounded down to a MiB boundary when parted's 1% tolerance
reaches one (msdos: the disk end; GPT: one MiB before it), else at the last usable sector.
"""

from __future__ import annotations

from dataclasses import replace

from make_disk_image.interface import FS_TYPES
from make_disk_image.models import (
    MIB,
    SECTOR,
    Bound,
    DiskPlan,
    Layout,
    PartitionTemplate,
    PlannedPartition,
    SizeComputation,
    Spec,
)
from make_disk_image.utils import round_up_one_unit

# The reference's deterministic GUIDs. Its disk GUID literal has 31 hex digits; this is
# the GUID sgdisk makes of it, the one reference images carry.
DISK_GUID = "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
ESP_GUID = "1C06F03B-704E-4657-B9CD-681A087A2FDC"
SECOND_GUID = "970C694F-AFD0-4B99-B750-CDB7A329AB6F"

GPT_TYPES = {
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "bios_grub": "21686148-6449-6E6F-744E-656564454649",
    "xbootldr": "BC13C2FF-59E6-4262-A352-B275FD6F7172",
    "root": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}
MBR_TYPES = {"boot": "c", "root": "83"}

GPT_TAIL_SECTORS = 34  # backup GPT header + 32 sectors of entries + protective slack
GPT_FIRST_USABLE = 34
ALIGN_SECTORS = MIB // SECTOR


def _root(start: int | Bound, name: str | None, guid: str | None = None) -> PartitionTemplate:
    return PartitionTemplate(
        role="root",
        start=start,
        end=Bound.REST,
        parted_fs="ext4",
        name=name,
        seed_guid=guid,
        mountpoint="/",
    )


ESP = PartitionTemplate(
    role="esp",
    start=8,
    end=Bound.BOOT_SIZE,
    parted_fs="fat32",
    name="ESP",
    flags=("boot",),
    seed_guid=ESP_GUID,
    filesystem="vfat",
    fs_label="ESP",
    mountpoint="/boot",
)

LAYOUTS: dict[str, Layout] = {
    "legacy": Layout(
        name="legacy",
        table="msdos",
        partitions=(_root(1, None),),
        reserve_bytes=MIB,
    ),
    "legacy+boot": Layout(
        name="legacy+boot",
        table="msdos",
        partitions=(
            PartitionTemplate(
                role="boot",
                start=1,
                end=Bound.BOOT_SIZE,
                parted_fs="fat32",
                name=None,
                flags=("boot",),
                filesystem="vfat",
                fs_label="BOOT",
                mountpoint="/boot",
            ),
            _root(Bound.BOOT_SIZE, None),
        ),
        reserve_boot_size=True,
    ),
    "legacy+gpt": Layout(
        name="legacy+gpt",
        table="gpt",
        partitions=(
            PartitionTemplate(
                role="bios_grub",
                start=1,
                end=2,
                parted_fs=None,
                name="no-fs",
                flags=("bios_grub",),
                seed_guid=ESP_GUID,
            ),
            # The reference means rootGPUID here but passes it for a partition 3 that
            # does not exist; this engine gives it to the root partition (see README).
            _root(2, "primary"),
        ),
        reserve_gpt_tail=True,
        reserve_bytes=2 * MIB,
    ),
    "efi": Layout(
        name="efi",
        table="gpt",
        partitions=(ESP, _root(Bound.BOOT_SIZE, "primary")),
        reserve_gpt_tail=True,
        reserve_boot_size=True,
    ),
    "efixbootldr": Layout(
        name="efixbootldr",
        table="gpt",
        partitions=(
            # The ESP ends at 100 MiB and is mounted on /efi; XBOOTLDR takes /boot.
            replace(ESP, end=100, mountpoint="/efi"),
            PartitionTemplate(
                role="xbootldr",
                start=100,
                end=Bound.BOOT_SIZE,
                parted_fs="fat32",
                name="BOOT",
                flags=("bls_boot",),
                seed_guid=SECOND_GUID,
                filesystem="vfat",
                fs_label="BOOT",
                mountpoint="/boot",
            ),
            _root(Bound.BOOT_SIZE, "ROOT"),
        ),
        reserve_gpt_tail=True,
        reserve_boot_size=True,
    ),
    "hybrid": Layout(
        name="hybrid",
        table="gpt",
        partitions=(
            ESP,
            # parted's "mkpart no-fs 0 1024KiB" cannot be aligned; it lands on the first
            # usable sector and ends on sector 2047, the last before 1024 KiB, as parted
            # 3.6 and later (nixpkgs', Debian 13's) end it. parted 3.5 (Debian 12) ends a
            # KiB position one sector later, on 2048; 3.6 fixed that.
            PartitionTemplate(
                role="bios_grub",
                start=0,
                end=1,
                parted_fs=None,
                name="no-fs",
                flags=("bios_grub",),
                seed_guid=SECOND_GUID,
                start_sector=GPT_FIRST_USABLE,
                end_sector=ALIGN_SECTORS - 1,
            ),
            _root(Bound.BOOT_SIZE, "primary"),
        ),
        reserve_gpt_tail=True,
        reserve_boot_size=True,
    ),
    "none": Layout(name="none", table=None, partitions=()),
}


def rounded_boot_size(spec: Spec) -> int:
    return round_up_one_unit(spec.bootSize, MIB)


def reserved_space(layout: Layout, boot_size: int) -> int:
    """Bytes the auto size adds for everything that is not the root filesystem."""
    reserved = layout.reserve_bytes
    if layout.reserve_gpt_tail:
        reserved += GPT_TAIL_SECTORS * SECTOR
    if layout.reserve_boot_size:
        reserved += boot_size
    return reserved


def _rest_end(table: str, total_sectors: int, start: int) -> int:
    """Where parted 3.5 puts the end of "100%" for a partition starting at `start`.

    parted reads "100%" as the last sector with a tolerance of half a percent of the
    disk, and within it prefers the last MiB-aligned end that is usable (GPT keeps 33
    sectors for its backup) and after the start; failing that, the last usable sector
    itself if the tolerance reaches it. Otherwise parted fails; then this returns
    `start - 1`, an empty partition, which check_fits reports.
    """
    last_usable = total_sectors - 1 - (GPT_TAIL_SECTORS - 1 if table == "gpt" else 0)
    percent_sectors = -(-(total_sectors * SECTOR // 100) // SECTOR)
    radius = max(percent_sectors // 2 - 1, 0)
    lowest = max(total_sectors - 1 - radius, start)
    aligned = (last_usable + 1) // ALIGN_SECTORS * ALIGN_SECTORS - 1
    if aligned >= lowest:
        return aligned
    if last_usable >= lowest:
        return last_usable
    return start - 1


def _sector(
    bound: int | Bound, boot_size: int, *, end: bool, table: str, total: int, start: int = 0
) -> int:
    if bound is Bound.REST:
        return _rest_end(table, total, start)
    mib = boot_size // MIB if bound is Bound.BOOT_SIZE else int(bound)
    sector = mib * ALIGN_SECTORS
    return sector - 1 if end else sector


def plan_disk(spec: Spec, disk_size: int, auto: SizeComputation | None) -> DiskPlan:
    """Partition geometry and identities for a disk of `disk_size` bytes."""
    layout = LAYOUTS[spec.partitionTableType]
    boot_size = rounded_boot_size(spec)
    total = disk_size // SECTOR
    partitions: list[PlannedPartition] = []
    for number, tpl in enumerate(layout.partitions, start=1):
        assert layout.table is not None
        start = (
            tpl.start_sector
            if tpl.start_sector is not None
            else _sector(tpl.start, boot_size, end=False, table=layout.table, total=total)
        )
        end = (
            tpl.end_sector
            if tpl.end_sector is not None
            else _sector(tpl.end, boot_size, end=True, table=layout.table, total=total, start=start)
        )
        if layout.table == "gpt":
            ptype = GPT_TYPES[tpl.role if tpl.role in GPT_TYPES else "root"]
            guid = (tpl.seed_guid or spec.rootGPUID.upper()) if spec.deterministic else None
        else:
            ptype, guid = MBR_TYPES[tpl.role], None
        partitions.append(
            PlannedPartition(
                number=number,
                role=tpl.role,
                start=start,
                end=end,
                type=ptype,
                guid=guid,
                name=tpl.name,
                flags=tpl.flags,
                filesystem=tpl.filesystem,
                label=spec.label if tpl.role == "root" else tpl.fs_label,
                mountpoint=tpl.mountpoint,
            )
        )
    root_number = layout.root_number
    if root_number is None:
        root_offset, root_size = 0, disk_size
    else:
        root = partitions[root_number - 1]
        root_offset, root_size = root.offset_bytes, root.size_bytes
    return DiskPlan(
        partition_table_type=layout.name,
        table=layout.table,
        disk_size=disk_size,
        size_source="auto" if auto else "diskSize",
        auto=auto,
        boot_size=boot_size,
        disk_guid=DISK_GUID if spec.deterministic and layout.table == "gpt" else None,
        mbr_disk_id=mbr_disk_id(spec) if layout.table == "msdos" else None,
        partitions=tuple(partitions),
        root_number=root_number,
        root_offset=root_offset,
        root_size=root_size,
        fs_type=spec.fsType,
        label=spec.label,
        root_fs_uuid=spec.rootFSUID,
        compression=spec.compression or FS_TYPES[spec.fsType].default_compression,
    )


def mbr_disk_id(spec: Spec) -> str | None:
    """A fixed MBR disk signature when deterministic (the reference leaves it random)."""
    if not spec.deterministic:
        return None
    return "0x" + spec.rootGPUID[:8].lower()


def check_fits(plan: DiskPlan) -> list[str]:
    """Problems with the geometry: partitions that are empty, overlap, or pass the end."""
    problems = []
    total = plan.disk_size // SECTOR
    last_usable = total - 1 - (GPT_TAIL_SECTORS - 1 if plan.table == "gpt" else 0)
    for part in plan.partitions:
        if part.end < part.start:
            problems.append(f"partition {part.number} ({part.role}) would be empty or negative")
        if part.end > last_usable:
            problems.append(f"partition {part.number} ({part.role}) would end past the disk")
    return problems

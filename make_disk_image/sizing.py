"""The reference's automatic disk size, computed from the image tree."""

from __future__ import annotations

from dataclasses import dataclass

from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.layouts import LAYOUTS, reserved_space, rounded_boot_size
from make_disk_image.models import FS_BLOCK, MIB, SizeComputation, Spec
from make_disk_image.utils import round_up_one_unit

# Approximate share of an ext4 filesystem over 512 MiB that is reserved: 0.052...
FUDGE_PER_MILLE = 52


@dataclass(frozen=True)
class TreeUsage:
    """What `du --apparent-size --count-links --block-size=4096` and `find | wc -l` see."""

    file_blocks: int  # sum over non-directories of ceil(apparent size / 4096)
    inodes: int  # every entry, directories and the root included

    @staticmethod
    def blocks_for(apparent_size: int) -> int:
        return -(-apparent_size // FS_BLOCK)


def auto_disk_size(spec: Spec, usage: TreeUsage) -> SizeComputation:
    layout = LAYOUTS[spec.partitionTableType]
    additional = spec.additionalSpace + reserved_space(layout, rounded_boot_size(spec))
    # Inodes take space too: the reference counts two blocks for each.
    disk_usage = (usage.file_blocks + 2 * usage.inodes) * FS_BLOCK
    fudge = disk_usage * FUDGE_PER_MILLE // 1000
    fs_needed = round_up_one_unit(disk_usage + fudge, FS_BLOCK)
    own = FILESYSTEMS[spec.fsType].auto_bytes(usage.file_blocks, usage.inodes)
    if own is not None:
        # The filesystem's own formula (the reference's is ext4's).
        fs_needed = round_up_one_unit(own, FS_BLOCK)
        fudge = fs_needed - disk_usage
    disk_size = round_up_one_unit(fs_needed + additional, MIB)
    return SizeComputation(
        closure_space_use=disk_usage,
        fudge=fudge,
        filesystem_size_needed=fs_needed,
        additional_space=additional,
        disk_image_size=disk_size,
        files_blocks=usage.file_blocks,
        inodes=usage.inodes,
    )

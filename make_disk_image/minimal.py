"""`diskSize = "minimal"`: the root filesystem sized to what it holds, the disk around it.

Each filesystem's row says what its tree needs (`Filesystem.minimal_plan`): ext2/3/4
measure it by trial mke2fs runs (make_disk_image.filesystems.ext_minimal); btrfs by a
run of the engine's writer that stores nothing (or, without a CRC-32C, a trial
`mkfs.btrfs --shrink`); the others take their auto formula. The disk is then the
smallest whole number of MiB whose root partition (the layout's own geometry) leaves
`additionalSpace + SLACK` free.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from make_disk_image.filesystems import FILESYSTEMS, Filesystem, needed_bytes
from make_disk_image.layouts import (
    LAYOUTS,
    check_fits,
    plan_disk,
    reserved_space,
    rounded_boot_size,
)
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, MinimalSize, Spec
from make_disk_image.staging import Tree

logger = logging.getLogger("make_disk_image")

STEP = "minimal size"
# Free space kept beyond additionalSpace, for what the build VM writes into the root
# filesystem (the bootloader's files under /boot, activation output under /etc). The
# bound is additionalSpace + max(2% of the filesystem, 16 MiB); the disk grows in whole
# MiB and the margin adds up to 0.45 MiB below 800 MiB (where 16 MiB is the bound), so
# aiming 1.5 MiB below 16 keeps the free space within it.
SLACK = 29 * MIB // 2
BOUND_FLOOR = 16 * MIB
BOUND_PER_MILLE = 20


def minimal_plan(spec: Spec, tree: Tree, work: Path | None = None) -> DiskPlan:
    """The plan for `diskSize = "minimal"`; trial files go to a temporary dir in `work`."""
    return FILESYSTEMS[spec.fsType].minimal_plan(spec, tree, work)


def estimated_minimal_plan(spec: Spec, tree: Tree, fs: Filesystem,
                           work: Path | None = None) -> DiskPlan:
    """"minimal" for the filesystems without trial mke2fs runs: what the filesystem
    needs (`fs.minimal_content`), plus additionalSpace and SLACK, in the smallest whole
    MiB disk of the layout.

    btrfs: the engine's writer measures its own layout of the tree (without a CRC-32C,
    a trial `mkfs.btrfs --rootdir --shrink` does). xfs cannot shrink and
    has no cheap measure; erofs and squashfs are what their tool makes: for them the
    auto formula (filesystems.needed_bytes) stands.
    """
    usage = tree.usage()
    layout = LAYOUTS[spec.partitionTableType]
    reserved = reserved_space(layout, rounded_boot_size(spec))
    estimate = needed_bytes(fs, usage.file_blocks, usage.inodes)
    with tempfile.TemporaryDirectory(prefix="mdi-minimal-", dir=work) as tmp:
        content, method, trial_size = fs.minimal_content(
            Path(tmp), plan_disk(spec, MIB, None), tree.ordered(), estimate=estimate, step=STEP,
            room=spec.additionalSpace + SLACK,
        )
    floor = fs.minimal_floor()
    need = max(floor, content + spec.additionalSpace + SLACK)
    disk = -(-(need + reserved) // MIB) * MIB
    while True:
        plan = plan_disk(spec, disk, None)
        if not check_fits(plan) and plan.root_size >= need:
            break
        disk += MIB
    minimal = MinimalSize(
        entries=usage.inodes, inodes=0, trial_size=trial_size,
        trial_used_blocks=0, trial_empty_blocks=0, content_blocks=content // FS_BLOCK,
        margin_blocks=0, overhead_blocks=0, additional_space=spec.additionalSpace,
        slack=SLACK, filesystem_size=plan.root_size,
        free_blocks=(plan.root_size - content) // FS_BLOCK, disk_image_size=disk,
        method=f"{method}; + additionalSpace + {SLACK / MIB:g} MiB free, at least "
               f"{floor // MIB} MiB; smallest {spec.partitionTableType} disk in whole MiB",
    )
    log_minimal(minimal)
    return replace(plan, size_source="minimal", minimal=minimal)


def log_minimal(m: MinimalSize) -> None:
    logger.info("Minimal disk size...")
    logger.info("  Tree: %d entries, mke2fs -N %d", m.entries, m.inodes)
    logger.info("  Content: %d blocks (trial of %d bytes)", m.content_blocks, m.trial_size)
    logger.info("  Metadata: %d blocks, margin %d blocks", m.overhead_blocks, m.margin_blocks)
    logger.info(
        "  Free: %d blocks (additionalSpace %d + %d bytes)",
        m.free_blocks,
        m.additional_space,
        m.slack,
    )
    logger.info("  Filesystem size: %d bytes", m.filesystem_size)
    logger.info("  Disk image size: %d bytes", m.disk_image_size)


def free_bound(additional_space: int, filesystem_size: int) -> int:
    """The most free space a minimal filesystem may have: additionalSpace + 2%, or 16 MiB."""
    return additional_space + max(BOUND_FLOOR, filesystem_size * BOUND_PER_MILLE // 1000)

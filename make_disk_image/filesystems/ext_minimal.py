"""`diskSize = "minimal"` for ext2/3/4: the root filesystem sized to what it holds.

Measured, not estimated: the blocks a tree takes depend on its bytes (mke2fs makes holes
of all-zero blocks), its directories and extents, so an exact formula would have to read
every file anyway. Instead:

1. One trial fill of the image tree (mke2fs, then the engine's writer, as the real run:
   `ext.make_filesystem`) into a sparse file of ample size, with the
   plan's inode count (`-N`) and every other argument of the real run except metadata
   checksums: they change only the 12-byte tail of a directory block, and cost most of
   mke2fs's time (measured: 1 block in 180,875 for /usr/share, 39 s against 7.5 s).
   `content` = its used blocks minus those of the same filesystem holding only the root.
2. Empty filesystems (only the root directory, so a few ms each) at candidate root
   partition sizes give the metadata: inode tables, bitmaps, descriptors and the blocks
   resize_inode reserves for growth, journal, orphan file.
3. The disk is the smallest whole number of MiB whose root partition (the layout's own
   geometry: alignment, boot partitions, backup GPT) leaves
   `additionalSpace + SLACK` free after `content` and that metadata.

The trial needs space for one copy of the tree for a moment (its file is removed before
the image is written) and reads the tree once more.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import ext
from make_disk_image.layouts import (
    LAYOUTS,
    check_fits,
    plan_disk,
    reserved_space,
    rounded_boot_size,
)
from make_disk_image.minimal import SLACK, STEP, log_minimal
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry, MinimalSize, Spec
from make_disk_image.process import StepError
from make_disk_image.staging import Tree

# Inodes beyond the tree's, for the guest's files (GRUB alone installs ~300).
SPARE_INODES = 4096
SPARE_INODES_PER_MILLE = 50
# At least one inode per 64 KiB (mke2fs's "huge" ratio) of data and additionalSpace:
# resize2fs gives every new block group as many inodes as the existing ones, so a
# filesystem of a few large files would otherwise grow into one with few inodes.
BYTES_PER_INODE_FLOOR = 64 * 1024
# mke2fs's own inodes 1..10 and lost+found.
RESERVED_INODES = 11
TRIAL_OPTIONS = ("-O", "^metadata_csum")
BLOCKS_RE = re.compile(r"^Block count:\s+(\d+)$", re.M)
FREE_RE = re.compile(r"^Free blocks:\s+(\d+)$", re.M)


def inode_count(spec: Spec, entries: int, file_blocks: int) -> int:
    spare = max(SPARE_INODES, entries * SPARE_INODES_PER_MILLE // 1000)
    floor = (file_blocks * FS_BLOCK + spec.additionalSpace) // BYTES_PER_INODE_FLOOR
    return max(entries + RESERVED_INODES + spare, floor)


def margin_for(content_blocks: int) -> int:
    """Blocks for what the trial's settings may count differently from the real run.

    Without metadata_csum a directory block holds 12 bytes more; the same tree at another
    filesystem size may split an extent at a different block group. Both were measured
    at 1 block in 10^5 (and 0 in 141,834 for bench/'s closure); this allows 1 in 8192
    plus 64 KiB.
    """
    return content_blocks // 8192 + 16


def used_blocks(image: Path) -> int:
    listing = process.run(["dumpe2fs", "-h", image], step=STEP).stdout.decode()
    blocks, free = BLOCKS_RE.search(listing), FREE_RE.search(listing)
    if blocks is None or free is None:
        raise StepError(STEP, f"dumpe2fs -h {image} printed no block counts")
    return int(blocks.group(1)) - int(free.group(1))


class _Prober:
    """mke2fs runs into one sparse scratch file, with the plan's arguments."""

    def __init__(self, spec: Spec, base: DiskPlan, inodes: int, scratch: Path) -> None:
        self.spec = spec
        # The whole-disk form of the plan: no table, so no offset; only the size varies.
        self.base = replace(base, table=None, root_offset=0, root_inodes=inodes)
        self.scratch = scratch
        self._empty: dict[int, int] = {}

    def used(self, blocks: int, entries: list[Entry], extra: tuple[str, ...] = ()) -> int:
        self.scratch.unlink(missing_ok=True)
        with self.scratch.open("wb") as fh:
            fh.truncate(blocks * FS_BLOCK)
        plan = replace(self.base, root_size=blocks * FS_BLOCK)
        ext.make_filesystem(
            self.scratch,
            plan,
            entries,
            uuid=None,
            deterministic=self.spec.deterministic,
            extra=extra,
        )
        used = used_blocks(self.scratch)
        self.scratch.unlink()
        return used

    def empty(self, blocks: int, root: Entry) -> int:
        """Blocks an empty filesystem of `blocks` blocks uses (the real run's settings)."""
        if blocks not in self._empty:
            self._empty[blocks] = self.used(blocks, [root])
        return self._empty[blocks]


def trial_minimal_plan(spec: Spec, tree: Tree, work: Path | None = None) -> DiskPlan:
    """"minimal" for ext2/3/4, measured by trial mke2fs runs (this module's docstring)."""
    usage = tree.usage()
    entries = tree.ordered()
    root = entries[0]
    inodes = inode_count(spec, usage.inodes, usage.file_blocks)
    layout = LAYOUTS[spec.partitionTableType]
    reserved = reserved_space(layout, rounded_boot_size(spec))
    want_free = -(-(spec.additionalSpace + SLACK) // FS_BLOCK)
    # Ample: the reference's own formula, twice, plus room for the journal.
    trial_blocks = 2 * (usage.file_blocks + 2 * usage.inodes) + inodes // 16 + 16384
    with tempfile.TemporaryDirectory(prefix="mdi-minimal-", dir=work) as tmp:
        prober = _Prober(spec, plan_disk(spec, MIB, None), inodes, Path(tmp) / "trial.img")
        for _ in range(3):
            try:
                trial_used = prober.used(trial_blocks, entries, TRIAL_OPTIONS)
                break
            except StepError as exc:
                if "too small" not in str(exc):
                    raise
                trial_blocks *= 4
        else:
            raise StepError(STEP, f"the trial filesystem of {trial_blocks} blocks never fit")
        trial_empty = prober.used(trial_blocks, [root], TRIAL_OPTIONS)
        content = trial_used - trial_empty
        margin = margin_for(content)
        need = content + margin + want_free
        # A lower bound: metadata only grows with the size. Then grow by whole MiB, or by
        # the shortfall, until the layout's root partition is large enough.
        disk = -(-((need + prober.empty(need, root)) * FS_BLOCK + reserved) // MIB) * MIB
        while True:
            plan = plan_disk(spec, disk, None)
            blocks = plan.root_size // FS_BLOCK
            if check_fits(plan) or blocks < need:
                disk += MIB
                continue
            overhead = prober.empty(blocks, root)
            short = need + overhead - blocks
            if short <= 0:
                break
            disk += max(MIB, -(-short * FS_BLOCK // MIB) * MIB)
    free = blocks - overhead - content
    minimal = MinimalSize(
        entries=usage.inodes,
        inodes=inodes,
        trial_size=trial_blocks * FS_BLOCK,
        trial_used_blocks=trial_used,
        trial_empty_blocks=trial_empty,
        content_blocks=content,
        margin_blocks=margin,
        overhead_blocks=overhead,
        additional_space=spec.additionalSpace,
        slack=SLACK,
        filesystem_size=plan.root_size,
        free_blocks=free,
        disk_image_size=disk,
        method=(
            f"trial fill (mke2fs, then the writer) {' '.join(TRIAL_OPTIONS)} -N {inodes} "
            f"into a sparse {trial_blocks * FS_BLOCK // MIB} MiB file: "
            f"{trial_used} - {trial_empty} (empty) "
            f"= {content} blocks; empty mke2fs at the root partition's {blocks} blocks: "
            f"{overhead} blocks of metadata; + {margin} blocks margin + additionalSpace + "
            f"{SLACK / MIB:g} MiB free; smallest {spec.partitionTableType} disk in whole MiB"
        ),
    )
    log_minimal(minimal)
    return replace(plan, size_source="minimal", root_inodes=inodes, minimal=minimal)

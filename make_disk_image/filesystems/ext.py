"""ext2, ext3 and ext4, made and filled without root. The three rows differ only by data.

mke2fs makes the filesystem empty and make_disk_image.filesystems.ext4_fill writes the
tree into it, in time linear in the tree (libext2fs's `mke2fs -d` is quadratic in a
directory's size): extents for ext4, block maps for ext2 and ext3, which have no
`extent` feature. ext4 gets metadata checksums after the fill (tune2fs, then e2fsck -fD,
which also indexes its directories) and the reference's final tune2fs, and its
rootFSUID defaults to rootGPUID; ext2 and ext3 get e2fsck -fD alone, which indexes
their directories (dir_index, in mke2fs.conf's defaults).
"""

from __future__ import annotations

import errno
import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from make_disk_image import process
from make_disk_image.filesystems import Filesystem, ext4_fill
from make_disk_image.filesystems.ext4_layout import UnsupportedFilesystem
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry
from make_disk_image.process import StepError
from make_disk_image.rootfs import SOURCE_DATE_EPOCH, STEP

if TYPE_CHECKING:
    from make_disk_image.models import Spec
    from make_disk_image.staging import Tree

logger = logging.getLogger("make_disk_image")

# tune2fs and e2fsck when deterministic. e2fsprogs >= 1.47.1 takes SOURCE_DATE_EPOCH
# before E2FSPROGS_FAKE_TIME, so one inherited from the caller (stdenv sets 315532800)
# would stamp the superblock with it, and e2fsck, at E2FSCK_TIME, would then "fix" a
# last write time in the future: it is set here, to the same time.
FIXED_TIME_ENV = {
    "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
    "E2FSPROGS_FAKE_TIME": str(SOURCE_DATE_EPOCH),
    "E2FSCK_TIME": str(SOURCE_DATE_EPOCH),
}
# What e2fsck -fyD may fix, with exit status 1, on a filesystem mke2fs just made and
# tune2fs gave checksums: the orphan file's block, which has no checksum until e2fsck
# writes one. Anything else it fixes is a fault, and fails the step.
EXPECTED_FIXES = (
    re.compile(r"Orphan file \(inode \d+\) block \d+ is not clean\."),
    re.compile(r"Clear\? yes"),
)
# e2fsck's progress and summary lines, which report no fix.
_E2FSCK_PROGRESS = re.compile(
    r"Pass \d+[A-Z]?: .*|.*\*\*\*\*\* FILE SYSTEM WAS MODIFIED \*\*\*\*\*|"
    r".*: \d+/\d+ files \(.*\), \d+/\d+ blocks|e2fsck \d.*"
)


def mkfs_command(
    target: Path,
    plan: DiskPlan,
    *,
    uuid: str | None,
    deterministic: bool,
    checksums: bool = True,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """mke2fs for the root filesystem at the plan's root offset in `target`.

    `uuid`: the filesystem UUID, the same for both runs (the bootloader may record it).
    `checksums` false: without metadata checksums, most of mke2fs' CPU time: for the
    build VM's copy (only the bootloader installation reads it), or for a filesystem
    that gets them afterwards (`add_checksums`).
    `extra`: more mke2fs options (make_disk_image.minimal's trial runs).
    The filesystem stays empty: ext4_fill fills it.
    """
    args = ["mke2fs", "-t", plan.fs_type, "-b", str(FS_BLOCK), "-F", "-L", plan.label, *extra]
    if plan.root_inodes is not None:
        # diskSize = "minimal": the inodes the tree needs, not one per 16 KiB.
        args += ["-N", str(plan.root_inodes)]
    extended = [f"offset={plan.root_offset}"] if plan.table is not None else []
    if uuid:
        args += ["-U", uuid]
    if deterministic and uuid:
        extended.append(f"hash_seed={uuid}")
    if not checksums and ROWS[plan.fs_type].metadata_csum:
        args += ["-O", "^metadata_csum"]
    if extended:
        args += ["-E", ",".join(extended)]
    # Always give the size: with an offset and no size, mke2fs runs to the end of the file
    # and destroys the backup GPT.
    return [*args, str(target), f"{plan.root_size // 1024}K"]


def make_filesystem(
    target: Path,
    plan: DiskPlan,
    entries: Sequence[Entry],
    *,
    uuid: str | None,
    deterministic: bool,
    checksums: bool = True,
    step: str = STEP,
    extra: tuple[str, ...] = (),
) -> None:
    """The plan's root filesystem, made empty by mke2fs and filled by ext4_fill; then
    ext4's checksums (unless `checksums` is false: `Ext.tune` adds them), or ext2's and
    ext3's directories indexed."""
    make_filled(target, plan, entries, uuid=uuid, deterministic=deterministic, step=step,
                extra=extra)
    if not ROWS[plan.fs_type].metadata_csum:
        index_directories(device_spec(target, plan), deterministic=deterministic, step=step)
    elif checksums:
        add_checksums(target, plan, deterministic=deterministic, step=step)


def too_small(step: str, plan: DiskPlan, detail: str) -> StepError:
    fix = (
        # The guest wrote more than the free space "minimal" keeps for it.
        'raise additionalSpace (diskSize = "minimal" keeps little more free than it)'
        if plan.size_source == "minimal"
        else 'raise diskSize, or use diskSize = "auto"'
    )
    return StepError(
        step,
        f"the root filesystem ({plan.root_size // MIB} MiB) is too small "
        f"for the closure and contents; {fix} ({detail})",
    )


def make_filled(
    target: Path,
    plan: DiskPlan,
    entries: Sequence[Entry],
    *,
    uuid: str | None,
    deterministic: bool,
    step: str,
    extra: tuple[str, ...] = (),
) -> None:
    """An empty filesystem from mke2fs (ext4 without checksums: `add_checksums` adds
    them), then filled."""
    argv = mkfs_command(target, plan, uuid=uuid, deterministic=deterministic,
                        checksums=False, extra=extra)
    make_and_fill(argv, target, plan.root_offset if plan.table is not None else 0, entries,
                  deterministic=deterministic, step=step, options=extra,
                  too_full=lambda detail: too_small(step, plan, detail))


def make_and_fill(
    mkfs_argv: Sequence[str],
    target: Path,
    offset: int,
    entries: Sequence[Entry],
    *,
    deterministic: bool,
    step: str,
    too_full: Callable[[str], StepError],
    options: Sequence[str] = (),
) -> None:
    """`mkfs_argv` (an mke2fs making an empty ext4 without metadata_csum at `offset` in
    `target`), then `entries` written into it by ext4_fill. The checksums are the
    caller's (`add_checksums_at`). `too_full`: the error for a filesystem the entries do
    not fit; `options`: the caller's extra mke2fs options, named if the filler cannot
    fill what they made."""
    env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)} if deterministic else {}
    started = time.monotonic()
    process.run(mkfs_argv, step=step, env=env)
    made = time.monotonic()
    try:
        times = ext4_fill.Times(SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH) if deterministic \
            else ext4_fill.Times(None, int(time.time()))
        stats = ext4_fill.fill(target, offset, entries, times)
    except ext4_fill.FilesystemFull as exc:
        raise too_full(f"filling it: {exc}") from exc
    except ext4_fill.FillError as exc:
        raise StepError(step, f"cannot write the tree: {exc}") from exc
    except UnsupportedFilesystem as exc:
        raise StepError(step, f"mke2fs {shlex.join(options)} made a filesystem with {exc}, "
                        "which the engine's ext4 writer does not fill; drop that option") \
            from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            # The image file's own filesystem (the build directory, or $out) is full: a
            # larger image would not help.
            raise StepError(step, f"writing the tree into {target}: {exc.strerror}; free "
                            "space where the image is written") from exc
        raise StepError(step, f"could not read the tree: {exc}") from exc
    logger.info("[%s] mke2fs took %.1f s, its fill %.1f s (%d entries, %.1f MiB)", step,
                made - started, stats.seconds, stats.entries, stats.data_bytes / MIB)


def device_spec(target: Path, plan: DiskPlan) -> str:
    """How e2fsprogs' tools name the filesystem inside the image."""
    return offset_spec(target, plan.root_offset if plan.table is not None else 0)


def offset_spec(target: Path, offset: int) -> str:
    """How e2fsprogs' tools name the filesystem at `offset` in `target`."""
    return f"{target}?offset={offset}" if offset else str(target)


def add_checksums(target: Path, plan: DiskPlan, *, deterministic: bool, step: str) -> None:
    """metadata_csum on the plan's root filesystem, made without it (`add_checksums_at`)."""
    add_checksums_at(device_spec(target, plan), deterministic=deterministic, step=step)


def add_checksums_at(spec: str, *, deterministic: bool, step: str) -> None:
    """metadata_csum on a filesystem made without it: tune2fs, then e2fsck -fD. `spec`
    names it as e2fsprogs does (`offset_spec`).

    mke2fs -d computes the checksums again each time it updates a block while it fills
    the filesystem; turning them on afterwards computes each once. The result has the
    same features as mke2fs' default (e2fsck -D also rebuilds the directories, sorted by
    hash), and the same bytes for the same input when deterministic.
    """
    started = time.monotonic()
    env = FIXED_TIME_ENV if deterministic else {}
    process.run(["tune2fs", "-O", "metadata_csum", spec], step=f"{step}: checksums", env=env)
    # mke2fs -U with metadata_csum also sets metadata_csum_seed (the seed kept in the
    # superblock, from the UUID); so does the reference's tune2fs -U. Turned on after
    # the checksums, tune2fs stores that seed (together it would store 0).
    process.run(["tune2fs", "-O", "metadata_csum_seed", spec], step=f"{step}: checksums",
                env=env)
    optimize_directories(spec, env=env, step=f"{step}: checksums",
                         what="the filesystem mke2fs just made")
    logger.info("[%s] metadata checksums in %.1f s", step, time.monotonic() - started)


def index_directories(spec: str, *, deterministic: bool, step: str) -> None:
    """e2fsck -fD on a filled ext2 or ext3: their directories indexed (where the
    filesystem has dir_index), as add_checksums leaves ext4's. `spec`: `offset_spec`."""
    started = time.monotonic()
    env = FIXED_TIME_ENV if deterministic else {}
    optimize_directories(spec, env=env, step=f"{step}: directories",
                         what="the filesystem just filled")
    logger.info("[%s] directories indexed in %.1f s", step, time.monotonic() - started)


def optimize_directories(spec: str, *, env: dict[str, str], step: str, what: str) -> None:
    """e2fsck -fyD: every directory rebuilt, sorted by hash (indexed with dir_index).
    Status 1 is "errors corrected": only the fixes a new filesystem needs are accepted."""
    checked = process.run(["e2fsck", "-fyD", spec], step=step, env=env,
                          ok_returncodes=(0, 1))
    fixes = e2fsck_fixes(checked.stdout.decode(errors="replace"))
    if fixes:
        logger.info("[%s] e2fsck fixed: %s", step, " / ".join(fixes))
    unexpected = [line for line in fixes if not any(p.fullmatch(line) for p in EXPECTED_FIXES)]
    if unexpected:
        raise StepError(
            step,
            f"e2fsck -fyD found and fixed errors in {what} in {spec}: "
            + " / ".join(unexpected)
            + "; the filesystem cannot be trusted (a fault of the disk or of e2fsprogs)",
        )


def e2fsck_fixes(output: str) -> list[str]:
    """The lines of e2fsck's output that report a problem or a fix."""
    return [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not _E2FSCK_PROGRESS.fullmatch(line.strip())
    ]


def tune(target: Path, plan: DiskPlan, *, deterministic: bool) -> None:
    """The reference's final tuning: no forced checks, times resize2fs accepts.

    One tune2fs run. The reference also runs `tune2fs -U rootFSUID` before mounting and
    again at the end, then a third time for the check time; mke2fs already wrote the
    UUID (and the hash seed), so one call sets the rest, with the last check at
    1970-01-01 as the reference leaves it when deterministic.
    """
    if deterministic:
        args, env = ["-T", "19700101"], FIXED_TIME_ENV
    else:
        args, env = ["-T", "now"], {}
    process.run(["tune2fs", *args, "-c", "0", "-i", "0", device_spec(target, plan)],
                step="tune2fs", env=env)


@dataclass(frozen=True)
class Ext(Filesystem):
    # Metadata checksums (added after the fill: add_checksums) and the reference's
    # final tune2fs: ext4's.
    metadata_csum: bool = False

    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        make_filesystem(target, plan, entries, uuid=uuid, deterministic=deterministic,
                        checksums=checksums, step=step)

    def tune(self, target: Path, plan: DiskPlan, *, deterministic: bool, step: str) -> None:
        if self.metadata_csum:
            add_checksums(target, plan, deterministic=deterministic, step=step)
            tune(target, plan, deterministic=deterministic)  # the module's tune2fs run

    def auto_bytes(self, file_blocks: int, entries: int) -> int | None:
        return None  # the reference's formula (sizing.auto_disk_size), made for ext4

    def minimal_plan(self, spec: Spec, tree: Tree, work: Path | None) -> DiskPlan:
        from make_disk_image.filesystems.ext_minimal import trial_minimal_plan

        return trial_minimal_plan(spec, tree, work)


_DETERMINISM = "bit-identical (e2fsprogs >= 1.47.1)"
FILESYSTEMS = (
    Ext("ext2", "mke2fs + ext4_fill", _DETERMINISM, parted_name="ext4", fixed_times=True),
    Ext("ext3", "mke2fs + ext4_fill", _DETERMINISM, parted_name="ext4", fixed_times=True),
    Ext("ext4", "mke2fs + ext4_fill", _DETERMINISM, parted_name="ext4", fixed_times=True,
        uuid_is_root_gpuid=True, metadata_csum=True),
)
ROWS = {fs.name: fs for fs in FILESYSTEMS}

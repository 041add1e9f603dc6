"""XFS, made without root: mkfs.xfs makes the empty filesystem and the engine writes
the tree into it (xfs_fill: one pass, every name, owner, mode and time as given).

Where no CRC-32C is at hand (crc32c), `mkfs.xfs -p PROTOFILE` makes it instead. The
protofile (xfs_proto, beside this module) takes every owner and mode explicitly
and mkfs.xfs reads file bodies from their sources (no copy). Its mode field has no
sticky bit, so xfs_db sets it afterwards; names and link targets a protofile cannot
hold are written as placeholders and given their bytes afterwards (xfs_names).
"""

from __future__ import annotations

import logging
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import Filesystem, crc32c, xfs_fill
from make_disk_image.filesystems.btrfs import writer_crc
from make_disk_image.filesystems.scratch import FIXED_TIME, in_partition, too_small
from make_disk_image.filesystems.xfs_names import write_back
from make_disk_image.filesystems.xfs_proto import write_protofile
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry
from make_disk_image.process import CommandError, StepError
from make_disk_image.utils import copy_data_ranges

logger = logging.getLogger("make_disk_image")

# What mkfs.xfs says when the tree does not fit.
FULL_WORDS = ("no space", "enospc", "too small", "size")


def _empty_xfs(scratch: Path, *, label: str, uuid: str | None, step: str,
               extra: Sequence[str]) -> str | None:
    """mkfs.xfs' empty filesystem as the whole of `scratch`; None, or what of it the
    writer does not know (options in `extra`)."""
    args: list[str | Path] = ["mkfs.xfs", "-f", "-q", "-L", label]
    if uuid:
        args += ["-m", f"uuid={uuid}"]
    process.run([*args, *extra, scratch.absolute()], step=step)
    unknown = xfs_fill.unsupported(scratch)
    if unknown:
        logger.info("xfs: the writer does not know %s: mkfs.xfs -p makes it", unknown)
    return unknown


def _fill(image: Path, offset: int, entries: Sequence[Entry], *, crc: crc32c.Crc32c,
          step: str) -> None:
    started = time.monotonic()
    try:
        taken = xfs_fill.fill_xfs(image, offset, entries, crc=crc)
    except xfs_fill.NoSpace as exc:
        # The words too_small looks for, as mkfs.xfs would say them.
        raise CommandError(step, ["xfs_fill"], 1, f"no space left ({exc})") from exc
    except xfs_fill.FillError as exc:
        raise StepError(step, f"{exc}; use fsType ext4 or btrfs") from exc
    logger.info("[%s] xfs_fill took %.1f s (%d entries, %d blocks)", step,
                time.monotonic() - started, len(entries), taken)


def make_xfs(scratch: Path, entries: Sequence[Entry], *, label: str, uuid: str | None,
             deterministic: bool, step: str, extra: Sequence[str] = ()) -> None:
    """xfs holding `entries` as the whole of the file `scratch`. A tree that does not fit
    fails with CommandError (FULL_WORDS): the caller names what sized it."""
    crc = writer_crc()
    if crc is None:
        logger.info("xfs: no CRC-32C here (set %s): mkfs.xfs -p makes it",
                    crc32c.LIBEXT2FS_ENV)
    if crc is None or _empty_xfs(scratch, label=label, uuid=uuid, step=step, extra=extra):
        _protofile_xfs(scratch, entries, label=label, uuid=uuid,
                       deterministic=deterministic, step=step, extra=extra)
        return
    _fill(scratch, 0, entries, crc=crc, step=step)


def written(target: Path, plan: DiskPlan, entries: Sequence[Entry], *, uuid: str | None,
            step: str) -> bool:
    """The writer's xfs in the plan's root range of `target`, in place: only mkfs.xfs'
    empty filesystem (its headers and log, some 64 MiB) is copied in. False where no
    CRC-32C is at hand (the caller uses mkfs.xfs -p)."""
    crc = writer_crc()
    if crc is None:
        return False
    offset = plan.root_offset if plan.table is not None else 0
    with tempfile.TemporaryDirectory(prefix="xfs-empty-", dir=target.parent) as tmp:
        empty = Path(tmp) / "empty.xfs"
        with empty.open("wb") as fh:
            fh.truncate(plan.root_size)
        if _empty_xfs(empty, label=plan.label, uuid=uuid, step=step, extra=()):
            return False
        copy_data_ranges(empty, target, [(0, plan.root_size)], step=step,
                         dest_offset=offset)
    try:
        _fill(target, offset, entries, crc=crc, step=step)
    except CommandError as exc:
        too_small(step, plan, exc, FULL_WORDS)
        raise
    return True


def _protofile_xfs(scratch: Path, entries: Sequence[Entry], *, label: str,
                   uuid: str | None, deterministic: bool, step: str,
                   extra: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="xfs-proto-", dir=scratch.parent) as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        proto = (Path(tmp) / "protofile").absolute()
        sticky, renames = write_protofile(entries, proto, data_dir, step=step)
        args: list[str | Path] = ["mkfs.xfs", "-f", "-q", "-L", label, "-p", proto]
        if uuid:
            args += ["-m", f"uuid={uuid}"]
        # Newer xfsprogs (>= 6.8) read these for fixed inode times and a fixed UUID;
        # 6.1 ignores them.
        env = {"SOURCE_DATE_EPOCH": str(FIXED_TIME), "DETERMINISTIC_SEED": "1"} \
            if deterministic else {}
        # In data_dir: the protofile names the bodies it holds relative to it.
        process.run([*args, *extra, scratch.absolute()], step=step, env=env, cwd=data_dir)
    # Names and link targets the protofile held as placeholders.
    write_back(scratch, renames, step=f"{step}: names")
    for entry in sticky:
        # The protofile wrote the mode without its sticky bit.
        fmt = stat.S_IFMT({"dir": stat.S_IFDIR, "file": stat.S_IFREG, "fifo": stat.S_IFIFO}
                          .get(entry.kind, stat.S_IFREG))
        process.run(["xfs_db", "-x", "-c", f"path /{entry.path}", "-c",
                     f"write core.mode 0{fmt | (entry.mode & 0o7777):o}", scratch],
                    step=f"{step}: sticky bit")


@dataclass(frozen=True)
class Xfs(Filesystem):
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        if plan.root_size >= self.min_size and written(target, plan, entries, uuid=uuid,
                                                       step=step):
            return

        def write(scratch: Path) -> None:
            try:
                make_xfs(scratch, entries, label=plan.label, uuid=uuid,
                         deterministic=deterministic, step=step)
            except CommandError as exc:
                too_small(step, plan, exc, FULL_WORDS)
                raise

        in_partition(target, plan, tool=self.tool, fs_type=self.name, min_size=self.min_size,
                     write=write, step=step)


FILESYSTEMS = (
    # 300 MiB: xfsprogs >= 5.19 refuses smaller filesystems. Inodes are 512 bytes,
    # directories and the log take the rest of the fixed part.
    Xfs("xfs", "mkfs.xfs and the engine's writer",
        "the same bytes for the same tree, UUID and label (the engine's writer); with "
        "mkfs.xfs -p: inode times are mkfs' clock (xfsprogs 6.1)",
        min_size=300 * MIB, bytes_per_entry=2 * FS_BLOCK, data_per_mille=1052,
        fixed=64 * MIB, parted_name="xfs"),
)

"""XFS, made without root: mkfs.xfs makes the empty filesystem and the engine writes
the tree into it (xfs_fill: one pass, every name, owner, mode, time and hard link as
given).

Where no CRC-32C is at hand (crc32c), `mkfs.xfs -p PROTOFILE` makes it instead. The
protofile (xfs_proto, beside this module) takes every owner and mode explicitly
and mkfs.xfs reads file bodies from their sources (no copy). Its mode field has no
sticky bit, so xfs_db sets it afterwards; names and link targets a protofile cannot
hold are written as placeholders and given their bytes afterwards (xfs_names). It has
no hard links: a tree with some is refused there (`deduplicate`: before the store is
read, links_problem) rather than written as copies.
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
NO_CRC = (f"no CRC-32C for the engine's xfs writer (the kernel's AF_ALG hash refused, "
          f"e2fsprogs' libext2fs not found: set {crc32c.LIBEXT2FS_ENV} to its "
          "libext2fs.so.2)")


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


def _without_links(entries: Sequence[Entry], reason: str, step: str) -> None:
    """Refuse a tree with hard links where mkfs.xfs -p would make it: its protofile has
    none, and copies would be another image than the one asked for."""
    linked = next((e for e in entries if e.kind == "hardlink"), None)
    if linked is not None:
        raise StepError(
            step,
            f"/{linked.path} is a hard link to /{linked.link} (argument `deduplicate`, or "
            f"the guest's), and this xfs would be made by mkfs.xfs -p, whose protofile has "
            f"no hard links: {reason}; fix that, or set deduplicate = false, or use fsType "
            "ext4 or btrfs",
        )


def make_xfs(scratch: Path, entries: Sequence[Entry], *, label: str, uuid: str | None,
             deterministic: bool, step: str, extra: Sequence[str] = ()) -> None:
    """xfs holding `entries` as the whole of the file `scratch`. A tree that does not fit
    fails with CommandError (FULL_WORDS): the caller names what sized it."""
    crc = writer_crc()
    reason = None
    if crc is None:
        reason = NO_CRC
        logger.info("xfs: %s: mkfs.xfs -p makes it", NO_CRC)
    else:
        unknown = _empty_xfs(scratch, label=label, uuid=uuid, step=step, extra=extra)
        if unknown:
            reason = f"the engine's xfs writer does not know {unknown}"
    if reason is not None:
        _without_links(entries, reason, step)
        _protofile_xfs(scratch, entries, label=label, uuid=uuid,
                       deterministic=deterministic, step=step, extra=extra)
        return
    assert crc is not None
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

    def links_problem(self, step: str) -> str | None:
        """mkfs.xfs -p makes the xfs without CRC-32C, or where this mkfs.xfs' defaults
        are more than the writer knows: its empty filesystem is made once to see."""
        if writer_crc() is None:
            reason = NO_CRC
        else:
            with tempfile.TemporaryDirectory(prefix="xfs-probe-") as tmp:
                probe = Path(tmp) / "probe.xfs"
                with probe.open("wb") as fh:
                    fh.truncate(self.min_size)
                unknown = _empty_xfs(probe, label="probe", uuid=None, step=step, extra=())
            if not unknown:
                return None
            reason = f"the engine's xfs writer does not know {unknown} (this mkfs.xfs' defaults)"
        return (f"fsType xfs would be made by mkfs.xfs -p here, whose protofile has no hard "
                f"links: {reason}; fix that, or set deduplicate = false, or use fsType ext4 "
                "or btrfs")


FILESYSTEMS = (
    # 300 MiB: xfsprogs >= 5.19 refuses smaller filesystems. Inodes are 512 bytes,
    # directories and the log take the rest of the fixed part.
    Xfs("xfs", "mkfs.xfs and the engine's writer",
        "the same bytes for the same tree, UUID and label (the engine's writer); with "
        "mkfs.xfs -p: inode times are mkfs' clock (xfsprogs 6.1)",
        min_size=300 * MIB, bytes_per_entry=2 * FS_BLOCK, data_per_mille=1052,
        fixed=64 * MIB, parted_name="xfs"),
)

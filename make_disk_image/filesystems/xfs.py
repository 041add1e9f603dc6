"""XFS, made without root: `mkfs.xfs -p PROTOFILE`.

The protofile (xfs_proto, beside this module) takes every owner and mode explicitly
and mkfs.xfs reads file bodies from their sources (no copy). Its mode field has no
sticky bit, so xfs_db sets it afterwards; names and link targets a protofile cannot
hold are written as placeholders and given their bytes afterwards (xfs_names).
"""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import Filesystem
from make_disk_image.filesystems.scratch import FIXED_TIME, in_partition, too_small
from make_disk_image.filesystems.xfs_names import write_back
from make_disk_image.filesystems.xfs_proto import write_protofile
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry
from make_disk_image.process import CommandError

# What mkfs.xfs says when the tree does not fit.
FULL_WORDS = ("no space", "enospc", "too small", "size")


def make_xfs(scratch: Path, entries: Sequence[Entry], *, label: str, uuid: str | None,
             deterministic: bool, step: str, extra: Sequence[str] = ()) -> None:
    """xfs holding `entries` as the whole of the file `scratch`. A tree that does not fit
    fails with CommandError (FULL_WORDS): the caller names what sized it."""
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
    Xfs("xfs", "mkfs.xfs -p protofile",
        "fixed UUID and label; inode times are mkfs' clock (xfsprogs 6.1)",
        min_size=300 * MIB, bytes_per_entry=2 * FS_BLOCK, data_per_mille=1052,
        fixed=64 * MIB, parted_name="xfs"),
)

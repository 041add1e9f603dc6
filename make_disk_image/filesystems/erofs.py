"""EROFS, read-only: a store image (onlyNixStore), from a materialized tree, every file
owned by root, every time fixed when deterministic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import Filesystem
from make_disk_image.filesystems.scratch import FIXED_TIME, materialized, store_image
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry


def compression_args(compression: str | None) -> list[str]:
    """mkfs.erofs' options for `compression` (None or "none": uncompressed)."""
    return [] if compression in (None, "none") else [f"-z{compression}"]


def make_erofs(dest: Path, tree: Path, *, uuid: str | None, deterministic: bool, step: str,
               compression: str | None = None) -> None:
    args: list[str | Path] = ["mkfs.erofs", "--all-root", "-x", "-1", "--quiet",
                              *compression_args(compression)]
    if deterministic:
        args.append(f"-T{FIXED_TIME}")
    if uuid:
        args.append(f"-U{uuid}")
    process.run([*args, dest, tree], step=step)


@dataclass(frozen=True)
class Erofs(Filesystem):
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        def write() -> None:
            # erofs-utils 1.5 takes one directory only: the materialized tree.
            with materialized(entries, target.parent, step=step, fs_type=self.name) as tree:
                make_erofs(target, tree, uuid=uuid, deterministic=deterministic, step=step,
                           compression=plan.compression)

        store_image(target, plan, fs_type=self.name, write=write, step=step)


FILESYSTEMS = (
    Erofs("erofs", "mkfs.erofs", "bit-identical", bytes_per_entry=2 * FS_BLOCK,
          data_per_mille=1052, fixed=MIB,
          compressor_help=(("mkfs.erofs", "--help"), "compressors")),
)

"""EROFS, read-only: a store image (onlyNixStore), every file owned by root, every time
fixed when deterministic.

mkfs.erofs reads filesystems.storeview's tree: the store paths bound in place, the rest
materialized. erofs-utils 1.7 and later (nixpkgs', Debian 13's) also read a tar stream
(`--tar=f`), with the same bytes as from the tree (checked with erofs-utils 1.8.6, tests/
test_compression.py and test_storeview.py where the tool has it): where a store path
cannot be bound, the engine's stream goes from the store into mkfs.erofs, no copy.
erofs-utils 1.5 (Debian 12) takes one directory only: there such store paths are copied.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import Filesystem
from make_disk_image.filesystems.scratch import FIXED_TIME, store_image
from make_disk_image.filesystems.storeview import run_viewed
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry
from make_disk_image.tarstream import run_fed


def compression_args(compression: str | None) -> list[str]:
    """mkfs.erofs' options for `compression` (None or "none": uncompressed)."""
    return [] if compression in (None, "none") else [f"-z{compression}"]


@functools.cache
def takes_tar() -> bool:
    """Whether this mkfs.erofs reads a tar stream (erofs-utils >= 1.7)."""
    result = process.run(["mkfs.erofs", "--help"], step="erofs", ok_returncodes=(0, 1))
    return b"--tar=" in result.stdout + result.stderr


def erofs_command(dest: Path, *, uuid: str | None, deterministic: bool,
                  compression: str | None) -> list[str | Path]:
    args: list[str | Path] = ["mkfs.erofs", "--all-root", "-x", "-1", "--quiet",
                              *compression_args(compression)]
    if deterministic:
        args.append(f"-T{FIXED_TIME}")
    if uuid:
        args.append(f"-U{uuid}")
    return [*args, dest]


def make_erofs(dest: Path, tree: Path, *, uuid: str | None, deterministic: bool, step: str,
               compression: str | None = None) -> None:
    args = erofs_command(dest, uuid=uuid, deterministic=deterministic,
                         compression=compression)
    process.run([*args, tree], step=step)


def write_erofs(args: Sequence[str | Path], entries: Sequence[Entry], work: Path, *,
                step: str) -> None:
    """mkfs.erofs `args` (erofs_command's) of `entries`, for the main path and repart.

    The store paths bound in place (storeview; --all-root: their owners do not matter),
    the rest materialized. erofs-utils >= 1.7 read the engine's tar stream where a store
    path cannot be bound, never a copy: the same bytes, but mkfs.erofs 1.8.6 took 2.5x
    longer on it than on the view (2 GB closure)."""
    def stream() -> None:
        run_fed([*args, "--tar=f"], entries, step=step)

    run_viewed(entries, work, copies_owners=False, step=step, fs_type="erofs",
               command=lambda tree: [*args, tree], instead=stream if takes_tar() else None)


@dataclass(frozen=True)
class Erofs(Filesystem):
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        args = erofs_command(target, uuid=uuid, deterministic=deterministic,
                             compression=plan.compression)
        store_image(target, plan, fs_type=self.name, step=step,
                    write=lambda: write_erofs(args, entries, target.parent, step=step))


FILESYSTEMS = (
    Erofs("erofs", "mkfs.erofs", "bit-identical", bytes_per_entry=2 * FS_BLOCK,
          data_per_mille=1052, fixed=MIB,
          compressor_help=(("mkfs.erofs", "--help"), "compressors")),
)

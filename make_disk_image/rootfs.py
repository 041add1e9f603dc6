"""Making and filling the root filesystem without root: `mke2fs -d -` fed a tar stream."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import FS_BLOCK, DiskPlan
from make_disk_image.process import CommandError, StepError
from make_disk_image.staging import Entry, write_tar

STEP = "root filesystem"
# Timestamps when deterministic: Nix's store time, for the superblock and every inode.
SOURCE_DATE_EPOCH = 1


def mkfs_command(
    target: Path,
    plan: DiskPlan,
    *,
    deterministic: bool,
    in_image: bool = True,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """mke2fs for the root filesystem.

    `in_image`: `target` is the whole disk image and the filesystem starts at the plan's
    root offset (prepare); otherwise `target` is the root partition's block device (the
    guest's repack), and everything else is the same, so the same tree gives the same
    filesystem. `extra`: more mke2fs options (make_disk_image.minimal's trial runs).
    """
    args = ["mke2fs", "-t", plan.fs_type, "-b", str(FS_BLOCK), "-F", "-L", plan.label, *extra]
    if plan.root_inodes is not None:
        # diskSize = "minimal": the inodes the tree needs, not one per 16 KiB.
        args += ["-N", str(plan.root_inodes)]
    extended = [f"offset={plan.root_offset}"] if in_image and plan.table is not None else []
    if deterministic and plan.root_fs_uuid:
        args += ["-U", plan.root_fs_uuid]
        extended.append(f"hash_seed={plan.root_fs_uuid}")
    if extended:
        args += ["-E", ",".join(extended)]
    # Always give the size: with an offset and no size, mke2fs runs to the end of the file
    # and destroys the backup GPT.
    return [*args, "-d", "-", str(target), f"{plan.root_size // 1024}K"]


def make_root_filesystem(
    target: Path,
    plan: DiskPlan,
    entries: list[Entry],
    *,
    deterministic: bool,
    in_image: bool = True,
    extra: tuple[str, ...] = (),
) -> None:
    argv = mkfs_command(target, plan, deterministic=deterministic, in_image=in_image, extra=extra)
    env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)} if deterministic else {}
    # The tar writer runs in a thread feeding mke2fs's stdin, so the tree is streamed
    # straight from the store into the image.
    errors: list[BaseException] = []
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                write_tar(entries, out)
        except BrokenPipeError:
            pass  # mke2fs stopped reading; its own error explains why
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    feeder = threading.Thread(target=feed, name="tar-feeder", daemon=True)
    feeder.start()
    try:
        with os.fdopen(read_fd, "rb") as stdin:
            process.run(argv, step=STEP, env=env, stdin=stdin)
    except CommandError as exc:
        feeder.join(timeout=60)
        if "Could not allocate" in exc.stderr or "No space left" in exc.stderr:
            fix = (
                # The guest wrote more than the free space "minimal" keeps for it.
                'raise additionalSpace (diskSize = "minimal" keeps little more free than it)'
                if plan.size_source == "minimal"
                else 'raise diskSize, or use diskSize = "auto"'
            )
            raise StepError(
                STEP,
                f"the root filesystem ({plan.root_size // (1024 * 1024)} MiB) is too small "
                f"for the closure and contents; {fix} "
                f"(mke2fs: {exc.stderr.strip().splitlines()[-1]})",
            ) from exc
        raise
    feeder.join()
    if errors:
        raise StepError(STEP, f"could not read the tree: {errors[0]}") from errors[0]

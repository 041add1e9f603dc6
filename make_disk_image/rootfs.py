"""Making and filling the root filesystem without root: `mke2fs -d -` fed a tar stream.

It is made twice, both times natively on the host and with the same arguments: by
prepare, for the build VM to install the bootloader into (thrown away afterwards), and
by finish, from prepare's tree plus what the guest wrote, as the image's filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import FS_BLOCK, MIB, DiskPlan, Entry
from make_disk_image.process import CommandError, StepError
from make_disk_image.tarstream import write_tar

logger = logging.getLogger("make_disk_image")

STEP = "root filesystem"
# Timestamps when deterministic: Nix's store time, for the superblock and every inode.
SOURCE_DATE_EPOCH = 1
# A bigger pipe lets the tar writer run ahead of mke2fs in larger slices.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def mkfs_command(
    target: Path,
    plan: DiskPlan,
    *,
    uuid: str | None,
    deterministic: bool,
    throwaway: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """mke2fs for the root filesystem at the plan's root offset in `target`.

    `uuid`: the filesystem UUID, the same for both runs (the bootloader may record it).
    `throwaway`: the build VM's copy, which only the bootloader installation reads;
    metadata checksums, most of mke2fs' CPU time, are left out of it.
    `extra`: more mke2fs options (make_disk_image.minimal's trial runs).
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
    if throwaway and plan.fs_type == "ext4":
        args += ["-O", "^metadata_csum"]
    if extended:
        args += ["-E", ",".join(extended)]
    # Always give the size: with an offset and no size, mke2fs runs to the end of the file
    # and destroys the backup GPT.
    return [*args, "-d", "-", str(target), f"{plan.root_size // 1024}K"]


def make_root_filesystem(
    target: Path,
    plan: DiskPlan,
    entries: Sequence[Entry],
    *,
    uuid: str | None,
    deterministic: bool,
    throwaway: bool = False,
    step: str = STEP,
    extra: tuple[str, ...] = (),
) -> None:
    argv = mkfs_command(
        target, plan, uuid=uuid, deterministic=deterministic, throwaway=throwaway, extra=extra
    )
    env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)} if deterministic else {}
    # The tar writer runs in a thread feeding mke2fs's stdin, so the tree is streamed
    # straight from the store into the image.
    errors: list[BaseException] = []
    read_fd, write_fd = os.pipe()
    # Above /proc/sys/fs/pipe-max-size the default size works too.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)

    def feed() -> None:
        try:
            write_tar(entries, write_fd, what=f"{step}: streamed")
        except BrokenPipeError:
            pass  # mke2fs stopped reading; its own error explains why
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
        finally:
            os.close(write_fd)

    started = time.monotonic()
    feeder = threading.Thread(target=feed, name="tar-feeder", daemon=True)
    feeder.start()
    try:
        with os.fdopen(read_fd, "rb") as stdin:
            process.run(argv, step=step, env=env, stdin=stdin)
    except CommandError as exc:
        feeder.join(timeout=60)
        # "Could not allocate block/inode" is the image's filesystem running out; "No
        # space left on device" is the build directory's, which a larger image won't fix.
        if "Could not allocate" in exc.stderr:
            fix = (
                # The guest wrote more than the free space "minimal" keeps for it.
                'raise additionalSpace (diskSize = "minimal" keeps little more free than it)'
                if plan.size_source == "minimal"
                else 'raise diskSize, or use diskSize = "auto"'
            )
            raise StepError(
                step,
                f"the root filesystem ({plan.root_size // MIB} MiB) is too small "
                f"for the closure and contents; {fix} "
                f"(mke2fs: {exc.stderr.strip().splitlines()[-1]})",
            ) from exc
        raise
    feeder.join()
    if errors:
        raise StepError(step, f"could not read the tree: {errors[0]}") from errors[0]
    logger.info("[%s] mke2fs took %.1f s", step, time.monotonic() - started)


def tune(target: Path, plan: DiskPlan, *, deterministic: bool) -> None:
    """The reference's final tuning: no forced checks, times resize2fs accepts.

    One tune2fs run. The reference also runs `tune2fs -U rootFSUID` before mounting and
    again at the end, then a third time for the check time; mke2fs already wrote the
    UUID (and the hash seed), so one call sets the rest, with the last check at
    1970-01-01 as the reference leaves it when deterministic.
    """
    if plan.fs_type != "ext4":
        return
    if deterministic:
        args, env = ["-T", "19700101"], {"E2FSPROGS_FAKE_TIME": "1"}
    else:
        args, env = ["-T", "now"], {}
    device = f"{target}?offset={plan.root_offset}" if plan.table is not None else str(target)
    process.run(["tune2fs", *args, "-c", "0", "-i", "0", device], step="tune2fs", env=env)

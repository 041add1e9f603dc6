"""btrfs: written by the engine (filesystems.btrfs_write), or by mkfs.btrfs --rootdir.

The engine's own writer lays out the whole filesystem at the root partition's offset in
one pass, owners the entries' own, the same bytes for the same entries, UUID and label;
it needs a CRC-32C in C (filesystems.crc32c: the kernel's AF_ALG or libext2fs).
diskSize = "minimal" is measured by the same writer (`writer_needs`). Where there is
none, mkfs.btrfs makes it (and "minimal"'s trial `--shrink` measures it): it reads a
directory with nftw, which fakeroot cannot intercept (glibc's internal stat calls), so
it runs in a user namespace where the build user is root
(`unshare --map-root-user`) and reads filesystems.storeview's tree: the store paths
bound in place where the build user owns them, the rest materialized as that user, so
every file comes out owned by root. Other owners cannot be mapped without root or
/etc/subuid, which a Nix build does not have: there, an entry owned by anyone else is
an error naming it.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from make_disk_image.filesystems import Filesystem, btrfs_fstree, btrfs_write, crc32c
from make_disk_image.filesystems.scratch import in_partition, too_small
from make_disk_image.filesystems.storeview import run_viewed, unshare_failure
from make_disk_image.models import MIB, ContentEntry, DiskPlan, Entry
from make_disk_image.process import CommandError, StepError

logger = logging.getLogger("make_disk_image")


def is_root(owner: str) -> bool:
    """A `contents` user or group that is root, by name or by number ("0", "00")."""
    return owner == "root" or (owner.isdigit() and int(owner) == 0)


def check_owners(entries: Sequence[Entry], *, step: str) -> None:
    """Only root can own what an unprivileged build writes."""
    for entry in entries:
        if entry.uid or entry.gid:
            raise StepError(
                step,
                f"/{entry.path} is owned by {entry.uid}:{entry.gid}, but fsType btrfs is "
                "made in a user namespace where only root can own files (mkfs.btrfs "
                "--rootdir copies owners from the files it reads); give it to root in "
                "`contents` (user/group), or use fsType ext4 or xfs",
            )


# What mkfs.btrfs says when the tree does not fit.
FULL_WORDS = ("no space", "enospc", "too small")


def make_btrfs(scratch: Path, entries: Sequence[Entry], *, label: str, uuid: str | None,
               step: str, shrink: bool = False, extra: Sequence[str] = ()) -> None:
    """btrfs holding `entries` as the whole of the file `scratch` (its size is the
    filesystem's, or with `shrink`, its upper bound). A tree that does not fit fails with
    CommandError (FULL_WORDS): the caller names what sized it."""
    check_owners(entries, step=step)

    def command(tree: Path) -> list[str | Path]:
        args: list[str | Path] = ["mkfs.btrfs", "-f", "-q", "-L", label, "--rootdir", tree]
        if uuid:
            args += ["-U", uuid]
        if shrink:
            args.append("--shrink")
        return [*args, *extra, scratch]

    try:
        # The store paths bound where the build user owns them (it is root in the
        # namespace, and mkfs.btrfs copies owners); the rest copied as that user.
        run_viewed(entries, scratch.parent, copies_owners=True, step=step, fs_type="btrfs",
                   command=command, unbound_prefix=("unshare", "--map-root-user"))
    except CommandError as exc:
        failure = unshare_failure(exc.stderr)
        if failure:
            raise StepError(
                step,
                f"cannot make a user namespace ({failure}), which fsType btrfs needs "
                "without root (mkfs.btrfs --rootdir records the owners it reads); allow "
                "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces; in a Nix sandbox, nested ones) or use fsType "
                "ext4 or xfs",
            ) from exc
        raise


def make_btrfs_in(scratch: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                  uuid: str | None, step: str, shrink: bool = False) -> None:
    """make_btrfs for the image's root: its label, and a tree too large names diskSize."""
    try:
        make_btrfs(scratch, entries, label=plan.label, uuid=uuid, step=step, shrink=shrink)
    except CommandError as exc:
        too_small(step, plan, exc, FULL_WORDS)
        raise


def shrunk_btrfs_size(work: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                      trial_size: int, step: str) -> int:
    """Bytes of the smallest btrfs holding `entries`, for "minimal": mkfs.btrfs --shrink
    into a sparse file of `trial_size` bytes truncates it to the filesystem's end."""
    scratch = work / "minimal.btrfs"
    with scratch.open("wb") as fh:
        fh.truncate(max(trial_size, 1 << 30))
    if writer_crc() is not None:
        # Owners do not change the size; the writer, not this trial, gives them.
        entries = [replace(e, uid=0, gid=0) if e.uid or e.gid else e for e in entries]
    try:
        make_btrfs_in(scratch, plan, entries, uuid=None, step=step, shrink=True)
        return scratch.stat().st_size
    finally:
        scratch.unlink(missing_ok=True)


def writer_needs(entries: Sequence[Entry], *, crc: crc32c.Crc32c,
                 step: str) -> btrfs_write.Stats:
    """btrfs_write.needed_size with "minimal"'s metadata room: no namespace, no mkfs."""
    started = time.monotonic()
    try:
        stats = btrfs_write.needed_size(entries, crc=crc)
    except btrfs_fstree.TreeError as exc:
        raise StepError(step, str(exc)) from exc
    logger.info("[%s] btrfs_write's layout measured in %.1f s: %.1f MiB (%.1f MiB of data, "
                "%d tree blocks)", step, time.monotonic() - started, stats.end / MIB,
                stats.data_bytes / MIB, stats.metadata_blocks)
    return stats


@functools.cache
def writer_crc() -> crc32c.Crc32c | None:
    """The CRC-32C btrfs_write uses; None: mkfs.btrfs makes every btrfs."""
    return crc32c.provider()


def write_at(target: Path, offset: int, size: int, entries: Sequence[Entry], *, label: str,
             uuid: str, step: str, for_guest: bool = False) -> bool:
    """btrfs_write's filesystem of `size` bytes at byte `offset` of `target`, in one pass,
    no namespace, owners the entries' own; False where no CRC-32C is at hand (the caller
    uses mkfs.btrfs). Raises btrfs_fstree.NoSpace for a tree too large (the caller names
    what sized it), StepError for one btrfs cannot hold."""
    crc = writer_crc()
    if crc is None:
        logger.info("btrfs: no CRC-32C here (AF_ALG refused, libext2fs not found; set %s): "
                    "mkfs.btrfs --rootdir makes it", crc32c.LIBEXT2FS_ENV)
        return False
    started = time.monotonic()
    try:
        stats = btrfs_write.write_btrfs(target, offset, size, entries, label=label, uuid=uuid,
                                        crc=crc, for_guest=for_guest)
    except btrfs_fstree.TreeError as exc:
        raise StepError(step, str(exc)) from exc
    logger.info("[%s] btrfs_write took %.1f s (%d entries, %.1f MiB of data, %d tree blocks; "
                "CRC-32C: %s)", step, time.monotonic() - started, stats.entries,
                stats.data_bytes / MIB, stats.metadata_blocks, crc.name)
    return True


def written(target: Path, plan: DiskPlan, entries: Sequence[Entry], *, uuid: str | None,
            step: str) -> bool:
    """write_at in the plan's root range of `target`. A "minimal" root keeps the
    metadata room it was measured with, and the rest of its free space unallocated,
    for data or metadata as the guest needs."""
    offset = plan.root_offset if plan.table is not None else 0
    try:
        return write_at(target, offset, plan.root_size, entries, label=plan.label,
                        uuid=uuid or str(uuidlib.uuid4()), step=step,
                        for_guest=plan.size_source == "minimal")
    except btrfs_fstree.NoSpace as exc:
        raise StepError(step, f"the root filesystem ({plan.root_size // MIB} MiB) is too "
                        f"small for the closure and contents ({exc}); raise diskSize, or "
                        'use diskSize = "auto"') from exc


@dataclass(frozen=True)
class Btrfs(Filesystem):
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        # A "minimal" root was measured by the writer, which needs no least size.
        large_enough = plan.root_size >= self.min_size or plan.size_source == "minimal"
        if large_enough and written(target, plan, entries, uuid=uuid, step=step):
            return

        def write(scratch: Path) -> None:
            make_btrfs_in(scratch, plan, entries, uuid=uuid, step=step)

        in_partition(target, plan, tool=self.tool, fs_type=self.name, min_size=self.min_size,
                     write=write, step=step)

    def minimal_floor(self) -> int:
        # The writer's measure holds all it needs; mkfs.btrfs' layout needs min_size.
        return 0 if writer_crc() is not None else self.min_size

    def minimal_content(self, work: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                        estimate: int, step: str, room: int = 0) -> tuple[int, str, int]:
        crc = writer_crc()
        if crc is not None:
            stats = writer_needs(entries, crc=crc, step=step)
            # The guest's files fill `room`, and finish writes them with the tree.
            content = stats.grown_end(room) - room
            return content, (f"btrfs_write's layout of the tree, its metadata room for the "
                             f"guest's writes: {stats.end} bytes, {content} with the "
                             "guest's files moving its metadata"), 0
        trial_size = 2 * estimate
        content = shrunk_btrfs_size(work, plan, entries, trial_size=trial_size, step=step)
        return content, f"mkfs.btrfs --rootdir --shrink of the tree: {content} bytes", trial_size

    def owner_problem(self, entry: ContentEntry) -> str | None:
        if entry.user is None or entry.group is None:
            return None  # unset: root; half set is spec's error
        if writer_crc() is not None:
            return None  # btrfs_write gives every entry its own owner
        if is_root(entry.user) and is_root(entry.group):
            return None
        return (f'"{entry.user}:{entry.group}": fsType btrfs is made unprivileged in a '
                "user namespace where only root can own files; use root, or fsType "
                '"ext4" or "xfs"')


FILESYSTEMS = (
    # 160 MiB: the smallest that holds mkfs.btrfs' default chunks (DUP metadata, system,
    # data) with room for the guest's writes. Measured on bench/'s closure and the test
    # closure: used space stays under 2x the files' bytes + 16 KiB an entry.
    Btrfs("btrfs", "mkfs.btrfs --rootdir (user namespace)",
          "the same bytes for the same tree, UUID and label (the engine's writer); "
          "with mkfs.btrfs: fixed UUID and label, chunk-tree/device UUIDs and times vary",
          min_size=160 * MIB, bytes_per_entry=16 * 1024, data_per_mille=2000,
          fixed=160 * MIB, parted_name="btrfs"),
)

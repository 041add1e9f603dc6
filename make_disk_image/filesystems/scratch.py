"""What the filesystems whose tools cannot write at an offset inside a file share.

btrfs, xfs, erofs and squashfs are made in a scratch file next to the target and copied
into the root partition with their holes kept (with no partition table, straight into
the target). All but xfs read a directory tree, which is materialized from the entries
as the build user.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from make_disk_image.models import MIB, DiskPlan, Entry
from make_disk_image.process import CommandError, StepError
from make_disk_image.utils import copy_data_ranges, copy_file

logger = logging.getLogger("make_disk_image")

# Timestamps when deterministic (rootfs.SOURCE_DATE_EPOCH).
FIXED_TIME = 1


def materialize(entries: Sequence[Entry], dest: Path, *, step: str, fs_type: str) -> None:
    """Write `entries` as a directory tree at `dest` (which must not exist)."""
    dest.mkdir(mode=0o700)
    for entry in entries:
        path = dest / entry.path if entry.path else dest
        if entry.kind == "dir":
            if entry.path:
                path.mkdir(mode=0o700)
        elif entry.kind == "file":
            if entry.data is not None:
                path.write_bytes(entry.data)
            else:
                assert entry.source is not None
                copy_file(entry.source, path)
        elif entry.kind == "symlink":
            assert entry.link is not None
            os.symlink(entry.link, path)
        elif entry.kind == "hardlink":
            assert entry.link is not None
            os.link(dest / entry.link, path)
        elif entry.kind == "fifo":
            os.mkfifo(path)
        else:
            raise StepError(
                step,
                f"/{entry.path} is a device node, which fsType {fs_type} can only hold when "
                "made as root; leave it out of `contents` or use fsType ext4 or xfs",
            )
    # Modes and times last, deepest first: read-only directories (the store's) must still
    # take their children, and writing a child changes its directory's mtime.
    for entry in reversed(entries):
        path = dest / entry.path if entry.path else dest
        if entry.kind == "symlink":
            os.utime(path, (_mtime(entry),) * 2, follow_symlinks=False)
            continue
        if entry.kind != "hardlink":
            os.chmod(path, entry.mode & 0o7777)
        os.utime(path, (_mtime(entry),) * 2)


def _mtime(entry: Entry) -> int:
    return FIXED_TIME if entry.mtime is None else entry.mtime


def remove_tree(path: Path) -> None:
    """rmtree that first makes the read-only directories it copied writable."""
    if not path.exists():
        return
    for directory, _, _ in os.walk(path):
        os.chmod(directory, 0o700)
    shutil.rmtree(path)


@contextlib.contextmanager
def materialized(entries: Sequence[Entry], parent: Path, *, step: str,
                 fs_type: str) -> Iterator[Path]:
    """`entries` as a directory tree in a temporary directory in `parent`."""
    with tempfile.TemporaryDirectory(prefix=f"{fs_type}-root-", dir=parent) as tmp:
        tree = Path(tmp) / "root"
        try:
            materialize(entries, tree, step=step, fs_type=fs_type)
            yield tree
        finally:
            remove_tree(tree)


def too_small(step: str, plan: DiskPlan, exc: CommandError, words: Sequence[str]) -> None:
    """Raise the "too small" error when the tool's stderr says one of `words`."""
    text = exc.stderr.lower()
    if any(w in text for w in words):
        raise StepError(
            step,
            f"the root filesystem ({plan.root_size // MIB} MiB) is too small for the "
            f'closure and contents; raise diskSize, or use diskSize = "auto" '
            f"({exc.stderr.strip().splitlines()[-1]})",
        ) from exc


def in_partition(target: Path, plan: DiskPlan, *, tool: str, fs_type: str, min_size: int,
                 write: Callable[[Path], None], step: str) -> None:
    """A filesystem `write` makes in a file of the root's size, in the plan's root range
    of `target` (its size is fixed)."""
    started = time.monotonic()
    if plan.root_size < min_size:
        raise StepError(
            step,
            f"the root filesystem would be {plan.root_size // MIB} MiB, but {tool} "
            f"needs at least {min_size // MIB} MiB; raise diskSize or use "
            'diskSize = "auto"',
        )
    direct = plan.table is None
    scratch = target if direct else target.with_name(f"{target.name}.{fs_type}")
    if not direct:
        scratch.unlink(missing_ok=True)
        with scratch.open("wb") as fh:
            fh.truncate(plan.root_size)
    try:
        write(scratch)
        # mkfs.btrfs grows a file too small for the tree instead of failing: copying the
        # root's size of it would leave a truncated filesystem.
        made = scratch.stat().st_size
        if made > plan.root_size:
            raise StepError(
                step,
                f"the root filesystem ({plan.root_size // MIB} MiB) is too small for the "
                f"closure and contents ({tool} needed {-(-made // MIB)} MiB); raise "
                'diskSize, or use diskSize = "auto"',
            )
        if not direct:
            placed_at = time.monotonic()
            if moved_into(scratch, target, plan, step=step):
                logger.info("[%s] the filesystem moved into the partition (its extents "
                            "shifted, the rest of the disk copied) in %.1f s", step,
                            time.monotonic() - placed_at)
            else:
                copied = copy_data_ranges(scratch, target, [(0, plan.root_size)], step=step,
                                          dest_offset=plan.root_offset)
                logger.info("[%s] %d bytes of the filesystem copied into the partition in "
                            "%.1f s", step, copied, time.monotonic() - placed_at)
    finally:
        if not direct:
            scratch.unlink(missing_ok=True)
    logger.info("[%s] %s took %.1f s", step, tool, time.monotonic() - started)


def moved_into(scratch: Path, target: Path, plan: DiskPlan, *, step: str) -> bool:
    """Make `scratch` (the filesystem) the disk `target` with it in the root range, without
    copying it: its extents are shifted by the root's offset (FALLOC_FL_INSERT_RANGE, ext4
    and xfs), then what `target` holds outside the root range (tables, other partitions,
    boot code) is copied in, and `scratch` replaces `target`. The same bytes as copying the
    filesystem into `target`, whose root range must be a hole. False, having changed
    nothing: the build directory's filesystem cannot shift extents, or the root range of
    `target` holds data."""
    root_end = plan.root_offset + plan.root_size
    disk_size = target.stat().st_size
    if root_end > disk_size or not _hole(target, plan.root_offset, root_end):
        return False
    if plan.root_offset and not insert_hole(scratch, plan.root_offset):
        return False
    with scratch.open("r+b") as fh:
        fh.truncate(disk_size)
    copy_data_ranges(target, scratch, [(0, plan.root_offset), (root_end, disk_size)],
                     step=step)
    os.chmod(scratch, stat.S_IMODE(target.stat().st_mode))
    os.replace(scratch, target)
    return True


def _hole(path: Path, start: int, end: int) -> bool:
    with path.open("rb") as fh:
        try:
            return os.lseek(fh.fileno(), start, os.SEEK_DATA) >= end
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return True  # nothing but a hole from `start` on
            raise


FALLOC_FL_INSERT_RANGE = 0x20


def insert_hole(path: Path, length: int) -> bool:
    """Shift all of `path` up by `length` bytes, a hole in front; False where the
    filesystem cannot (not ext4 or xfs, or `length` not a multiple of its block)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    with path.open("r+b") as fh:
        if libc.fallocate(fh.fileno(), FALLOC_FL_INSERT_RANGE, 0, length) == 0:
            return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, f"fallocate(FALLOC_FL_INSERT_RANGE) of {path}: {os.strerror(err)}")


def store_image(target: Path, plan: DiskPlan, *, fs_type: str, write: Callable[[], None],
                step: str) -> None:
    """A read-only store image `write` makes as the whole of `target`; a fixed diskSize
    pads it."""
    target.unlink(missing_ok=True)
    write()
    made = target.stat().st_size
    if plan.size_source == "diskSize":
        if made > plan.disk_size:
            target.unlink()
            raise StepError(
                step,
                f"the {fs_type} image is {made} bytes ({-(-made // MIB)} MiB), more than "
                f"diskSize {plan.disk_size // MIB} MiB; raise diskSize or use "
                'diskSize = "auto"',
            )
        with target.open("r+b") as fh:
            fh.truncate(plan.disk_size)

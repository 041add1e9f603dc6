"""Each repart `Format=`, made natively by the unprivileged build user: into its own
file, or (ext4, btrfs) in place in the image.

| Format | made by | owners | deterministic |
|---|---|---|---|
| ext4 | `mkfs.ext4`, then the engine's writer (filesystems/ext.py) | root | bit-identical (*) |
| vfat | `mkfs.vfat -F 32 --invariant`, mtools | - | bit-identical (fixed times) |
| swap | `mkswap` | - | bit-identical |
| btrfs | the engine's writer (filesystems/btrfs.py) (**) | root | bit-identical (**) |
| xfs | `mkfs.xfs`, then the engine's writer (filesystems/xfs.py) (***) | root | bit-identical |
| erofs | `mkfs.erofs --all-root -T1` of the materialized tree | root | bit-identical |
| squashfs | `mksquashfs -all-root`, SOURCE_DATE_EPOCH | root | bit-identical |

(*) SOURCE_DATE_EPOCH, and the directory hash seed is the filesystem's UUID.
(**) With `mkfsOptions` for btrfs (they only mean something to mkfs.btrfs), or where no
CRC-32C is at hand, `mkfs.btrfs --rootdir` in a user namespace makes it: deterministic
in label and UUID only.
(***) Where no CRC-32C is at hand, `mkfs.xfs -p` with a protofile: label and UUID.

Which maker a `Format=` value gets, and what else it asks of the build, is the table's
(make_disk_image.repart.format_table).

The options are systemd-repart 254's (mkfs-util.c: `-I 256 -m 0 -O has_journal`, FAT32
forced, label and UUID) plus what makes the bytes reproducible; `mkfsOptions` go last.
No fakeroot: owners come from the entries, `--all-root` or the protofile. Only
mkfs.btrfs needs a user namespace (it reads a directory tree), where its files are root's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import (
    btrfs,
    btrfs_fstree,
    btrfs_write,
    erofs,
    ext,
    scratch,
    squashfs,
    xfs,
)
from make_disk_image.filesystems import vfat as fat
from make_disk_image.models import MIB, Entry, PlannedPartition
from make_disk_image.process import CommandError, StepError
from make_disk_image.utils import copy_data_ranges

logger = logging.getLogger("make_disk_image")

SOURCE_DATE_EPOCH = "1"
# mkfs.ext4 is mke2fs with `-t ext4`.
EXT4_OPTIONS = ("-b", "4096", "-T", "default", "-I", "256", "-O", "has_journal", "-m", "0")
# Minimize=guess's trial filesystem, sparse: repart gives it 1 TiB too.
TRIAL_SIZE = 1 << 40
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
READ_CHUNK = 1 << 20
FAST_SYMLINK = 60  # targets this long or longer take a block
FIRST_INODE = 12  # the orphan file's (lost+found is 11); the tree's inodes follow
FAT_LABEL_BYTES = 11
GUESS_BTRFS_NEEDS = (
    "Minimize=guess for btrfs is measured by the engine's btrfs writer, which needs a "
    "CRC-32C (the kernel's AF_ALG, or libext2fs: name it in MDI_LIBEXT2FS); or give this "
    "partition a SizeMinBytes")


def _sized(target: Path, size: int) -> None:
    target.unlink(missing_ok=True)
    with target.open("wb") as f:
        f.truncate(size)


def mkfs_ext4_command(target: Path, size: int, *, fs_uuid: uuid.UUID, label: str,
                      features: str, extra: Sequence[str], offset: int | None) -> list[str]:
    """repart 254's mkfs.ext4 (without its `-d`) of `size` bytes: the whole of a new
    `target`, made here, or, with `offset`, inside the existing image `target`."""
    extended = f"lazy_itable_init=1,discard,hash_seed={fs_uuid}"
    if offset is None:
        _sized(target, size)
    else:
        extended += f",offset={offset}"
    return ["mkfs.ext4", "-F", "-q", *EXT4_OPTIONS, "-L", label, "-U", str(fs_uuid),
            "-E", extended, "-O", features, *extra, str(target), f"{size // 1024}K"]


def make_ext4(target: Path, size: int, entries: Sequence[Entry], *, fs_uuid: uuid.UUID,
              label: str, step: str, extra: Sequence[str] = (),
              offset: int | None = None) -> None:
    """ext4 of `size` bytes holding `entries`: the whole of a new `target`, or, with
    `offset`, inside the existing image `target` (no copy of the filesystem afterwards).
    Made empty without metadata_csum, filled by the engine's writer, then given its
    checksums, as the main path's ext4 (filesystems/ext.py)."""
    argv = mkfs_ext4_command(target, size, fs_uuid=fs_uuid, label=label,
                             features="^metadata_csum", extra=extra, offset=offset)

    ext.make_and_fill(argv, target, offset or 0, entries, deterministic=True, step=step,
                      too_full=lambda detail: _does_not_fit(step, size, detail),
                      options=extra)
    ext.add_checksums_at(ext.offset_spec(target, offset or 0), deterministic=True, step=step)


def data_bytes(path: Path) -> int:
    """The bytes of `path` that hold data: holes and unwritten extents left out."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        total, offset = 0, 0
        while True:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return total
                raise
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            total += offset - start
    finally:
        os.close(fd)


def _file_blocks(entry: Entry) -> int:
    """The blocks `mke2fs -d` gives a file: all but those of zeros (it leaves holes)."""
    if entry.data is not None:
        data = entry.data
        return sum(1 for i in range(0, len(data), BLOCK) if data[i:i + BLOCK].strip(b"\0"))
    assert entry.source is not None
    used = 0
    with open(entry.source, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            if not chunk.strip(b"\0"):
                continue
            view = memoryview(chunk)
            for i in range(0, len(chunk), BLOCK):
                block = view[i:i + BLOCK]
                if block != ZERO_BLOCK[:len(block)]:
                    used += 1
    return used


def _directory_blocks(names: Sequence[str], *, is_root: bool) -> int:
    """Linear directory blocks (mke2fs -d indexes none), with metadata_csum's 12-byte
    tail in each; `.`, `..` (and lost+found in the root) first, then first fit."""
    usable = BLOCK - 12
    blocks, used = 1, 24 + (20 if is_root else 0)
    for name in names:
        record = (8 + len(name.encode()) + 3) // 4 * 4
        if used + record > usable:
            blocks, used = blocks + 1, record
        else:
            used += record
    return blocks


def tree_blocks(entries: Sequence[Entry]) -> int:
    """The blocks `mke2fs -d` writes for `entries` into an empty filesystem: file data,
    directories, long symlinks, and the inode table blocks its new inodes fill."""
    children: dict[str, list[str]] = {}
    for entry in entries:
        if entry.path:
            parent, _, name = entry.path.rpartition("/")
            children.setdefault(parent, []).append(name)
    blocks = 0
    for entry in entries:
        if entry.kind == "file":
            blocks += _file_blocks(entry)
        elif entry.kind == "symlink" and len((entry.link or "").encode()) >= FAST_SYMLINK:
            blocks += 1
        elif entry.kind == "dir" and entry.path:
            blocks += _directory_blocks(children.get(entry.path, []), is_root=False)
    # The root's first block is the empty filesystem's already.
    blocks += _directory_blocks(children.get("", []), is_root=True) - 1
    new_inodes = sum(1 for e in entries if e.path and e.kind != "hardlink")
    per_block = BLOCK // 256
    blocks += -(-(FIRST_INODE + new_inodes) // per_block) - -(-FIRST_INODE // per_block)
    return blocks


def guess_ext4_size(work: Path, entries: Sequence[Entry], *, fs_uuid: uuid.UUID, label: str,
                    step: str, extra: Sequence[str] = ()) -> int:
    """Minimize=guess as repart 254 does it: the bytes that hold data in a filesystem made
    on a sparse 1 TiB file and filled, plus half of them. repart fills that filesystem;
    here only the empty one is made, and what `mke2fs -d` would add to it is counted
    (`tree_blocks`): the same figure (tests/test_repart_compare.py), without writing
    the closure once more."""
    with tempfile.TemporaryDirectory(prefix="minimize-", dir=work) as tmp:
        trial = Path(tmp) / "trial.ext4"
        # uninit_bg keeps the groups uninitialised (as metadata_csum does), so the trial
        # allocates what the real filesystem would.
        argv = mkfs_ext4_command(trial, TRIAL_SIZE, fs_uuid=fs_uuid, label=label,
                                 features="^metadata_csum,uninit_bg", extra=extra,
                                 offset=None)
        process.run(argv, step=f"{step}: Minimize=guess trial",
                    env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
        used = data_bytes(trial) + BLOCK * tree_blocks(entries)
    return used + used // 2


def guess_btrfs_size(entries: Sequence[Entry], *, step: str) -> int:
    """Minimize=guess for btrfs as repart 254 guesses (the bytes a filesystem made on a
    sparse 1 TiB file and filled holds, plus half of them), the filesystem being the one
    this engine writes: its data, both copies of its tree blocks and its superblocks,
    counted by a run of the writer into /dev/null (filesystems.btrfs_write.needed_size);
    never less than the writer's own layout needs."""
    crc = btrfs.writer_crc()
    if crc is None:
        raise StepError(step, GUESS_BTRFS_NEEDS)
    try:
        stats = btrfs_write.needed_size(entries, crc=crc)
    except btrfs_fstree.TreeError as exc:
        raise StepError(step, str(exc)) from exc
    return max(stats.written + stats.written // 2, stats.end)


def guess_btrfs_problem(extra: Sequence[str]) -> str | None:
    """Why Minimize=guess for btrfs cannot be measured here, or None."""
    if extra:
        return ("it is measured by the engine's btrfs writer, and mkfsOptions for btrfs "
                "make mkfs.btrfs write it instead; drop them, or give a SizeMinBytes")
    if btrfs.writer_crc() is None:
        return GUESS_BTRFS_NEEDS
    return None


def fat_label(label: str) -> str:
    return label.upper().encode("ascii", "replace")[:FAT_LABEL_BYTES].decode()


def make_vfat(target: Path, size: int, entries: Sequence[Entry], *, volume_id: str,
              label: str, sector_size: int, work: Path, step: str,
              extra: Sequence[str] = ()) -> None:
    _sized(target, size)
    env = {**fat.MTOOLS_ENV, **fat.DETERMINISTIC_ENV}
    # A FAT32 this small needs one sector per cluster, or mtools and firmware read it
    # as FAT16 (field notes): repart 254 fails there ("No directory slots").
    small = ["-s", "1"] if size < (512 << 20) else []
    argv = ["mkfs.vfat", "--invariant", "-i", volume_id, "-n", fat_label(label), "-F", "32",
            "-S", str(sector_size), *small, *extra, str(target)]
    process.run(argv, step=f"{step}: mkfs.vfat", env=env)
    if len(entries) <= 1:
        return
    with tempfile.TemporaryDirectory(prefix="vfat-", dir=work) as tmp:
        copy = Path(tmp) / "tree"
        scratch.materialize(entries, copy, step=step, fs_type=fat.NAME)
        directories = [e.path for e in entries if e.kind == "dir" and e.path]
        files = [e.path for e in entries if e.kind != "dir"]
        part = PlannedPartition(number=1, role="repart", start=0, end=size // 512 - 1, type="",
                                guid=None, name=None, flags=(), filesystem=fat.NAME,
                                label=label, mountpoint=None)
        try:
            fat.fill(target, part, fat.FatContent(tuple(directories), tuple(files), copy),
                     deterministic=True)
        finally:
            scratch.remove_tree(copy)


def make_swap(target: Path, size: int, *, fs_uuid: uuid.UUID, label: str, step: str,
              extra: Sequence[str] = ()) -> None:
    _sized(target, size)
    process.run(["mkswap", "-L", label, "-U", str(fs_uuid), *extra, str(target)],
                step=f"{step}: mkswap")


@contextlib.contextmanager
def _fits(target: Path, size: int, words: Sequence[str], *, step: str) -> Iterator[None]:
    """A filesystem module's maker into `target` of `size` bytes, whose "does not fit"
    names the partition's size. mkfs.btrfs grows a file too small instead of failing:
    a filesystem larger than its partition is that error too, not a truncated copy."""
    try:
        yield
    except CommandError as exc:
        if not any(w in exc.stderr.lower() for w in words):
            raise
        raise _does_not_fit(step, size, exc.stderr.strip().splitlines()[-1]) from exc
    made = target.stat().st_size
    if made > size:
        raise _does_not_fit(step, size, f"the filesystem needs {-(-made // MIB)} MiB")


def _does_not_fit(step: str, size: int, detail: str) -> StepError:
    return StepError(step, f"the partition's {size // MIB} MiB do not hold its files; "
                     f"raise its SizeMinBytes ({detail})")


def make_btrfs(target: Path, size: int, entries: Sequence[Entry], *, fs_uuid: uuid.UUID,
               label: str, step: str, work: Path | None = None, extra: Sequence[str] = (),
               offset: int | None = None) -> None:
    """btrfs of `size` bytes holding `entries`: the whole of a new `target`, or, with
    `offset`, in place in the image `target`. The engine's writer (filesystems.btrfs_write)
    makes it where a CRC-32C is at hand: one pass, no user namespace, owners the entries'
    own, the same bytes for the same definition. `mkfsOptions` (`extra`) only mean
    something to mkfs.btrfs, which then makes it as before, into a file of its own (in
    `work`, copied in when in place)."""
    if offset is None:
        _sized(target, size)
    if not extra:
        try:
            if btrfs.write_at(target, offset or 0, size, entries, label=label,
                              uuid=str(fs_uuid), step=step):
                return
        except btrfs_fstree.NoSpace as exc:
            raise _does_not_fit(step, size, str(exc)) from exc
    else:
        logger.info("[%s] mkfsOptions for btrfs (%s): mkfs.btrfs --rootdir makes it, in a "
                    "user namespace (its bytes vary beyond label and UUID)", step,
                    shlex.join(extra))
    if offset is None:
        _mkfs_btrfs(target, size, entries, fs_uuid=fs_uuid, label=label, step=step,
                    extra=extra)
        return
    with tempfile.TemporaryDirectory(prefix="btrfs-", dir=work or target.parent) as tmp:
        own = Path(tmp) / "partition.btrfs"
        _sized(own, size)
        _mkfs_btrfs(own, size, entries, fs_uuid=fs_uuid, label=label, step=step, extra=extra)
        copy_data_ranges(own, target, [(0, size)], step=step, dest_offset=offset)


def _mkfs_btrfs(target: Path, size: int, entries: Sequence[Entry], *, fs_uuid: uuid.UUID,
                label: str, step: str, extra: Sequence[str]) -> None:
    with _fits(target, size, btrfs.FULL_WORDS, step=step):
        btrfs.make_btrfs(target, entries, label=label, uuid=str(fs_uuid), step=step,
                         extra=extra)


def make_xfs(target: Path, size: int, entries: Sequence[Entry], *, fs_uuid: uuid.UUID,
             label: str, step: str, extra: Sequence[str] = ()) -> None:
    _sized(target, size)
    with _fits(target, size, xfs.FULL_WORDS, step=step):
        xfs.make_xfs(target, entries, label=label, uuid=str(fs_uuid), deterministic=True,
                     step=step, extra=extra)


def make_erofs(target: Path, entries: Sequence[Entry], *, fs_uuid: uuid.UUID, work: Path,
               step: str, extra: Sequence[str] = ()) -> None:
    """erofs of `entries` as the whole of `target`, at its own size, as the main path
    makes it (filesystems/erofs.py: the store bound in place, or the tar stream). No
    label: erofs-utils 1.5 has no -L (repart 254 passes none either)."""
    target.unlink(missing_ok=True)
    args = [*erofs.erofs_command(target, uuid=str(fs_uuid), deterministic=True,
                                 compression=None), *extra]
    erofs.write_erofs(args, entries, work, step=f"{step}: mkfs.erofs")


def make_squashfs(target: Path, entries: Sequence[Entry], *, step: str) -> None:
    """squashfs of `entries` as the whole of `target`, at its own size, as the main path
    makes it (filesystems/squashfs.py: from the store paths, or the tar stream)."""
    target.unlink(missing_ok=True)
    squashfs.write_squashfs(target, entries, deterministic=True, step=step, compression=None)

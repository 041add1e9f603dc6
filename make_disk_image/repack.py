"""Deterministic images although the guest wrote to them: the filesystems are made again.

When the guest mounts the root filesystem (bootloader installation, owners by name), the
kernel's ext4 writes real times and places new directories with some randomness (the
Orlov allocator), and vfat writes real times. With `deterministic`, the guest therefore
records what it left, while everything is still mounted, and makes the filesystems
again from that record with the same tools and arguments as an untouched build:

- root: a sorted walk of the mounted filesystem gives every path's type, owner, mode and
  symlink target. A regular file whose mtime is still prepare's (1 s) and whose path and
  size match what prepare put there reads its bytes from prepare's source again (the
  store path, `contents` source or Nix database file); when the guest touched its inode
  (chown: its ctime is no longer 0) the bytes are compared first. Everything else (files
  the guest wrote) is copied into the guest's tmpfs. The partition is zeroed and mke2fs
  makes the filesystem from that tree exactly as prepare does, on the partition device:
  the same sorted tar stream, so the same allocation and the same bytes.
- FAT partitions: every file is copied into tmpfs, the partition is zeroed, formatted
  with `mkfs.vfat --invariant` again and filled with mtools in sorted order with fixed
  times. systemd-boot's `loader/random-seed` is left out: it is random by design, and
  every machine booting the image would share it; systemd-boot and systemd make one on
  first boot.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

from make_disk_image import process, rootfs
from make_disk_image.models import DiskPlan, Spec
from make_disk_image.process import StepError
from make_disk_image.staging import Entry, Kind, Tree, build_tree

logger = logging.getLogger("make_disk_image")

STEP = "guest: repack"
# prepare's mtime for every inode (tar mtime, clamped by mke2fs to SOURCE_DATE_EPOCH):
# anything the guest wrote has a real mtime instead. prepare's ctimes are at most this
# (tar carries none: mke2fs leaves 0); a chown or write in the guest sets a real one.
PREPARED_TIME_NS = rootfs.SOURCE_DATE_EPOCH * 1_000_000_000
# FAT times when deterministic: 1980-01-01, the earliest time FAT can store.
FAT_EPOCH = 315532800
FAT_ENV = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(FAT_EPOCH), "MTOOLS_SKIP_CHECK": "1"}
# Paths (relative to a FAT partition's root, compared case-insensitively as FAT does)
# that must not be copied into a deterministic image.
FAT_DROPPED = ("loader/random-seed",)
# mke2fs makes it in every new filesystem.
LOST_AND_FOUND = "lost+found"


def guest_mounts_root(spec: Spec) -> bool:
    """The guest mounts the root filesystem only for the bootloader or owners by name."""
    return spec.installBootLoader or any(c.needs_guest_chown for c in spec.contents)


def repacks(spec: Spec) -> bool:
    """Whether the guest makes the filesystems again after writing to them."""
    return spec.deterministic and not spec.onlyNixStore and guest_mounts_root(spec)


@dataclass(frozen=True)
class RootSnapshot:
    """The root filesystem as the guest left it, as entries for `staging.write_tar`."""

    entries: tuple[Entry, ...]
    reused: int  # regular files read again from prepare's sources
    copied: int  # regular files whose bytes were copied into tmpfs
    copied_bytes: int


@dataclass(frozen=True)
class FatSnapshot:
    """A FAT partition's directories and files (relative paths), bytes under `copy`."""

    directories: tuple[str, ...]
    files: tuple[str, ...]
    copy: Path
    dropped: tuple[str, ...]


def prepared_tree(spec: Spec, db_files: dict[str, Path]) -> Tree:
    """Prepare's tree again, in the guest, as far as the guest can read its sources.

    Store paths are always there (the store is shared into the VM), and so are a Nix
    build's `contents` and configFile (store paths too). A source prepare read from
    elsewhere (`make-disk-image build` with files under the host's /tmp, which the VM
    covers with its own) is left out: its files are then copied out of the image like
    the guest's own.
    """
    visible = []
    for entry in spec.contents:
        if glob.glob(entry.source) if entry.is_glob else os.path.lexists(entry.source):
            visible.append(entry)
        else:
            logger.info(
                "repack: %s is not visible in the VM; copying %s from the image",
                entry.source,
                entry.target,
            )
    config_file = spec.configFile
    if config_file is not None and not os.path.isfile(config_file):
        logger.info("repack: %s is not visible in the VM; copying it from the image", config_file)
        config_file = None
    return build_tree(replace(spec, contents=tuple(visible), configFile=config_file), db_files)


def _children(directory: Path, rel: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Everything under `directory`, parents first, siblings by name, no symlink followed.

    The order is `Tree.ordered`'s, so the tar stream has prepare's order.
    """
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        child_rel = f"{rel}/{child.name}" if rel else child.name
        st = child.stat(follow_symlinks=False)
        yield child_rel, Path(child.path), st
        if stat.S_ISDIR(st.st_mode):
            yield from _children(Path(child.path), child_rel)


def _same_bytes(path: Path, prepared: Entry) -> bool:
    with path.open("rb") as have:
        if prepared.data is not None:
            return have.read() == prepared.data
        assert prepared.source is not None
        with prepared.source.open("rb") as want:
            while True:
                a, b = have.read(1 << 20), want.read(1 << 20)
                if a != b:
                    return False
                if not a:
                    return True


def _copy(path: Path, dest: Path) -> None:
    try:
        shutil.copyfile(path, dest)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StepError(
                STEP,
                f"no room in the build VM's tmpfs for {path} ({path.stat().st_size} bytes), "
                "a file the guest wrote that the repacked filesystem must hold; raise memSize",
            ) from exc
        raise


def snapshot_root(mount: Path, prepared: Tree, scratch: Path) -> RootSnapshot:
    """Walk the mounted root filesystem; copy what the guest wrote into `scratch`.

    `prepared` is prepare's tree (staging.build_tree with the same spec and Nix database
    files): the sources of everything the guest left as it was.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    root_st = os.lstat(mount)
    entries = [Entry("", "dir", stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid)]
    first_name: dict[tuple[int, int], str] = {}
    reused = copied = copied_bytes = 0
    for rel, path, st in _children(mount, ""):
        if rel == LOST_AND_FOUND:
            continue
        if st.st_dev != root_st.st_dev:
            raise StepError(STEP, f"/{rel} is another filesystem still mounted in the image")
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            entries.append(Entry(rel, "dir", mode, uid, gid))
            continue
        if st.st_nlink > 1:
            # Hard links made in the guest (prepare's tree has none) stay hard links.
            key = (st.st_dev, st.st_ino)
            if key in first_name:
                entries.append(Entry(rel, "hardlink", mode, uid, gid, link=first_name[key]))
                continue
            first_name[key] = rel
        if fmt == stat.S_IFLNK:
            link = os.readlink(path)
            entries.append(
                Entry(rel, "symlink", mode, uid, gid, link=link, size=len(link.encode()))
            )
        elif fmt == stat.S_IFREG:
            before = prepared.entries.get(rel)
            if (
                before is not None
                and before.kind == "file"
                and before.size == st.st_size
                and st.st_mtime_ns == PREPARED_TIME_NS
                and (st.st_ctime_ns <= PREPARED_TIME_NS or _same_bytes(path, before))
            ):
                entries.append(
                    Entry(
                        rel,
                        "file",
                        mode,
                        uid,
                        gid,
                        source=before.source,
                        data=before.data,
                        size=st.st_size,
                    )
                )
                reused += 1
            else:
                dest = scratch / f"{copied:06d}"
                _copy(path, dest)
                entries.append(Entry(rel, "file", mode, uid, gid, source=dest, size=st.st_size))
                copied += 1
                copied_bytes += st.st_size
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            kind: Kind = "chardev" if fmt == stat.S_IFCHR else "blockdev"
            device = (os.major(st.st_rdev), os.minor(st.st_rdev))
            entries.append(Entry(rel, kind, mode, uid, gid, device=device))
        elif fmt == stat.S_IFIFO:
            entries.append(Entry(rel, "fifo", mode, uid, gid))
        else:
            # A socket is only meaningful while its server runs, and tar (mke2fs' input)
            # cannot hold one.
            raise StepError(
                STEP,
                f"/{rel} is a socket, which a deterministic image cannot hold; remove it in "
                "the activation that made it, or build with deterministic = false",
            )
    return RootSnapshot(tuple(entries), reused, copied, copied_bytes)


def snapshot_fat(mount: Path, copy: Path) -> FatSnapshot:
    """Copy a mounted FAT filesystem's files into `copy`, keeping its layout."""
    copy.mkdir(parents=True, exist_ok=True)
    directories: list[str] = []
    files: list[str] = []
    dropped: list[str] = []
    for rel, path, st in _children(mount, ""):
        if stat.S_ISDIR(st.st_mode):
            (copy / rel).mkdir()
            directories.append(rel)
        elif rel.lower() in FAT_DROPPED:
            dropped.append(rel)
            logger.info("left out /%s of %s: random by design, made on first boot", rel, mount)
        elif stat.S_ISREG(st.st_mode):
            _copy(path, copy / rel)
            files.append(rel)
        else:
            raise StepError(STEP, f"{path} is neither a file nor a directory on a FAT filesystem")
    return FatSnapshot(tuple(directories), tuple(files), copy, tuple(dropped))


def zero_device(dev: Path) -> None:
    """All zeros, so that no byte of the old filesystem survives in unused blocks.

    mke2fs and mkfs.vfat write only their metadata and the data they are given; what the
    guest wrote before (at places that differ from build to build) would remain in the
    rest. BLKZEROOUT lets qemu zero the range without transferring the bytes.
    """
    process.run(["blkdiscard", "--zeroout", "--force", str(dev)], step=f"{STEP}: zero {dev}")


def fill_fat(dev: Path, snapshot: FatSnapshot) -> None:
    """Put a snapshot into a freshly made FAT filesystem: sorted, with fixed times."""
    if snapshot.directories:
        process.run(
            ["mmd", "-i", str(dev), *[f"::/{d}" for d in snapshot.directories]],
            step=f"{STEP}: mmd",
            env=FAT_ENV,
        )
    # One mcopy per run of files of the same directory, in sorted order.
    for parent, group in groupby(snapshot.files, key=lambda f: f.rpartition("/")[0]):
        sources = [str(snapshot.copy / f) for f in group]
        process.run(
            ["mcopy", "-i", str(dev), *sources, f"::/{parent}/" if parent else "::/"],
            step=f"{STEP}: mcopy",
            env=FAT_ENV,
        )


def make_root(dev: Path, plan: DiskPlan, snapshot: RootSnapshot) -> None:
    """The root filesystem again, on its partition, exactly as prepare makes it."""
    started = time.monotonic()
    zero_device(dev)
    zeroed = time.monotonic()
    rootfs.make_root_filesystem(
        dev, plan, list(snapshot.entries), deterministic=True, in_image=False
    )
    logger.info(
        "repack: zeroed %s in %.1f s, mke2fs in %.1f s",
        dev,
        zeroed - started,
        time.monotonic() - zeroed,
    )

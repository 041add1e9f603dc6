"""What the guest changed on the root filesystem, found without listing the closure.

prepare makes the build VM's root filesystem with every inode's mtime at 1 s and its
ctime at most that (tar carries no ctime); for xfs and btrfs, whose tools write their
own clock, both at most the moment prepare recorded after mkfs (prepared_until_ns).
Whatever the guest writes, creates, chowns or chmods gets a real mtime or ctime. The
guest walks only what lies outside the store's paths (/etc, /boot, /nix/var,
`contents`, ...: small, whatever the closure's size) and looks at the top of each store
path; a store path whose top the guest did not touch is not entered. Changed bytes
are copied into xchg/ for finish; unchanged files are named as prepare's, whose
sources finish reads again natively.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from make_disk_image.handoff import GUEST_FILES, STORE_DIR
from make_disk_image.models import Entry, GuestRecord, Handoff, Kind, Origin
from make_disk_image.process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "guest: record changes"
# mke2fs makes it in every new filesystem.
LOST_AND_FOUND = "lost+found"


def untouched(st: os.stat_result, until_ns: int) -> bool:
    """The inode is as prepare's mkfs left it: neither written nor chowned/chmodded."""
    return st.st_mtime_ns <= until_ns and st.st_ctime_ns <= until_ns


def _children(directory: Path, rel: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        child_rel = f"{rel}/{child.name}" if rel else child.name
        yield child_rel, Path(child.path), child.stat(follow_symlinks=False)


def _same_bytes(path: Path, prepared: Entry) -> bool:
    with path.open("rb") as have:
        if prepared.data is not None:
            return have.read() == prepared.data
        if prepared.source is None or not os.path.isfile(prepared.source):
            return False  # a source the VM cannot see: keep the image's bytes
        with open(prepared.source, "rb") as want:
            while True:
                a, b = have.read(1 << 20), want.read(1 << 20)
                if a != b:
                    return False
                if not a:
                    return True


class Recorder:
    """Walks the mounted root filesystem and builds the GuestRecord."""

    def __init__(self, mount: Path, handoff: Handoff, xchg: Path) -> None:
        self.mount = mount
        self.prepared = {e.path: e for e in handoff.outside_store}
        self.store_names = set(handoff.store_names)
        self.until_ns = handoff.prepared_until_ns
        self.files_dir = xchg / GUEST_FILES
        self.files_rel = GUEST_FILES
        self.entries: list[tuple[Entry, Origin]] = []
        self.store_walked: list[str] = []
        self.first_name: dict[tuple[int, int], str] = {}
        self.copied = 0
        self.copied_bytes = 0
        self.root_dev = os.lstat(mount).st_dev

    def record(self) -> GuestRecord:
        if self.files_dir.exists():
            shutil.rmtree(self.files_dir)
        self.files_dir.mkdir(parents=True)
        root_st = os.lstat(self.mount)
        self._add("", self.mount, root_st)
        self._walk(self.mount, "")
        logger.info(
            "%s: %d entries outside the store, %d store paths entered, %d files "
            "(%d bytes) written in the guest",
            STEP,
            len(self.entries),
            len(self.store_walked),
            self.copied,
            self.copied_bytes,
        )
        return GuestRecord(True, tuple(self.entries), tuple(sorted(self.store_walked)))

    def _walk(self, directory: Path, rel: str) -> None:
        for child_rel, path, st in _children(directory, rel):
            if child_rel == LOST_AND_FOUND:
                continue
            if st.st_dev != self.root_dev:
                raise StepError(STEP, f"/{child_rel} is another filesystem still mounted")
            self._add(child_rel, path, st)
            if not stat.S_ISDIR(st.st_mode):
                continue
            if child_rel == STORE_DIR:
                self._walk_store(path)
            else:
                self._walk(path, child_rel)

    def _walk_store(self, store: Path) -> None:
        """Enter only store paths the guest added, or whose top it touched."""
        present = set()
        for child_rel, path, st in _children(store, STORE_DIR):
            name = child_rel.rsplit("/", 1)[1]
            present.add(name)
            if name in self.store_names and untouched(st, self.until_ns):
                continue
            logger.info("%s: /%s was added or changed in the guest", STEP, child_rel)
            self.store_walked.append(name)
            self._add(child_rel, path, st)
            if stat.S_ISDIR(st.st_mode):
                self._walk(path, child_rel)
        for name in sorted(self.store_names - present):
            logger.info("%s: /%s/%s was removed in the guest", STEP, STORE_DIR, name)
            self.store_walked.append(name)

    def _add(self, rel: str, path: Path, st: os.stat_result) -> None:
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        mtime = None if st.st_mtime_ns <= self.until_ns else int(st.st_mtime)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            self.entries.append((Entry(rel, "dir", mode, uid, gid, mtime=mtime), "guest"))
            return
        if st.st_nlink > 1:
            # Hard links made in the guest (prepare's tree has none) stay hard links.
            key = (st.st_dev, st.st_ino)
            if key in self.first_name:
                link = self.first_name[key]
                self.entries.append(
                    (Entry(rel, "hardlink", mode, uid, gid, link=link, mtime=mtime), "guest")
                )
                return
            self.first_name[key] = rel
        if fmt == stat.S_IFLNK:
            target = os.readlink(path)
            entry = Entry(rel, "symlink", mode, uid, gid, link=target,
                          size=len(target.encode()), mtime=mtime)
            self.entries.append((entry, "guest"))
        elif fmt == stat.S_IFREG:
            self._add_file(rel, path, st, mtime)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            kind: Kind = "chardev" if fmt == stat.S_IFCHR else "blockdev"
            device = (os.major(st.st_rdev), os.minor(st.st_rdev))
            self.entries.append((Entry(rel, kind, mode, uid, gid, device=device, mtime=mtime),
                                 "guest"))
        elif fmt == stat.S_IFIFO:
            self.entries.append((Entry(rel, "fifo", mode, uid, gid, mtime=mtime), "guest"))
        else:
            # A socket is only meaningful while its server runs, and tar (mke2fs' input)
            # cannot hold one.
            raise StepError(
                STEP,
                f"/{rel} is a socket, which an image cannot hold; remove it in the "
                "activation or bootloader installer that made it",
            )

    def _add_file(self, rel: str, path: Path, st: os.stat_result, mtime: int | None) -> None:
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        before = self.prepared.get(rel)
        if (
            before is not None
            and before.kind == "file"
            and before.size == st.st_size
            and st.st_mtime_ns <= self.until_ns
            # Only the inode changed (chown, chmod): the bytes are prepare's unless the
            # guest wrote and reset the mtime, which the comparison catches.
            and (st.st_ctime_ns <= self.until_ns or _same_bytes(path, before))
        ):
            entry = Entry(rel, "file", mode, uid, gid, size=st.st_size)
            self.entries.append((entry, "prepare"))
            return
        name = f"{self.copied:06d}"
        try:
            shutil.copyfile(path, self.files_dir / name)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StepError(
                    STEP,
                    f"no room in the build directory for /{rel} ({st.st_size} bytes), a file "
                    "the guest wrote; free space where the build runs",
                ) from exc
            raise
        self.copied += 1
        self.copied_bytes += st.st_size
        entry = Entry(rel, "file", mode, uid, gid, source=f"{self.files_rel}/{name}",
                      size=st.st_size, mtime=mtime)
        self.entries.append((entry, "guest"))


def record_changes(mount: Path, handoff: Handoff, xchg: Path) -> GuestRecord:
    return Recorder(mount, handoff, xchg).record()

"""btrfs, xfs, erofs and squashfs root filesystems, made without root.

None of their tools writes at an offset inside a file, so each is made in a scratch
file next to the target and copied into the root partition with its holes kept (with
no partition table, straight into the target).

- btrfs: `mkfs.btrfs --rootdir DIR` reads a directory with nftw, which fakeroot cannot
  intercept (glibc's internal stat calls). The tree is materialized as the build user
  and mkfs.btrfs runs in a user namespace where that user is root
  (`unshare --map-root-user`), so every file comes out owned by root. Other owners
  cannot be mapped without root or /etc/subuid, which a Nix build does not have: an
  entry owned by anyone else is an error naming it.
- xfs: `mkfs.xfs -p PROTOFILE` takes every owner and mode explicitly and reads file
  bodies from their sources (no copy). The protofile's mode field has no sticky bit,
  so xfs_db sets it afterwards; names and link targets a protofile cannot hold are
  written as placeholders and given their bytes afterwards (make_disk_image.xfsnames).
- erofs, squashfs: read-only store images (onlyNixStore), from a materialized tree,
  every file owned by root, every time fixed when deterministic.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.models import MIB, DiskPlan, Entry
from make_disk_image.process import CommandError, StepError
from make_disk_image.utils import copy_data_ranges
from make_disk_image.xfsnames import write_back
from make_disk_image.xfsproto import write_protofile

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
                shutil.copyfile(entry.source, path)
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


def check_owners(entries: Sequence[Entry], *, step: str) -> None:
    """btrfs: only root can own what an unprivileged build writes."""
    for entry in entries:
        if entry.uid or entry.gid:
            raise StepError(
                step,
                f"/{entry.path} is owned by {entry.uid}:{entry.gid}, but fsType btrfs is "
                "made in a user namespace where only root can own files (mkfs.btrfs "
                "--rootdir copies owners from the files it reads); give it to root in "
                "`contents` (user/group), or use fsType ext4 or xfs",
            )


def _too_small(step: str, plan: DiskPlan, exc: CommandError, words: Sequence[str]) -> None:
    text = exc.stderr.lower()
    if any(w in text for w in words):
        raise StepError(
            step,
            f"the root filesystem ({plan.root_size // MIB} MiB) is too small for the "
            f'closure and contents; raise diskSize, or use diskSize = "auto" '
            f"({exc.stderr.strip().splitlines()[-1]})",
        ) from exc


def make_btrfs(scratch: Path, plan: DiskPlan, entries: Sequence[Entry], *, uuid: str | None,
               step: str, shrink: bool = False) -> None:
    check_owners(entries, step=step)
    with tempfile.TemporaryDirectory(prefix="btrfs-root-", dir=scratch.parent) as tmp:
        tree = Path(tmp) / "root"
        try:
            started = time.monotonic()
            materialize(entries, tree, step=step, fs_type="btrfs")
            logger.info("[%s] the tree for mkfs.btrfs --rootdir, copied in %.1f s", step,
                        time.monotonic() - started)
            args: list[str | Path] = ["unshare", "--map-root-user", "mkfs.btrfs", "-f", "-q",
                                      "-L", plan.label, "--rootdir", tree]
            if uuid:
                args += ["-U", uuid]
            if shrink:
                args.append("--shrink")
            try:
                process.run([*args, scratch], step=step)
            except CommandError as exc:
                _too_small(step, plan, exc, ("no space", "enospc", "too small"))
                if "unshare" in exc.stderr and "operation not permitted" in exc.stderr.lower():
                    raise StepError(
                        step,
                        "cannot make a user namespace (unshare --map-root-user), which "
                        "fsType btrfs needs without root; allow unprivileged user "
                        "namespaces (sysctl kernel.unprivileged_userns_clone=1) or use "
                        "fsType ext4 or xfs",
                    ) from exc
                raise
        finally:
            remove_tree(tree)


def make_xfs(scratch: Path, plan: DiskPlan, entries: Sequence[Entry], *, uuid: str | None,
             deterministic: bool, step: str) -> None:
    with tempfile.TemporaryDirectory(prefix="xfs-proto-", dir=scratch.parent) as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        proto = Path(tmp) / "protofile"
        sticky, renames = write_protofile(entries, proto, data_dir, step=step)
        args: list[str | Path] = ["mkfs.xfs", "-f", "-q", "-L", plan.label, "-p", proto]
        if uuid:
            args += ["-m", f"uuid={uuid}"]
        # Newer xfsprogs (>= 6.8) read these for fixed inode times and a fixed UUID;
        # 6.1 ignores them.
        env = {"SOURCE_DATE_EPOCH": str(FIXED_TIME), "DETERMINISTIC_SEED": "1"} \
            if deterministic else {}
        try:
            process.run([*args, scratch], step=step, env=env)
        except CommandError as exc:
            _too_small(step, plan, exc, ("no space", "enospc", "too small", "size"))
            raise
    # Names and link targets the protofile held as placeholders.
    write_back(scratch, renames, step=f"{step}: names")
    for entry in sticky:
        # The protofile wrote the mode without its sticky bit.
        fmt = stat.S_IFMT({"dir": stat.S_IFDIR, "file": stat.S_IFREG, "fifo": stat.S_IFIFO}
                          .get(entry.kind, stat.S_IFREG))
        process.run(["xfs_db", "-x", "-c", f"path /{entry.path}", "-c",
                     f"write core.mode 0{fmt | (entry.mode & 0o7777):o}", scratch],
                    step=f"{step}: sticky bit")


def make_erofs(dest: Path, plan: DiskPlan, tree: Path, *, uuid: str | None,
               deterministic: bool, step: str) -> None:
    args: list[str | Path] = ["mkfs.erofs", "--all-root", "-x", "-1", "--quiet"]
    if deterministic:
        args.append(f"-T{FIXED_TIME}")
    if uuid:
        args.append(f"-U{uuid}")
    process.run([*args, dest, tree], step=step)


def make_squashfs(dest: Path, sources: Sequence[Path], *, root_mode: int, deterministic: bool,
                  step: str, keep_as_directory: bool = False, links: bool = True) -> None:
    """mksquashfs of `sources`, each placed at the image's root under its own name.

    `links` false: files the sources hard-link are stored as separate files (the store
    itself is read: its links are the builder's, e.g. `nix-store --optimise`'s).
    """
    args: list[str | Path] = ["mksquashfs", *sources, dest, "-noappend", "-all-root",
                              "-no-xattrs", "-no-progress", "-quiet",
                              "-root-mode", f"{root_mode:o}",
                              "-processors", str(os.cpu_count() or 1)]
    if keep_as_directory:
        # One source directory would otherwise become the root itself.
        args.append("-keep-as-directory")
    if not links:
        args.append("-no-hardlinks")
    # SOURCE_DATE_EPOCH, not -mkfs-time/-all-time: a Nix build sets it already, and
    # mksquashfs refuses both at once. It is the creation time, and every later file
    # time is clamped to it.
    env = {"SOURCE_DATE_EPOCH": str(FIXED_TIME)} if deterministic else {}
    process.run(args, step=step, env=env)


def top_sources(entries: Sequence[Entry]) -> list[Path] | None:
    """The host paths the root's children were copied from whole (a store image:
    onlyNixStore), found from their files' sources; None when the tree needs
    materializing (a child with no file whose source names it)."""
    found: dict[str, Path] = {}
    if any(e.kind == "hardlink" for e in entries):
        return None  # `deduplicate`'s links are the tree's, not the store's
    for entry in entries:
        if entry.kind != "file" or entry.source is None or not entry.path:
            continue
        top, _, rest = entry.path.partition("/")
        depth = rest.count("/") + 1 if rest else 0
        if len(entry.source.parents) <= depth:
            return None
        origin = entry.source.parents[depth - 1] if depth else entry.source
        if origin.name != top or found.setdefault(top, origin) != origin:
            return None
    tops = [e.path for e in entries if e.path and "/" not in e.path]
    if any(top not in found for top in tops):
        return None
    return [found[top] for top in tops]


def make_read_only(target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                   uuid: str | None, deterministic: bool, step: str) -> None:
    """erofs or squashfs as the whole of `target`; a fixed diskSize pads it."""
    fs = FILESYSTEMS[plan.fs_type]
    target.unlink(missing_ok=True)
    direct = top_sources(entries) if fs.maker == "squashfs" else None
    if direct is not None:
        # mksquashfs reads the store paths themselves: no copy (erofs-utils 1.5 takes
        # one directory only, so erofs needs the materialized tree).
        make_squashfs(target, direct, root_mode=entries[0].mode, deterministic=deterministic,
                      step=step, keep_as_directory=len(direct) == 1, links=False)
    else:
        with tempfile.TemporaryDirectory(prefix=f"{fs.name}-root-", dir=target.parent) as tmp:
            tree = Path(tmp) / "root"
            try:
                materialize(entries, tree, step=step, fs_type=fs.name)
                if fs.maker == "erofs":
                    make_erofs(target, plan, tree, uuid=uuid, deterministic=deterministic,
                               step=step)
                else:
                    make_squashfs(target, [tree], root_mode=entries[0].mode,
                                  deterministic=deterministic, step=step)
            finally:
                remove_tree(tree)
    made = target.stat().st_size
    if plan.size_source == "diskSize":
        if made > plan.disk_size:
            target.unlink()
            raise StepError(
                step,
                f"the {fs.name} image is {made} bytes ({-(-made // MIB)} MiB), more than "
                f"diskSize {plan.disk_size // MIB} MiB; raise diskSize or use "
                'diskSize = "auto"',
            )
        with target.open("r+b") as fh:
            fh.truncate(plan.disk_size)


def make_writable(target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                  uuid: str | None, deterministic: bool, step: str) -> None:
    """btrfs or xfs into the plan's root range of `target` (its size is fixed)."""
    started = time.monotonic()
    fs = FILESYSTEMS[plan.fs_type]
    if plan.root_size < fs.min_size:
        raise StepError(
            step,
            f"the root filesystem would be {plan.root_size // MIB} MiB, but {fs.tool} "
            f"needs at least {fs.min_size // MIB} MiB; raise diskSize or use "
            'diskSize = "auto"',
        )
    direct = plan.table is None
    scratch = target if direct else target.with_name(f"{target.name}.{fs.name}")
    if not direct:
        scratch.unlink(missing_ok=True)
        with scratch.open("wb") as fh:
            fh.truncate(plan.root_size)
    try:
        if fs.maker == "btrfs":
            make_btrfs(scratch, plan, entries, uuid=uuid, step=step)
        else:
            make_xfs(scratch, plan, entries, uuid=uuid, deterministic=deterministic,
                     step=step)
        if not direct:
            copied_at = time.monotonic()
            copied = copy_data_ranges(scratch, target, [(0, plan.root_size)], step=step,
                                      dest_offset=plan.root_offset)
            logger.info("[%s] %d bytes of the filesystem copied into the partition in %.1f s",
                        step, copied, time.monotonic() - copied_at)
    finally:
        if not direct:
            scratch.unlink(missing_ok=True)
    logger.info("[%s] %s took %.1f s", step, fs.tool, time.monotonic() - started)


def shrunk_btrfs_size(work: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                      trial_size: int, step: str) -> int:
    """Bytes of the smallest btrfs holding `entries`, for "minimal": mkfs.btrfs --shrink
    into a sparse file of `trial_size` bytes truncates it to the filesystem's end."""
    scratch = work / "minimal.btrfs"
    with scratch.open("wb") as fh:
        fh.truncate(max(trial_size, 1 << 30))
    try:
        make_btrfs(scratch, plan, entries, uuid=None, step=step, shrink=True)
        return scratch.stat().st_size
    finally:
        scratch.unlink(missing_ok=True)

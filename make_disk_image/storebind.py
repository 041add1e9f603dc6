"""The closure in the build VM without a copy: each store path bound over its mount point.

prepare writes the build VM's root filesystem without the store's contents: every store
path is an empty directory (or an empty file) there, so the filesystem is small and
made in constant time whatever the closure's size. The guest binds the store path the
VM already sees (runInLinuxVM and the engine's runner share the builder's store at
/nix/store) over each of them. /nix/store itself stays a directory of the image's own
filesystem, so what the bootloader installers ask of it holds: `df /nix/store` names
the image's root device and its UUID (GRUB's search line), and /boot and /nix/store
share a device (no kernel copies into /boot). Before the guest records what changed,
the bindings go away and the mount points are again prepare's untouched inodes.

The bindings are made by the mount(2) system call through ctypes: a closure has
hundreds to thousands of store paths, and a `mount` process for each costs tens of
milliseconds under TCG.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from make_disk_image.handoff import STORE_DIR
from make_disk_image.process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "guest: bind the store paths"
# <sys/mount.h>
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True)


def _fail(call: str, path: Path, step: str = STEP) -> StepError:
    err = ctypes.get_errno()
    name = errno.errorcode.get(err, str(err))
    return StepError(step, f"{call} {path}: {os.strerror(err)} ({name})")


# statvfs' f_flag bits a read-only remount must repeat: in a user namespace the flags of
# a mount from a more privileged one are locked, and a remount that drops one fails.
_KEPT_FLAGS = {os.ST_NOSUID: 0x2, os.ST_NODEV: 0x4, os.ST_NOEXEC: 0x8,
               os.ST_NOATIME: 0x400, os.ST_NODIRATIME: 0x800, os.ST_RELATIME: 1 << 21}


def _kept_flags(target: Path) -> int:
    found = os.statvfs(target).f_flag
    return sum(ms for st, ms in _KEPT_FLAGS.items() if found & st)


def bind_read_only(pairs: Sequence[tuple[Path, Path]], *, step: str = STEP) -> list[Path]:
    """Bind each (source, target) read-only, recursively; the targets bound, or none on
    failure. Recursive: a store path that is a mount of its own (a Nix sandbox's) may
    hold submounts, and a user namespace refuses to bind it without them."""
    libc = _libc()
    bound: list[Path] = []
    try:
        for source, target in pairs:
            if libc.mount(bytes(source), bytes(target), None, MS_BIND | MS_REC, None) != 0:
                raise _fail("bind", target, step)
            bound.append(target)
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | _kept_flags(target)
            if libc.mount(None, bytes(target), None, flags, None) != 0:
                raise _fail("read-only remount of", target, step)
    except BaseException:
        unbind(bound)
        raise
    return bound


def bind_store_paths(
    names: Sequence[str], root: Path, store: Path = Path("/") / STORE_DIR
) -> list[Path]:
    """Bind store/NAME read-only over root/nix/store/NAME for each name; the targets bound.

    A store path that is a symlink needs no binding: prepare wrote the link itself.
    """
    started = time.monotonic()
    pairs: list[tuple[Path, Path]] = []
    for name in names:
        source = store / name
        if source.is_symlink():
            continue
        if not source.exists():
            raise StepError(
                STEP,
                f"{source} is not in the build VM's store; the VM must share the "
                "builder's store (runInLinuxVM does) at /nix/store",
            )
        pairs.append((source, root / STORE_DIR / name))
    # The guest writes to the image, never to the builder's store.
    bound = bind_read_only(pairs)
    logger.info("%s: %d bound in %.2f s", STEP, len(bound), time.monotonic() - started)
    return bound


def unbind(targets: Sequence[Path]) -> None:
    """Detach the bindings, last first, so that the mount points are the image's again."""
    libc = _libc()
    failed: list[Path] = []
    for target in reversed(targets):
        if libc.umount2(bytes(target), MNT_DETACH) != 0:
            failed.append(target)
    if failed:
        raise StepError(
            "guest: unbind the store paths",
            f"{len(failed)} store paths stayed bound, first {failed[0]}: "
            f"{os.strerror(ctypes.get_errno())}",
        )

"""The VM runner's initramfs: a newc cpio of busybox (with the interpreter and libraries a
dynamically linked one loads), modules and an init script."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from .cache import cache_dir, write_atomically
from .elfdeps import runtime_files
from .guestinit import GUEST_CONTROL, GUEST_ROOT
from .kernel import Kernel, module_bytes, module_paths, plain_module_name
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"

# Bump when the initramfs layout changes, so cached images are rebuilt.
_INITRAMFS_FORMAT = "2"


class NewcArchive:
    """A minimal writer of the "newc" cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def is_static_elf(path: Path) -> bool:
    """Whether `path` is a 64-bit ELF without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:5] != b"\x7fELF\x02":
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def check_busybox(busybox: Path) -> list[Path]:
    """The files busybox needs beside itself in the initramfs: none for a static one, its
    interpreter and libraries for a dynamically linked one (make_disk_image/elfdeps.py)."""
    if not busybox.is_file():
        raise StepError(STEP, f"busybox {busybox} is not a file")
    return runtime_files(busybox)


def build_initramfs(
    init_script: str, *, kernel: Kernel, modules: Sequence[str], busybox: Path
) -> Path:
    """Return a gzip'd newc cpio with `busybox`, `modules` (+ deps) and `init_script`.

    Modules sit under /lib/modules/KVER/ in load order, listed in /lib/modules/load-order
    (one file name a line), so an init script can `insmod` them in sequence. The archive
    is cached by a hash of all its inputs. A dynamically linked busybox's interpreter and
    libraries go in at their own absolute paths.
    """
    runtime = check_busybox(busybox)
    busybox_bytes = busybox.read_bytes()
    modules_in_order = module_paths(kernel, modules)
    digest = hashlib.sha256()
    for label, data in (
        ("format", _INITRAMFS_FORMAT.encode()),
        ("init", init_script.encode()),
        ("kernel", kernel.version.encode()),
        ("busybox", busybox_bytes),
        *((f"runtime {p}", p.read_bytes()) for p in runtime),
        *((f"module {p.relative_to(kernel.modules)}", p.read_bytes()) for p in modules_in_order),
    ):
        digest.update(b"%d:%s:%d:" % (len(label), label.encode(), len(data)))
        digest.update(data)
    target = cache_dir() / f"initramfs-{kernel.version}-{digest.hexdigest()[:32]}.cpio.gz"
    if target.is_file():
        logger.debug("initramfs cached at %s", target)
        return target
    logger.info("[%s] building initramfs %s", STEP, target)
    archive = _archive(init_script, kernel.version, busybox_bytes, modules_in_order, runtime)
    # mtime=0: the same inputs give the same bytes.
    write_atomically(target, gzip.compress(archive, compresslevel=6, mtime=0))
    return target


def _archive(
    init_script: str,
    kernel_version: str,
    busybox_bytes: bytes,
    modules_in_order: Sequence[Path],
    runtime: Sequence[Path],
) -> bytes:
    archive = NewcArchive()
    for directory in (
        "bin", "dev", "proc", "sys", "lib", "lib/modules", f"lib/modules/{kernel_version}",
        GUEST_ROOT[1:], GUEST_CONTROL[1:],
    ):  # fmt: skip
        archive.directory(directory)
    archive.file("bin/busybox", busybox_bytes, 0o755)
    made: set[str] = set()
    for path in runtime:
        for parent in reversed(path.parents[:-1]):
            if str(parent) not in made:
                archive.directory(str(parent)[1:])
                made.add(str(parent))
        archive.file(str(path)[1:], path.read_bytes(), 0o755)
    for applet in busybox_applets(busybox_bytes):
        if applet != "busybox" and "/" not in applet:
            archive.symlink(f"bin/{applet}", "busybox")
    order: list[str] = []
    for path in modules_in_order:
        name = plain_module_name(path)
        archive.file(f"lib/modules/{kernel_version}/{name}", module_bytes(path))
        order.append(name)
    archive.file("lib/modules/load-order", "".join(f"{n}\n" for n in order).encode())
    archive.file("init", init_script.encode(), 0o755)
    return archive.finish()


def busybox_applets(busybox_bytes: bytes) -> list[str]:
    """The applet names a busybox binary holds, read from the binary itself.

    `busybox --list` would need the binary to run here, which one of another
    architecture does not. The names are stored as one NUL-separated, sorted block
    that starts with "[\0[[\0" (the test applets sort first).
    """
    start = busybox_bytes.find(b"[\0[[\0")
    if start < 0:
        raise StepError(STEP, "cannot find the applet list in the busybox binary")
    names: list[str] = []
    for raw in busybox_bytes[start:].split(b"\0"):
        if not raw or not re.fullmatch(rb"[\x21-\x7e]+", raw):
            break
        names.append(raw.decode())
    return names

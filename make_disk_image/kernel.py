"""The guest kernel: its version order, its PVH entry, its modules in load order.

Under TCG every second of boot counts: qemu can boot an x86 kernel's plain ELF image
through its PVH entry, skipping the bzImage's own decompressor; the modules an
initramfs loads must come in dependency order, which modprobe knows from modules.dep.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from . import process
from .cache import cache_dir, write_atomically
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order kernel versions numerically where they are numbers ("6.10" > "6.9")."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+~_]", version)
    )


def host_kernel(
    boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> tuple[Path, str]:
    """Return (kernel image, version) of the newest host kernel that has its modules."""
    candidates: list[tuple[Path, str]] = []
    for image in boot.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (modules_root / version / "modules.dep").is_file():
            candidates.append((image, version))
    if not candidates:
        raise StepError(
            STEP,
            f"no kernel found: need {boot}/vmlinuz-VERSION with modules in "
            f"{modules_root}/VERSION; install the Debian package linux-image-amd64",
        )
    image, version = max(candidates, key=lambda c: version_key(c[1]))
    if not os.access(image, os.R_OK):
        raise StepError(STEP, f"kernel image {image} is not readable by this user")
    return image, version


# The compressed payload inside a bzImage starts with one of these.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def pvh_kernel(image: Path, version: str) -> Path | None:
    """The uncompressed ELF kernel inside `image`, for qemu's PVH direct boot.

    Under TCG the bzImage's own decompressor takes ~3 s of every boot; qemu boots the
    plain vmlinux (with its PVH entry note) directly. The result is cached. None when the
    kernel has no PVH entry or its payload is in a format this cannot unpack.
    """
    config = image.parent / f"config-{version}"
    if not config.is_file() or "CONFIG_PVH=y\n" not in config.read_text(errors="replace"):
        return None
    data = image.read_bytes()
    target = cache_dir() / f"vmlinux-{version}-{hashlib.sha256(data).hexdigest()[:32]}"
    if target.is_file():
        return target
    elf: bytes | None = None
    unpackers: tuple[tuple[bytes, Callable[[bytes], bytes] | None], ...] = (
        (_XZ_MAGIC, _unxz),
        (_GZIP_MAGIC, _gunzip),
        (_ZSTD_MAGIC, None),
    )
    for magic, unpack in unpackers:
        offset = data.find(magic)
        if offset < 0:
            continue
        if unpack is None:
            if shutil.which("zstd") is None:
                return None
            # zstd exits 1 on the bzImage's tail after the frame; what it wrote before
            # is still the whole kernel (the ELF check below says whether it is).
            elf = process.run(
                ["zstd", "-dc"], input=data[offset:], step=STEP, ok_returncodes=(0, 1)
            ).stdout
        else:
            try:
                elf = unpack(data[offset:])
            except (lzma.LZMAError, zlib.error):
                continue
        if elf.startswith(b"\x7fELF"):
            break
        elf = None
    if elf is None:
        logger.debug("no ELF kernel found inside %s; booting it as a bzImage", image)
        return None
    write_atomically(target, elf)
    return target


def _unxz(data: bytes) -> bytes:
    # A decompressor object stops at the end of the stream; the bzImage's tail follows.
    return lzma.LZMADecompressor().decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def module_paths(kernel_version: str, modules: Sequence[str], root: Path = Path("/")) -> list[Path]:
    """The .ko files for `modules` and their dependencies, in load order, each once.

    `root`: the tree whose /lib/modules holds the kernel's (a guest root's, when the
    kernel is of another architecture: modprobe only reads its modules.dep).
    """
    ordered: list[Path] = []
    seen: set[Path] = set()
    for module in modules:
        proc = process.run(
            [system_tool("modprobe"), *(["-d", str(root)] if root != Path("/") else []),
             "-S", kernel_version, "--show-depends", module],
            step=STEP,
        )  # fmt: skip
        for line in proc.stdout.decode().splitlines():
            words = line.split()
            # "builtin NAME" lines need nothing loaded; "insmod PATH [params]" do.
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                if path not in seen:
                    seen.add(path)
                    ordered.append(path)
    return ordered


def module_bytes(path: Path) -> bytes:
    """A module's plain ELF bytes; busybox insmod cannot read compressed modules."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        return process.run(["zstd", "-dc", path], step=STEP).stdout
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def plain_module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name


def system_tool(name: str) -> str:
    """`name` from PATH, else from the system directories a Nix builder's PATH lacks."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    return found or name

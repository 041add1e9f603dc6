"""The guest's kernel, given as paths: its image, its modules, its PVH entry.

Under TCG every second of boot counts: qemu can boot an x86 kernel's plain ELF image
through its PVH entry, skipping the bzImage's own decompressor; the modules an
initramfs loads must come in dependency order, which modprobe knows from modules.dep.
Where the kernel comes from is the caller's business (a Nix kernel package, or
make_disk_image.hostkernel on a host without Nix).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import process
from .cache import cache_dir, write_atomically
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"


@dataclass(frozen=True)
class Kernel:
    """A kernel image and the directory of its modules.

    `modules` is the kernel's lib/modules/VERSION (it holds modules.dep): its name is the
    version the kernel reports, which modprobe needs.
    """

    image: Path
    modules: Path

    @property
    def version(self) -> str:
        return self.modules.name

    def check(self) -> None:
        """Refuse a kernel the runner cannot boot, before any slow work."""
        if not self.image.is_file():
            raise StepError(STEP, f"kernel image {self.image} is not a file")
        if not (self.modules / "modules.dep").is_file():
            raise StepError(
                STEP,
                f"kernel modules {self.modules} have no modules.dep: give the kernel's "
                "lib/modules/VERSION directory (depmod writes modules.dep)",
            )


# The compressed payload inside a bzImage starts with one of these.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Written in place of the ELF image when a kernel has none with a PVH entry.
_NO_PVH = b"no PVH entry\n"


def pvh_kernel(image: Path) -> Path | None:
    """The uncompressed ELF kernel inside `image`, for qemu's PVH direct boot.

    Under TCG the bzImage's own decompressor takes ~3 s of every boot; qemu boots the
    plain vmlinux (with its PVH entry note) directly. The result (also a "none") is
    cached by the image's hash. None when the kernel has no PVH entry or its payload is
    in a format this cannot unpack.
    """
    data = image.read_bytes()
    target = cache_dir() / f"vmlinux-{hashlib.sha256(data).hexdigest()[:32]}"
    if target.is_file():
        return None if target.stat().st_size == len(_NO_PVH) else target
    elf = _elf_inside(data)
    if elf is None or not has_pvh_entry(elf):
        logger.debug("no ELF kernel with a PVH entry inside %s; booting it as it is", image)
        write_atomically(target, _NO_PVH)
        return None
    write_atomically(target, elf)
    return target


def _elf_inside(data: bytes) -> bytes | None:
    """The first compressed payload of a bzImage that unpacks to an ELF file."""
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
                continue
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
            return elf
    return None


def _unxz(data: bytes) -> bytes:
    # A decompressor object stops at the end of the stream; the bzImage's tail follows.
    return lzma.LZMADecompressor().decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


# The ELF note that marks a kernel's PVH entry point: XEN_ELFNOTE_PHYS32_ENTRY of the
# "Xen" owner (Xen's public/elfnote.h); qemu refuses a plain ELF kernel without it.
_PVH_NOTE = (b"Xen\0", 18)
_PT_NOTE = 4


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a little-endian 64-bit ELF kernel carries the PVH entry note."""
    if elf[:6] != b"\x7fELF\x02\x01":
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        header = phoff + index * phentsize
        if struct.unpack_from("<I", elf, header)[0] != _PT_NOTE:
            continue
        offset, _, _, size = struct.unpack_from("<QQQQ", elf, header + 8)
        if _PVH_NOTE in _notes(elf[offset : offset + size]):
            return True
    return False


def _notes(segment: bytes) -> list[tuple[bytes, int]]:
    """(owner name with its NUL, type) of each note in a PT_NOTE segment."""
    notes: list[tuple[bytes, int]] = []
    offset = 0
    while offset + 12 <= len(segment):
        namesz, descsz, kind = struct.unpack_from("<III", segment, offset)
        name = segment[offset + 12 : offset + 12 + namesz]
        notes.append((name, kind))
        offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return notes


def module_paths(kernel: Kernel, modules: Sequence[str]) -> list[Path]:
    """The .ko files for `modules` and their dependencies, in load order, each once.

    modprobe reads only the kernel's modules.dep (a kernel of another architecture is
    fine); it wants it under ROOT/lib/modules/VERSION, so a link makes that tree.
    """
    ordered: list[Path] = []
    seen: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="mdi-modules-") as tree:
        linked = Path(tree) / "lib/modules" / kernel.version
        linked.parent.mkdir(parents=True)
        linked.symlink_to(kernel.modules.resolve())
        for module in modules:
            proc = process.run(
                [tool("modprobe"), "-d", tree, "-S", kernel.version, "--show-depends", module],
                step=STEP,
            )
            for line in proc.stdout.decode().splitlines():
                words = line.split()
                # "builtin NAME" lines need nothing loaded; "insmod PATH [params]" do.
                if len(words) >= 2 and words[0] == "insmod":
                    path = kernel.modules / Path(words[1]).relative_to(linked)
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


def tool(name: str) -> str:
    """`name` as found on PATH; the caller's PATH decides which qemu and modprobe run."""
    found = shutil.which(name)
    if found is None:
        raise StepError(STEP, f"{name} not found on PATH")
    return found

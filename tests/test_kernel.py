"""make_disk_image.kernel: a kernel given as paths, its PVH entry, its modules' order."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from make_disk_image import kernel
from make_disk_image.hostkernel import installed_kernel
from make_disk_image.process import StepError


def _elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """A little-endian ELF64 with one PT_NOTE segment holding `notes` (owner, type)."""
    segment = b""
    for name, kind in notes:
        desc = b"\0" * 4
        padded = name + b"\0" * (-len(name) % 4)
        segment += struct.pack("<III", len(name), len(desc), kind) + padded + desc
    phoff, phentsize = 64, 56
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    offset = phoff + phentsize
    program = struct.pack("<IIQQQQQQ", 4, 4, offset, 0, 0, len(segment), len(segment), 4)
    return header + program + segment


def test_pvh_entry_is_the_xen_phys32_note() -> None:
    assert kernel.has_pvh_entry(_elf_with_notes([(b"GNU\0", 3), (b"Xen\0", 18)]))
    assert not kernel.has_pvh_entry(_elf_with_notes([(b"Xen\0", 17), (b"Linux\0", 18)]))
    assert not kernel.has_pvh_entry(b"MZ not an ELF file")


def test_pvh_kernel_is_the_elf_inside_the_bzimage_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    image = installed_kernel().image
    elf = kernel.pvh_kernel(image)
    assert elf is not None
    assert elf.read_bytes()[:4] == b"\x7fELF"
    assert elf.stat().st_size > image.stat().st_size
    assert kernel.pvh_kernel(image) == elf


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (run .ci/setup)")
def test_pvh_kernel_unpacks_a_zstd_payload_followed_by_the_bzimage_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian 13's kernel is zstd-compressed; zstd exits 1 on the bytes after the frame
    ("unknown header") but has written the whole kernel by then."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elf = _elf_with_notes([(b"Xen\0", 18)]) + os.urandom(4096) + bytes(60000)
    payload = subprocess.run(["zstd", "-c"], input=elf, capture_output=True, check=True).stdout
    image = tmp_path / "vmlinuz-9.9"
    image.write_bytes(b"MZ bzImage setup " + bytes(500) + payload + b"tail after the frame" * 9)
    unpacked = kernel.pvh_kernel(image)
    assert unpacked is not None and unpacked.read_bytes() == elf


def test_a_kernel_without_pvh_entry_is_booted_as_it_is_and_that_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "vmlinuz"
    no_pvh = _elf_with_notes([(b"Linux\0", 1)]) + bytes(4096)
    image.write_bytes(b"MZ" + bytes(500) + gzip.compress(no_pvh))
    assert kernel.pvh_kernel(image) is None
    cached = list((tmp_path / "cache" / "make-disk-image").glob("vmlinux-*"))
    assert len(cached) == 1
    assert kernel.pvh_kernel(image) is None


def test_modules_come_in_dependency_order_from_any_directory(tmp_path: Path) -> None:
    host = installed_kernel()
    # The kernel's modules directory seen through another path: not under lib/modules.
    given = kernel.Kernel(host.image, tmp_path / host.version)
    given.modules.symlink_to(host.modules)
    paths = kernel.module_paths(given, ["ext4", "vfat"])
    names = [kernel.plain_module_name(p) for p in paths]
    assert names.index("jbd2.ko") < names.index("ext4.ko")
    assert names.index("fat.ko") < names.index("vfat.ko")
    assert all(p.is_relative_to(given.modules) and p.is_file() for p in paths)


def test_a_kernel_is_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="is not a file"):
        kernel.Kernel(tmp_path / "Image", tmp_path).check()
    (tmp_path / "Image").write_bytes(b"kernel")
    with pytest.raises(StepError, match="modules.dep"):
        kernel.Kernel(tmp_path / "Image", tmp_path).check()


def test_tools_come_from_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StepError, match="modprobe not found on PATH"):
        kernel.tool("modprobe")

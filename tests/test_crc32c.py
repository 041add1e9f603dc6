"""crc32c: CRC-32C and btrfs' name hash, against recorded facts (the standard check
value, and DIR_ITEM offsets `btrfs inspect-internal dump-tree` showed for an image
mkfs.btrfs 6.14 made)."""

from __future__ import annotations

import ctypes.util
import struct
from pathlib import Path

import pytest

from make_disk_image.filesystems import crc32c

CRC = crc32c.provider()
pytestmark = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")


def test_standard_check_value_and_mkfs_name_hashes() -> None:
    assert CRC is not None
    assert CRC.checksum(b"123456789") == 0xE3069283
    # mkfs.btrfs' root tree: (ROOT_TREE_DIR DIR_ITEM 2378154706) name: default;
    # its fs tree: (256 DIR_ITEM 3427024844) name: a, (256 DIR_ITEM 4189400016) name: d.
    assert CRC.name_hash(b"default") == 2378154706
    assert CRC.name_hash(b"a") == 3427024844
    assert CRC.name_hash(b"d") == 4189400016


def test_sector_sums_are_each_sectors_checksum() -> None:
    assert CRC is not None
    data = bytes(range(256)) * 16 + bytes(4096) + b"\xff" * 4096
    sums = struct.unpack("<3I", CRC.sector_sums(data, 4096))
    assert sums == tuple(CRC.checksum(data[i : i + 4096]) for i in range(0, 12288, 4096))
    assert sums[1] != sums[2]


def test_a_library_that_does_not_load_falls_back_to_the_loaders(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(crc32c.LIBEXT2FS_ENV, "/nonexistent/libext2fs.so.2")
    found = ctypes.util.find_library("ext2fs")
    assert (crc32c._libext2fs() is not None) == (found is not None)
    # As in a Nix build (nixpkgs' Python finds no library by name): mke2fs's own.
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    traced = crc32c.traced_libext2fs()
    assert traced is None or Path(traced).is_file()
    assert (crc32c._libext2fs() is not None) == (traced is not None)
    monkeypatch.setattr(crc32c, "traced_libext2fs", lambda: None)
    assert crc32c._libext2fs() is None


def test_mke2fs_on_path_names_its_libext2fs() -> None:
    traced = crc32c.traced_libext2fs()
    assert traced is not None and "libext2fs.so" in traced  # Debian's e2fsprogs here

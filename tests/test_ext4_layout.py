"""ext4_layout: the records, parsed back field by field; the superblock of real mke2fs
filesystems, and the features the filler refuses."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from make_disk_image.filesystems import ext4_layout as layout
from make_disk_image.filesystems.ext4_layout import InodeFields, UnsupportedFilesystem


def superblock(tmp_path: Path, *options: str, fs_type: str = "ext4") -> bytes:
    image = tmp_path / "fs.img"
    image.unlink(missing_ok=True)
    with image.open("wb") as fh:
        fh.truncate(256 << 20)
    subprocess.run(["mke2fs", "-q", "-t", fs_type, "-b", "4096", *options, image], check=True,
                   env={**os.environ, "SOURCE_DATE_EPOCH": "1"})
    with image.open("rb") as fh:
        fh.seek(layout.SUPERBLOCK_OFFSET)
        return fh.read(layout.SUPERBLOCK_SIZE)


def test_geometry_of_a_real_filesystem(tmp_path: Path) -> None:
    geo = layout.parse_superblock(superblock(tmp_path, "-O", "^metadata_csum"))
    assert (geo.block_size, geo.blocks_count, geo.groups) == (4096, 65536, 2)
    assert (geo.desc_size, geo.inode_size, geo.first_data_block) == (64, 256, 0)
    assert geo.free_blocks < geo.blocks_count and geo.free_inodes == geo.inodes_count - 12
    assert geo.extents and geo.dir_nlink


@pytest.mark.parametrize("fs_type", ["ext2", "ext3"])
def test_geometry_without_extents(tmp_path: Path, fs_type: str) -> None:
    """ext2 and ext3 (mke2fs.conf's features): block maps, a link count per subdirectory."""
    geo = layout.parse_superblock(superblock(tmp_path, fs_type=fs_type))
    assert (geo.desc_size, geo.extents, geo.dir_nlink) == (32, False, False)


@pytest.mark.parametrize("options, named", [
    ((), "ro_compat features 0x400"),  # metadata_csum, mke2fs's default
    (("-O", "^metadata_csum,uninit_bg"), "ro_compat features 0x10"),
    (("-O", "^metadata_csum,quota"), "ro_compat features 0x100"),
    (("-O", "^metadata_csum,sparse_super2"), "sparse_super2"),
    (("-O", "^metadata_csum,^filetype"), "no filetype feature"),
])  # fmt: skip
def test_features_it_does_not_fill(tmp_path: Path, options: tuple[str, ...], named: str) -> None:
    with pytest.raises(UnsupportedFilesystem, match=named):
        layout.parse_superblock(superblock(tmp_path, *options))


def test_backup_groups() -> None:
    geo = layout.Geometry(4096, 32768 * 130, 0, 0, 32768, 8192, 256, 64, True, 0, 0)
    assert [g for g in range(130) if geo.has_super(g)] == [0, 1, 3, 5, 7, 9, 25, 27, 49, 81,
                                                           125]


def test_inode_fields() -> None:
    fields = InodeFields(mode=0o104755, uid=70000, gid=5, size=(5 << 32) + 7, links=3,
                         blocks=(1 << 29) + 1, flags=layout.EXTENTS_FL, block_map=b"m" * 60,
                         mtime=(1 << 32) + 10, crtime=1)
    raw = layout.pack_inode(fields, 256, 4096)
    assert len(raw) == 256
    mode, uid_lo, size_lo, atime, ctime, mtime = struct.unpack_from("<HHIIII", raw, 0)
    assert (mode, uid_lo, size_lo, atime, ctime, mtime) == (0o104755, 70000 & 0xFFFF, 7, 0, 0, 10)
    assert struct.unpack_from("<I", raw, 108)[0] == 5  # size high
    assert struct.unpack_from("<HH", raw, 24) == (5, 3)
    sectors = ((1 << 29) + 1) * 8
    assert struct.unpack_from("<I", raw, 28)[0] == sectors & 0xFFFFFFFF
    assert struct.unpack_from("<H", raw, 116)[0] == sectors >> 32
    assert struct.unpack_from("<H", raw, 120)[0] == 70000 >> 16
    assert raw[40:100] == b"m" * 60
    assert struct.unpack_from("<H", raw, 128)[0] == 32
    assert struct.unpack_from("<I", raw, 136)[0] == 1  # mtime's epoch bits: past 2106
    assert len(layout.pack_inode(fields, 128, 4096)) == 128


def test_times_past_2038() -> None:
    assert layout.encode_time(1) == (1, 0)
    assert layout.encode_time(1 << 31) == (1 << 31, 1)
    assert layout.encode_time(-1) == (0xFFFFFFFF, 0)


def test_directory_blocks_never_split_an_entry() -> None:
    names = [(f"n{i:04d}-{'x' * (i % 40)}".encode(), 100 + i, layout.FT_REG) for i in range(500)]
    blocks = layout.directory_blocks([(b".", 2, 2), (b"..", 2, 2), *names], 4096)
    found = []
    for block in blocks:
        at = 0
        while at < 4096:
            ino, rec_len, name_len, _ftype = struct.unpack_from("<IHBB", block, at)
            assert rec_len >= 8 + name_len and rec_len % 4 == 0
            found.append((block[at + 8 : at + 8 + name_len], ino))
            at += rec_len
        assert at == 4096
    assert found == [(b".", 2), (b"..", 2)] + [(n, i) for n, i, _ in names]


def test_extent_records() -> None:
    leaf = layout.extent_leaf([(0, (1 << 33) + 5, 7)], 4096)
    assert struct.unpack_from("<HHHH", leaf, 0) == (layout.EXTENT_MAGIC, 1, 340, 0)
    assert struct.unpack_from("<IHHI", leaf, 12) == (0, 7, 2, 5)
    index = layout.block_map_index([(0, 900), (340, 901)])
    assert struct.unpack_from("<HHHH", index, 0) == (layout.EXTENT_MAGIC, 2, 4, 1)
    in_inode = layout.block_map_extents([(0, 50, 3), (10, 60, 1)])
    assert layout.extents_in_block_map(in_inode) == [(50, 3), (60, 1)]
    with pytest.raises(UnsupportedFilesystem):
        layout.extents_in_block_map(index)


def test_device_numbers() -> None:
    assert struct.unpack_from("<II", layout.device_block_map(4, 1)) == (0x401, 0)
    new = struct.unpack_from("<II", layout.device_block_map(259, 70000))[1]
    assert (new & 0xFF) | ((new >> 12) & ~0xFF) == 70000 and (new >> 8) & 0xFFF == 259

"""The filesystem registry: every fsType's row is consistent with what its tools accept,
its module makes it, and no other module compares a filesystem's name."""

from __future__ import annotations

import shutil

import pytest

from make_disk_image.filesystems import FILESYSTEMS, needed_bytes
from make_disk_image.interface import FS_TYPES
from make_disk_image.models import FS_BLOCK, MIB


@pytest.mark.parametrize("name", list(FILESYSTEMS))
def test_every_filesystem_names_its_tool_and_it_is_installed(name: str) -> None:
    fs = FILESYSTEMS[name]
    assert fs.name == name
    program = fs.tool.split()[0]
    assert shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin"), program
    assert fs.determinism


def test_read_only_filesystems_are_the_store_image_ones() -> None:
    assert {n for n, fs in FILESYSTEMS.items() if fs.read_only} == {"erofs", "squashfs"}


def test_needed_bytes_has_a_floor_and_grows_with_the_tree() -> None:
    xfs, btrfs = FILESYSTEMS["xfs"], FILESYSTEMS["btrfs"]
    assert needed_bytes(xfs, 0, 1) == 300 * MIB
    assert needed_bytes(btrfs, 0, 1) == 160 * MIB + 16 * 1024
    big = 1 << 18  # 1 GiB of file blocks
    assert needed_bytes(btrfs, big, 0) == 2 * big * FS_BLOCK + 160 * MIB
    assert needed_bytes(xfs, big, 10) > big * FS_BLOCK


def test_every_row_is_made_by_the_module_interface_json_names() -> None:
    for name, fs in FILESYSTEMS.items():
        assert type(fs).__module__ == f"make_disk_image.filesystems.{FS_TYPES[name].module}"


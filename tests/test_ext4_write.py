"""ext4_write: extents merged up to ext4's longest,
and a source that shrinks while it is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from make_disk_image.filesystems import ext4_write
from make_disk_image.filesystems.ext4_write import _add_extent, file_reader


def test_extents_merge_when_contiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    extents: list[tuple[int, int, int]] = []
    _add_extent(extents, 0, 100, 4)
    _add_extent(extents, 4, 104, 2)  # continues both: merged
    _add_extent(extents, 8, 106, 1)  # a hole before it
    _add_extent(extents, 9, 200, 1)  # elsewhere on disk
    assert extents == [(0, 100, 6), (8, 106, 1), (9, 200, 1)]
    monkeypatch.setattr(ext4_write, "MAX_EXTENT_BLOCKS", 7)
    _add_extent(extents, 10, 201, 6)  # 7 blocks: merged
    _add_extent(extents, 16, 207, 1)  # 8 would be longer than an extent
    assert extents[-2:] == [(9, 200, 7), (16, 207, 1)]


def test_a_file_that_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        read = file_reader(fd)
        assert read(90, 10) == b"x" * 10
        with pytest.raises(OSError, match="shrank"):
            read(0, 200)
    finally:
        os.close(fd)

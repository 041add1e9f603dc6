"""data_writes: runs of data between blocks of zeros, and consecutive writes joined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from make_disk_image.filesystems import data_writes
from make_disk_image.filesystems.data_writes import GatheredWrites, nonzero_runs


def test_blocks_of_zeros_are_holes() -> None:
    data = b"a" * 16 + bytes(16) + bytes(7) + b"b" + bytes(8) + bytes(16)
    runs = [(first, bytes(view)) for first, view in nonzero_runs(data, 16)]
    assert runs == [(0, b"a" * 16), (2, bytes(7) + b"b" + bytes(8))]
    assert [first for first, _ in nonzero_runs(b"a" * 64, 16)] == [0]
    assert list(nonzero_runs(bytes(64), 16)) == []


def test_consecutive_writes_are_joined_and_a_gap_flushes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = os.pwrite

    def counted(fd: int, data: bytes | memoryview, at: int) -> int:
        calls.append((at, len(data)))
        return real(fd, data, at)

    monkeypatch.setattr(data_writes.os, "pwrite", counted)
    path = tmp_path / "image"
    path.write_bytes(bytes(64))
    fd = os.open(path, os.O_RDWR)
    try:
        writes = GatheredWrites(fd)
        writes.write(0, b"ab")
        writes.write(2, b"cd")  # joins the first
        writes.write(10, b"ef")  # a gap: the first two go out as one
        writes.flush()
    finally:
        os.close(fd)
    assert calls == [(0, 4), (10, 2)]
    assert path.read_bytes()[:12] == b"abcd" + bytes(6) + b"ef"

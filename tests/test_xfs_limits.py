"""The xfs writer past the limits it had: inodes past AG 0 once it is full, a directory
of more names than one level of hash index holds, a file of more extents than an
inode holds (an extent btree): xfs_repair -n clean, the kernel reads them back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from make_disk_image.filesystems import crc32c, xfs_fill
from make_disk_image.models import Entry

CRC = crc32c.provider()
pytestmark = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")
DIRS, PER_DIR = 45, 1000


def _xfs_db(image: Path, *commands: str) -> str:
    args = [arg for command in commands for arg in ("-c", command)]
    return subprocess.run(["xfs_db", "-r", *args, image], capture_output=True, text=True,
                          check=True).stdout


def _repaired(image: Path, *options: str | Path) -> None:
    repair = subprocess.run(["xfs_repair", "-n", "-f", *options, image], capture_output=True,
                            text=True)
    assert repair.returncode == 0, repair.stdout[-4000:] + repair.stderr[-2000:]


@contextmanager
def _mounted(source: Path | str, mnt: Path, options: str = "loop,ro") -> Iterator[Path]:
    """The kernel's read-only mount of `source` at `mnt` (made here)."""
    mnt.mkdir()
    subprocess.run(["mount", "-o", options, source, mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def _many_small(count_dirs: int, per_dir: int) -> list[Entry]:
    entries = [Entry("", "dir", 0o755)]
    for d in range(count_dirs):
        entries.append(Entry(f"d{d}", "dir", 0o755))
        # Mostly empty files: the inodes fill the filesystem, not their blocks.
        entries += [Entry(f"d{d}/f{i}", "file", 0o644,
                          data=f"{d}/{i}\n".encode() if i % 100 == 0 else b"")
                    for i in range(per_dir)]
    return entries


@pytest.fixture
def spilled(tmp_path: Path) -> Iterator[tuple[Path, list[Entry]]]:
    # 2 KiB inodes in mkfs' 4 AGs of 80 MiB: AG 0 holds some 40,000 of them, as 512-byte
    # ones in a 320 MiB root would some 160,000 (a tight diskSize, many small entries).
    assert CRC is not None
    image = tmp_path / "xfs.img"
    subprocess.run(["truncate", "-s", "320M", image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-i", "size=2048", image], check=True)
    entries = _many_small(DIRS, PER_DIR)
    xfs_fill.fill_xfs(image, 0, entries, crc=CRC)
    yield image, entries


def test_inodes_go_past_a_full_ag_0(spilled: tuple[Path, list[Entry]]) -> None:
    image, entries = spilled
    _repaired(image)
    counts = [int(line.split("=")[1]) for line in
              _xfs_db(image, "agi 0", "print count", "agi 1", "print count").splitlines()]
    assert counts[1] > 0 and sum(counts) >= len(entries)
    sb = _xfs_db(image, "sb 0", "print icount ifree")
    assert f"icount = {sum(counts)}" in sb


def test_the_kernel_reads_inodes_past_ag_0_back(spilled: tuple[Path, list[Entry]],
                                                tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    image, entries = spilled
    with _mounted(image, tmp_path / "mnt") as mnt:
        for d in range(DIRS):
            assert len(os.listdir(mnt / f"d{d}")) == PER_DIR
        for entry in entries[-PER_DIR:]:
            assert (mnt / entry.path).read_bytes() == entry.data
        last = mnt / entries[-1].path
        assert last.stat().st_ino >> 32 == 0 and last.stat().st_ino > (mnt / "d0/f0").stat().st_ino


def test_a_directory_past_one_index_level_gets_two(tmp_path: Path) -> None:
    # 504 leaves of 504 hashes under one node hold 254,014 names beside . and ..;
    # 260,000 take 516 leaves under two nodes under the root.
    assert CRC is not None
    image = tmp_path / "xfs.img"
    subprocess.run(["truncate", "-s", "600M", image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", image], check=True)
    names = [f"{i:x}-name" for i in range(260_000)]
    entries = [Entry("", "dir", 0o755), Entry("wide", "dir", 0o755)]
    entries += [Entry(f"wide/{name}", "file", 0o644, data=b"") for name in names]
    xfs_fill.fill_xfs(image, 0, entries, crc=CRC)
    _repaired(image)
    root = _xfs_db(image, "path /wide", "dblock 8388608", "print nhdr.level nhdr.count")
    assert root.split() == ["nhdr.level", "=", "2", "nhdr.count", "=", "2"]
    if os.geteuid() != 0:
        return
    with _mounted(image, tmp_path / "mnt") as mnt:
        assert sorted(os.listdir(mnt / "wide")) == sorted(names)
        assert all((mnt / "wide" / name).is_file() for name in names[::97])
        assert not (mnt / "wide" / "absent").exists()


def test_a_file_of_more_extents_than_an_inode_holds_gets_an_extent_btree(
        tmp_path: Path) -> None:
    # 32 AGs of 16 MiB (the log apart: an AG holds no 64 MiB log): a 400 MiB file
    # crosses 25 of them, 26 extents, where an inode holds 21.
    assert CRC is not None
    image, log = tmp_path / "xfs.img", tmp_path / "log.img"
    subprocess.run(["truncate", "-s", "512M", image], check=True)
    subprocess.run(["truncate", "-s", "64M", log], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-d", "agcount=32", "-l",
                    f"logdev={log},size=64m", image], check=True, capture_output=True)
    big = tmp_path / "big"
    big.write_bytes(b"".join(os.urandom(4096) * 256 for _ in range(400)))
    entries = [Entry("", "dir", 0o755), Entry("big", "file", 0o644, source=str(big)),
               Entry("after", "file", 0o600, data=b"after\n")]
    xfs_fill.fill_xfs(image, 0, entries, crc=CRC)
    _repaired(image, "-l", log)
    fork = _xfs_db(image, "path /big", "print core.format core.nextents u3.bmbt.level")
    assert fork.split() == ["core.format", "=", "3", "(btree)", "core.nextents", "=", "26",
                            "u3.bmbt.level", "=", "1"]
    if os.geteuid() != 0:
        return
    loops = [subprocess.run(["losetup", "-f", "--show", file], capture_output=True,
                            text=True, check=True).stdout.strip() for file in (log, image)]
    try:
        with _mounted(loops[1], tmp_path / "mnt", f"ro,logdev={loops[0]}") as mnt:
            assert subprocess.run(["cmp", big, mnt / "big"]).returncode == 0
            assert (mnt / "after").read_bytes() == b"after\n"
    finally:
        subprocess.run(["losetup", "-d", *loops], check=True)

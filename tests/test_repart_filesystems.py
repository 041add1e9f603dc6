"""The filesystem makers on their own: sizes, labels, bit-identical bytes."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from pathlib import Path

import pytest

from make_disk_image.models import Entry
from make_disk_image.process import StepError
from make_disk_image.repart import filesystems

FS_UUID = uuid.UUID("7981aaf4-2a9a-4f86-9f1f-5b42c8f28bbf")


def test_data_bytes_skips_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"x" * 8192)
    assert filesystems.data_bytes(path) in (8192, 12288)


def test_fat_label() -> None:
    assert filesystems.fat_label("esp") == "ESP"
    assert filesystems.fat_label("a-very-long-label") == "A-VERY-LONG"


def test_ext4_twice_the_same_bytes(tmp_path: Path) -> None:
    entries = [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
               Entry("etc/hello", "file", 0o644, data=b"hello\n", size=6)]
    digests = []
    for name in ("a", "b"):
        target = tmp_path / f"{name}.ext4"
        filesystems.make_ext4(target, 8 << 20, entries, fs_uuid=FS_UUID, label="root",
                              step="test")
        digests.append(hashlib.sha256(target.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    out = subprocess.run(["debugfs", "-R", "cat /etc/hello", tmp_path / "a.ext4"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "hello\n"
    guess = filesystems.guess_ext4_size(tmp_path, entries, fs_uuid=FS_UUID, label="root",
                                        step="test")
    assert 1 << 20 < guess < 64 << 20


def test_swap(tmp_path: Path) -> None:
    target = tmp_path / "swap"
    filesystems.make_swap(target, 16 << 20, fs_uuid=FS_UUID, label="swap", step="test")
    out = subprocess.run(["blkid", "-p", "-o", "export", target], capture_output=True,
                         text=True, check=True).stdout
    assert f"UUID={FS_UUID}" in out and "TYPE=swap" in out


def test_tree_blocks_count_what_mke2fs_writes(tmp_path: Path) -> None:
    """Minimize=guess counts instead of filling: the count must be what `mke2fs -d`
    writes (zero blocks left as holes, long symlinks, directories, inode table)."""
    entries = [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
               Entry("etc/hello", "file", 0o644, data=b"x\n", size=2),
               Entry("etc/zeros", "file", 0o644, data=bytes(3 * 4096) + b"end", size=12291),
               Entry("etc/long", "symlink", 0o777, link="/" + "a" * 70, size=71),
               Entry("etc/short", "symlink", 0o777, link="hello", size=5),
               *[Entry(f"etc/d{i:03}-{'n' * 40}", "dir", 0o755) for i in range(200)]]
    counted = filesystems.tree_blocks(entries)
    made = []
    for tree in (entries[:1], entries):
        target = tmp_path / "trial.ext4"
        # With metadata checksums, as repart 254's trial (directory blocks keep a tail).
        filesystems.make_ext4(target, filesystems.TRIAL_SIZE, tree, fs_uuid=FS_UUID,
                              label="root", step="test")
        made.append(filesystems.data_bytes(target))
        target.unlink()
    assert made[1] - made[0] == counted * 4096


def test_btrfs_too_small_names_the_size_option(tmp_path: Path) -> None:
    """mkfs.btrfs grows its file to hold the tree rather than failing."""
    big = b"x" * (40 << 20)
    entries = [Entry("", "dir", 0o755), Entry("big", "file", 0o644, data=big, size=len(big))]
    with pytest.raises(StepError, match=r"partition's 32 MiB do not hold its files; raise "
                       r"its SizeMinBytes \(the filesystem needs \d+ MiB\)"):
        filesystems.make_btrfs(tmp_path / "small.btrfs", 32 << 20, entries, fs_uuid=FS_UUID,
                               label="home", step="test")

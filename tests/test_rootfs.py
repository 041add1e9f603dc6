"""rootfs: the ext4 root filesystem's checksums and tuning on an image file, with the real
e2fsprogs, and the faults e2fsck must not fix silently."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from imagecheck import dumpe2fs, e2fsck_clean

from make_disk_image.filesystems import ext as rootfs
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, DiskPlan, Spec
from make_disk_image.process import StepError

SIZE = 64 * MIB


def plan() -> DiskPlan:
    spec = Spec(toplevel="/nix/store/x-toplevel", closureInfo="/nix/store/x-closure",
                partitionTableType="none")  # fmt: skip
    return plan_disk(spec, SIZE, None)


def without_checksums(tmp_path: Path) -> Path:
    """An ext4 filled by mke2fs -d without metadata_csum, as finish makes it first."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    for n in range(40):
        (tree / "etc" / f"file{n}").write_text(f"{n}\n")
    image = tmp_path / "root.img"
    with image.open("wb") as f:
        f.truncate(SIZE)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-O", "^metadata_csum", "-d", tree, image],
                   check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1"})  # fmt: skip
    return image


def test_checksums_on_a_new_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's SOURCE_DATE_EPOCH (stdenv's) does not reach the superblock: tune2fs
    and e2fsck run at the fixed time, and e2fsck has nothing unexpected to fix."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "315532800")
    image = without_checksums(tmp_path)
    rootfs.add_checksums(image, plan(), deterministic=True, step="test")
    rootfs.tune(image, plan(), deterministic=True)
    assert e2fsck_clean(image, 0).returncode == 0
    fields = dumpe2fs(image, 0)
    assert "metadata_csum" in fields["Filesystem features"]
    assert fields["Last write time"] == "Thu Jan  1 00:00:01 1970"
    assert fields["Last checked"] == "Thu Jan  1 00:00:00 1970"


def test_an_error_e2fsck_fixes_fails_the_step(tmp_path: Path) -> None:
    """A fault in the new filesystem (here a wrong free blocks count written with
    debugfs) is fixed by e2fsck -y with exit status 1: that must not pass as the
    checksum run's expected fix."""
    image = without_checksums(tmp_path)
    subprocess.run(["debugfs", "-w", "-R", "ssv free_blocks_count 1234", image], check=True,
                   capture_output=True)  # fmt: skip
    with pytest.raises(StepError) as err:
        rootfs.add_checksums(image, plan(), deterministic=True, step="finish: root filesystem")
    assert err.value.step == "finish: root filesystem: checksums"
    assert "Free blocks count wrong" in str(err.value)


def test_e2fsck_fixes_reads_only_what_was_fixed() -> None:
    output = """Pass 1: Checking inodes, blocks, and sizes
Pass 3A: Optimizing directories
Pass 5: Checking group summary information
Orphan file (inode 12) block 0 is not clean.
Clear? yes


root.img: ***** FILE SYSTEM WAS MODIFIED *****
root.img: 63/16384 files (0.0% non-contiguous), 9596/65536 blocks
"""
    fixes = rootfs.e2fsck_fixes(output)
    assert fixes == ["Orphan file (inode 12) block 0 is not clean.", "Clear? yes"]
    assert all(any(p.fullmatch(f) for p in rootfs.EXPECTED_FIXES) for f in fixes)

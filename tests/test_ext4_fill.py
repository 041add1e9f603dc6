"""ext4_fill: trees written into filesystems the real mke2fs made, checked with e2fsck -fn
and read back with debugfs: every kind of entry, owners and modes, hard links, holes,
large directories, extent trees, determinism, and the errors."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from imagecheck import e2fsck_clean, fs_spec

from make_disk_image import rootfs
from make_disk_image.filesystems import ext4_alloc, ext4_fill, ext4_write
from make_disk_image.filesystems.ext4_fill import FilesystemFull, FillError, Times
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, Entry, Spec
from make_disk_image.process import StepError

UUID = "4a2c8b3e-0c1d-4e2f-9a8b-7c6d5e4f3a2b"
FIXED = Times(clamp=1, created=1)


def empty_ext4(image: Path, size: int = 64 * MIB, offset: int = 0, *extra: str,
               fs_type: str = "ext4", block_size: int = 4096) -> None:
    with image.open("ab") as fh:
        fh.truncate(offset + size)
    options = [f"hash_seed={UUID}"] + ([f"offset={offset}"] if offset else [])
    subprocess.run(
        ["mke2fs", "-q", "-t", fs_type, "-b", str(block_size), "-F", "-U", UUID,
         "-O", "^metadata_csum",
         *extra, "-E", ",".join(options), image, f"{size // 1024}K"],
        check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1"},
    )  # fmt: skip


def debugfs(image: Path, command: str, offset: int = 0) -> str:
    return subprocess.run(["debugfs", "-R", command, fs_spec(image, offset)],
                          capture_output=True, check=True).stdout.decode(errors="surrogateescape")


def read_back(image: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True,
                          check=True).stdout


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0,
               gid: int = 0) -> Entry:
    return Entry(path, "file", mode, uid, gid, data=data, size=len(data))


def every_kind(tmp_path: Path) -> list[Entry]:
    source = tmp_path / "source.bin"
    # Two pieces of the reader, a block of zeros between data, zeros at the end.
    source.write_bytes(os.urandom(1 << 20) + bytes(8192) + os.urandom(5000) + bytes(9000))
    return [
        Entry("", "dir", 0o755),
        Entry("bin", "dir", 0o755),
        file_entry("bin/tool", b"#!/bin/sh\n", 0o4755, 70000, 70001),
        file_entry("bin/empty", b""),
        Entry("bin/big", "file", 0o444, source=str(source), size=source.stat().st_size),
        Entry("bin/same", "hardlink", 0o4755, link="bin/tool"),
        Entry("bin/short", "symlink", 0o777, link="tool"),
        Entry("bin/long", "symlink", 0o777, link="/" + "x" * 200),
        Entry("bin/edge", "symlink", 0o777, link="y" * 59),
        Entry("dev", "dir", 0o755),
        Entry("dev/tty", "chardev", 0o620, 0, 5, device=(4, 1)),
        Entry("dev/wide", "blockdev", 0o660, device=(259, 70000)),
        Entry("dev/pipe", "fifo", 0o600),
        Entry("names", "dir", 0o700, 1000, 100),
        file_entry("names/with space $and\nnewline", b"a"),
        file_entry(os.fsdecode(b"names/latin1-\xe9"), b"b"),
        Entry("names/sub", "dir", 0o755, mtime=1700000000),
    ]


def test_every_kind_of_entry_reads_back(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    empty_ext4(image)
    entries = every_kind(tmp_path)
    ext4_fill.fill(image, 0, entries, FIXED)
    assert e2fsck_clean(image, 0).returncode == 0, e2fsck_clean(image, 0).stdout
    tool = debugfs(image, "stat /bin/tool")
    assert "Mode:  04755" in tool and "User: 70000   Group: 70001" in tool
    assert "Links: 2" in tool and "Size: 10" in tool
    assert re.search(r"Inode: (\d+)", tool)[1] == re.search(  # type: ignore[index]
        r"Inode: (\d+)", debugfs(image, "stat /bin/same"))[1]  # type: ignore[index]
    assert read_back(image, "/bin/big") == (tmp_path / "source.bin").read_bytes()
    extents = debugfs(image, "ex /bin/big")
    # 256 + 2 data blocks in two extents around the hole; none for the last two, zeros.
    assert "(0-255):" in extents.replace(" ", "") or "0 -   255" in extents
    assert "Blockcount: 2064" in debugfs(image, "stat /bin/big"), extents
    assert debugfs(image, "stat /bin/empty").count("Blockcount: 0") == 1
    assert 'Fast link dest: "tool"' in debugfs(image, "stat /bin/short")
    assert 'Fast link dest: "' + "y" * 59 in debugfs(image, "stat /bin/edge")
    assert read_back(image, "/bin/long") == b"/" + b"x" * 200
    assert "Device major/minor number: 04:01" in debugfs(image, "stat /dev/tty")
    assert "New-style) Device major/minor number: 259:70000" in debugfs(image, "stat /dev/wide")
    assert "Type: FIFO" in debugfs(image, "stat /dev/pipe")
    listing = debugfs(image, "ls -p /names")
    assert "/with space $and\nnewline/" in listing
    assert "/latin1-\udce9/" in listing
    assert "mtime: 0x00000001" in debugfs(image, "stat /names/sub")  # clamped
    assert "ctime: 0x00000000" in debugfs(image, "stat /names/sub")
    assert "Links: 3" in debugfs(image, "stat /names")


def test_same_entries_same_bytes_with_checksums_added(tmp_path: Path) -> None:
    """Two images from the same entries are identical, also after tune2fs and e2fsck -D
    (filesystems.ext.add_checksums), and that filesystem is clean and indexed."""
    entries = every_kind(tmp_path) + [
        file_entry(f"names/sub/{n:05d}", str(n).encode()) for n in range(3000)
    ]
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y", partitionTableType="none")
    plan = plan_disk(spec, 64 * MIB, None)
    images = []
    for name in ("a.img", "b.img"):
        image = tmp_path / name
        image.write_bytes(b"")
        image.open("r+b").truncate(plan.disk_size)
        rootfs.make_root_filesystem(image, plan, entries, uuid=UUID, deterministic=True)
        images.append(image)
    assert images[0].read_bytes() == images[1].read_bytes()
    assert e2fsck_clean(images[0], 0).returncode == 0
    assert "Flags: 0x81000" in debugfs(images[0], "stat /names/sub")  # extents, htree
    assert "metadata_csum" in debugfs(images[0], "stats -h")


def test_a_large_directory(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    empty_ext4(image, 128 * MIB)
    names = [f"entry-with-a-longer-name-{n:06d}" for n in range(20000)]
    entries = [Entry("", "dir", 0o755), Entry("big", "dir", 0o755)] + [
        Entry(f"big/{name}", "symlink", 0o777, link=name) for name in names
    ]
    ext4_fill.fill(image, 0, entries, FIXED)
    assert e2fsck_clean(image, 0).returncode == 0
    listed = debugfs(image, "ls /big").split()
    assert sum(1 for word in listed if word.startswith("entry-")) == 20000
    assert 'Fast link dest: "entry-with-a-longer-name-019999"' in debugfs(
        image, "stat /big/entry-with-a-longer-name-019999")


def test_many_extents_make_a_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With extents of at most 8 blocks, a 1 MiB file needs 32: a depth-1 tree."""
    monkeypatch.setattr(ext4_alloc, "MAX_EXTENT_BLOCKS", 8)
    monkeypatch.setattr(ext4_write, "MAX_EXTENT_BLOCKS", 8)
    image = tmp_path / "fs.img"
    empty_ext4(image)
    data = os.urandom(1 << 20)
    ext4_fill.fill(image, 0, [Entry("", "dir", 0o755), file_entry("f", data)], FIXED)
    assert e2fsck_clean(image, 0).returncode == 0
    assert "Level Entries" in debugfs(image, "ex /f") and " 1/ 1 " in debugfs(image, "ex /f")
    assert read_back(image, "/f") == data
    monkeypatch.setattr(ext4_alloc, "MAX_EXTENT_BLOCKS", 1)
    monkeypatch.setattr(ext4_write, "MAX_EXTENT_BLOCKS", 1)
    empty_ext4(image)
    with pytest.raises(FillError, match="1430 extents"):
        ext4_fill.fill(image, 0, [Entry("", "dir", 0o755),
                                 file_entry("f", bytes([1]) * 1430 * 4096)], FIXED)


def test_inside_a_disk_image_and_lost_found_given(tmp_path: Path) -> None:
    """At an offset, the bytes before the filesystem stay; a lost+found in the tree
    with a file in it is written anew in place of mke2fs's."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xa5" * MIB)
    empty_ext4(image, 32 * MIB, MIB)
    entries = [Entry("", "dir", 0o711, 5, 6), Entry("lost+found", "dir", 0o700),
               file_entry("lost+found/kept", b"k")]
    ext4_fill.fill(image, MIB, entries, FIXED)
    assert image.read_bytes()[:MIB] == b"\xa5" * MIB
    assert e2fsck_clean(image, MIB).returncode == 0
    assert "kept" in debugfs(image, "ls /lost+found", MIB)
    assert "Mode:  0711" in debugfs(image, "stat /", MIB)


def test_only_the_root(tmp_path: Path) -> None:
    """minimal's empty filesystems: the root's block given back and taken again."""
    image = tmp_path / "fs.img"
    empty_ext4(image)
    ext4_fill.fill(image, 0, [Entry("", "dir", 0o700, 1, 2)], FIXED)
    assert e2fsck_clean(image, 0).returncode == 0
    assert "User:     1   Group:     2" in debugfs(image, "stat /")


def test_full_and_faulty_trees(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    root = Entry("", "dir", 0o755)
    empty_ext4(image, 16 * MIB)
    with pytest.raises(FilesystemFull, match="no free block"):
        ext4_fill.fill(image, 0, [root, file_entry("big", os.urandom(17 * MIB))], FIXED)
    empty_ext4(image, 16 * MIB, 0, "-N", "64")
    with pytest.raises(FilesystemFull, match="no free inode"):
        ext4_fill.fill(image, 0, [root] + [file_entry(f"f{n}", b"") for n in range(100)], FIXED)
    empty_ext4(image, 16 * MIB)
    with pytest.raises(FillError, match="hard link to 'missing'"):
        ext4_fill.fill(image, 0, [root, Entry("h", "hardlink", 0o644, link="missing")], FIXED)
    links = [Entry(f"h{n}", "hardlink", 0o644, link="f") for n in range(65000)]
    with pytest.raises(FillError, match="/f has more than 65000 hard links"):
        ext4_fill.fill(image, 0, [root, file_entry("f", b""), *links], FIXED)
    with pytest.raises(FillError, match="comes before its directory"):
        ext4_fill.fill(image, 0, [root, file_entry("a/b", b"")], FIXED)


def test_through_rootfs_too_small_names_the_fix(tmp_path: Path) -> None:
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y", partitionTableType="none")
    plan = plan_disk(spec, 16 * MIB, None)
    image = tmp_path / "fs.img"
    image.write_bytes(b"")
    with pytest.raises(StepError, match="too small .*raise diskSize"):
        rootfs.make_root_filesystem(image, plan, [Entry("", "dir", 0o755),
                                                  file_entry("big", os.urandom(20 * MIB))],
                                    uuid=UUID, deterministic=True)


@pytest.mark.parametrize("fs_type", ["ext2", "ext3"])
def test_ext2_and_ext3_stay_on_mke2fs_d(tmp_path: Path, fs_type: str) -> None:
    """Without extents the writer has nothing to write: rootfs streams them into
    `mke2fs -d -` as before, and they hold the tree."""
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y", partitionTableType="none",
                fsType=fs_type)
    plan = plan_disk(spec, 32 * MIB, None)
    image = tmp_path / "fs.img"
    image.write_bytes(b"")
    entries = [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
               file_entry("etc/hostname", b"nixos\n", 0o640, 3, 4)]
    rootfs.make_root_filesystem(image, plan, entries, uuid=UUID, deterministic=True)
    assert e2fsck_clean(image, 0).returncode == 0
    assert "extent" not in debugfs(image, "stats -h").split("Filesystem features:")[1] \
        .splitlines()[0]
    assert read_back(image, "/etc/hostname") == b"nixos\n"
    assert "User:     3   Group:     4" in debugfs(image, "stat /etc/hostname")


def test_triple_indirect_blocks(tmp_path: Path) -> None:
    """With 1 KiB blocks (256 numbers an indirect block) a file of 64 MiB reaches the
    triple indirect block; lost+found (16 blocks: a single indirect one) is rebuilt."""
    image = tmp_path / "fs.img"
    empty_ext4(image, 32 * MIB, fs_type="ext2", block_size=1024)
    tail = os.urandom(3000)
    data = bytes((12 + 256 + 256 * 256) * 1024) + tail
    entries = [Entry("", "dir", 0o755), Entry("lost+found", "dir", 0o700),
               file_entry("far", data), file_entry("near", tail)]
    ext4_fill.fill(image, 0, entries, FIXED)
    assert e2fsck_clean(image, 0).returncode == 0, e2fsck_clean(image, 0).stdout
    stat = debugfs(image, "stat /far")
    # 3 data blocks, the triple, double and single indirect blocks: 6 KiB, 12 sectors.
    assert "(TIND)" in stat and "Blockcount: 12" in stat, stat
    assert read_back(image, "/far") == data and read_back(image, "/near") == tail

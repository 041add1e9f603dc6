"""ext4_fill: trees written into filesystems the real mke2fs made, checked with e2fsck -fn
and read back with debugfs: every kind of entry, owners and modes, hard links, holes,
large directories, extent trees and block maps (ext2, ext3), determinism, and the errors."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from imagecheck import e2fsck_clean, fs_spec

from make_disk_image import rootfs
from make_disk_image.filesystems import ext4_alloc, ext4_fill, ext4_layout, ext4_write
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


def block_mapped(tmp_path: Path) -> list[Entry]:
    """every_kind, files that cross each level of a block map (4096-byte blocks: 12
    direct blocks, 1024 more through the single indirect block, then the double), a
    sparse file, a hard link to a large file, and a directory of 3,000 entries."""
    block = 4096
    data = os.urandom(1040 * block)
    sizes = {"b0": 0, "b1": 1, "b12": 12 * block, "b13": 12 * block + 1,
             "b1036": 1036 * block, "b1037": 1036 * block + 5, "b1040": 1040 * block}
    files = [file_entry(f"maps/{name}", data[:size]) for name, size in sizes.items()]
    # Holes: one before any data, over the whole single indirect range, at the end.
    sparse = bytes(5 * block) + data[:block] + bytes(1100 * block) + data[:3 * block] \
        + bytes(2 * block)
    return every_kind(tmp_path) + [
        Entry("maps", "dir", 0o755), *files,
        file_entry("maps/sparse", sparse),
        Entry("maps/again", "hardlink", 0o644, link="maps/b1040"),
        Entry("many", "dir", 0o755),
        *(file_entry(f"many/{n:05d}", str(n).encode()) for n in range(3000)),
    ]


def block_mapped_image(tmp_path: Path, fs_type: str, name: str,
                       entries: list[Entry]) -> Path:
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y", partitionTableType="none",
                fsType=fs_type)
    plan = plan_disk(spec, 64 * MIB, None)
    image = tmp_path / name
    image.write_bytes(b"")
    rootfs.make_root_filesystem(image, plan, entries, uuid=UUID, deterministic=True)
    return image


def dumped_matches(image: Path, entries: list[Entry], into: Path) -> None:
    """`debugfs rdump` of the image gives back every file's bytes and every symlink's
    target (it dumps no devices), and nothing else."""
    into.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {into}", image], capture_output=True,
                   check=True)
    for entry in entries[1:]:
        path = into / entry.path
        if entry.kind == "file":
            expected = entry.data if entry.data is not None \
                else Path(entry.source or "").read_bytes()
            assert path.read_bytes() == expected, entry.path
        elif entry.kind == "symlink":
            assert os.readlink(path) == entry.link, entry.path
    dumped = {str(p.relative_to(into)) for p in into.rglob("*")}
    assert dumped == {e.path for e in entries[1:] if e.kind in ("file", "dir", "symlink",
                                                                "hardlink")} | {"lost+found"}


@pytest.mark.parametrize("fs_type", ["ext2", "ext3"])
def test_ext2_and_ext3_block_maps(tmp_path: Path, fs_type: str) -> None:
    """Without extents the writer writes block maps: the filesystem is clean, gives the
    tree back, holds the same bytes from the same entries, and its large directory is
    indexed (`mke2fs -d` leaves it linear)."""
    entries = block_mapped(tmp_path)
    images = [block_mapped_image(tmp_path, fs_type, name, entries)
              for name in ("a.img", "b.img")]
    assert images[0].read_bytes() == images[1].read_bytes()
    image = images[0]
    assert e2fsck_clean(image, 0).returncode == 0, e2fsck_clean(image, 0).stdout
    features = debugfs(image, "stats -h").split("Filesystem features:")[1].splitlines()[0]
    assert "extent" not in features and ("has_journal" in features) == (fs_type == "ext3")
    dumped_matches(image, entries, tmp_path / "dump")
    big = debugfs(image, "stat /maps/b1037")
    # 1037 data blocks, the single indirect block, the double and one below it: each
    # indirect block just before the first data block it maps, all in one run.
    assert "Flags: 0x0" in big and "Blockcount: 8320" in big, big
    runs = re.findall(r"\(([A-Z]+|[\d-]+)\):(\d+)(?:-(\d+))?", big.split("BLOCKS:")[1])
    assert [what for what, _, _ in runs] == ["0-11", "IND", "12-1035", "DIND", "IND",
                                             "1036"], big
    firsts = [int(first) for _, first, _ in runs]
    assert firsts == [firsts[0] + n for n in (0, 12, 13, 1037, 1038, 1039)], big
    sparse = debugfs(image, "stat /maps/sparse")
    # 4 data blocks, the double indirect block and one below it; the single indirect
    # block's whole range is a hole, so it has none.
    assert "Blockcount: 48" in sparse and "(DIND)" in sparse and "(IND)" in sparse, sparse
    assert "Links: 2" in debugfs(image, "stat /maps/b1040")
    assert "Device major/minor number: 04:01" in debugfs(image, "stat /dev/tty")
    assert "New-style) Device major/minor number: 259:70000" in debugfs(image, "stat /dev/wide")
    assert "Flags: 0x1000" in debugfs(image, "stat /many")  # indexed, no extents


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


def _kernel_max_file_bytes(image: Path, mnt: Path) -> int:
    """The longest file the kernel lets `truncate` make on `image`: its s_maxbytes."""
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    try:
        fd = os.open(mnt / "probe", os.O_CREAT | os.O_WRONLY)
        low, high = 0, 1 << 50
        while low < high:
            middle = (low + high + 1) // 2
            try:
                os.ftruncate(fd, middle)
                low = middle
            except OSError:
                high = middle - 1
        os.close(fd)
        return low
    finally:
        subprocess.run(["umount", mnt], check=True)


@pytest.mark.parametrize(("fs_type", "block_size", "features"), [
    ("ext2", 1024, ()), ("ext3", 4096, ()), ("ext3", 4096, ("-O", "huge_file")),
    ("ext4", 4096, ()), ("ext4", 4096, ("-O", "^huge_file")), ("ext4", 1024, ()),
])  # fmt: skip
def test_largest_file_is_never_above_the_kernels(tmp_path: Path, fs_type: str,
                                                 block_size: int,
                                                 features: tuple[str, ...]) -> None:
    """max_file_bytes against the mounted filesystem's own limit: equal, except for block
    maps without huge_file and 4 KiB blocks, where it counts a whole triple-indirect
    tree's blocks (2.0 GiB under the kernel's estimate). With 1 KiB blocks a block map's
    reach (about 16 GiB) is the bound, which both count alike."""
    image = tmp_path / "fs.img"
    empty_ext4(image, 64 * MIB, 0, *features, fs_type=fs_type, block_size=block_size)
    geometry = ext4_layout.parse_superblock(
        image.read_bytes()[ext4_layout.SUPERBLOCK_OFFSET:][:ext4_layout.SUPERBLOCK_SIZE])
    ours = ext4_layout.max_file_bytes(geometry)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    kernels = _kernel_max_file_bytes(image, mnt)
    if geometry.extents or geometry.huge_file or block_size == 1024:
        assert ours == kernels
    else:
        assert 0 <= kernels - ours < 3 << 30, (ours, kernels)


def test_a_file_longer_than_the_filesystem_holds_is_refused_first(tmp_path: Path) -> None:
    """ext3 without huge_file counts a file's sectors in 32 bits (about 2 TiB): a longer
    file is refused by name before any data is written (the source is never opened)."""
    image = tmp_path / "fs.img"
    empty_ext4(image, 16 * MIB, fs_type="ext3")
    before = image.read_bytes()
    too_long = Entry("big", "file", 0o644, source=str(tmp_path / "never-read"), size=3 << 40)
    with pytest.raises(FillError, match=r"/big is 3298534883328 bytes, more than this "
                       r"filesystem's largest file \(\d+ bytes\); fsType ext4"):
        ext4_fill.fill(image, 0, [Entry("", "dir", 0o755), too_long], FIXED)
    assert image.read_bytes() == before
    empty_ext4(image, 16 * MIB)
    beyond = Entry("big", "file", 0o644, source=str(tmp_path / "never-read"), size=17 << 40)
    with pytest.raises(FillError, match=r"more than this filesystem's largest file \(\d+ "
                       r"bytes\)$"):
        ext4_fill.fill(image, 0, [Entry("", "dir", 0o755), beyond], FIXED)

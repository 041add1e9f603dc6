"""btrfs_write: whole filesystems written without mkfs.btrfs, checked with btrfs-progs'
`btrfs check --readonly --check-data-csum` and mounted by the kernel (read-only, and
written to): every kind of entry, owners, inline edges, holes, hard links, large and
deep directories, non-UTF-8 names, the superblock copy at 64 MiB, determinism, errors."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from make_disk_image.filesystems.btrfs_fstree import NoSpace, TreeError
from make_disk_image.filesystems.btrfs_write import write_btrfs
from make_disk_image.filesystems.crc32c import Crc32c, provider
from make_disk_image.models import MIB, Entry

UUID = "4a2c8b3e-0c1d-4e2f-9a8b-7c6d5e4f3a2b"
CRC = provider()
needs_crc = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
pytestmark = needs_crc


def crc() -> Crc32c:
    assert CRC is not None
    return CRC


def write(image: Path, entries: list[Entry], size: int = 256 * MIB, offset: int = 0,
          label: str = "test") -> None:
    with image.open("ab") as fh:
        fh.truncate(offset + size)
    write_btrfs(image, offset, size, entries, label=label, uuid=UUID, crc=crc())


def check_clean(image: Path) -> str:
    done = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", str(image)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "no error found" in done.stdout, done.stdout + done.stderr
    return done.stdout


@contextmanager
def mounted(image: Path, where: Path, options: str = "loop,ro") -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "btrfs", "-o", options, str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "file", mode, uid, gid, data=data, size=len(data))


def every_kind(tmp_path: Path) -> list[Entry]:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20) + bytes(8192) + os.urandom(5000) + bytes(9000))
    sparse = tmp_path / "sparse.bin"
    with sparse.open("wb") as fh:
        fh.seek(40 * MIB)
        fh.write(b"middle")
        fh.truncate(100 * MIB)
    return [
        Entry("", "dir", 0o755),
        Entry("bin", "dir", 0o755),
        file_entry("bin/tool", b"#!/bin/sh\n", 0o4755, 70000, 70001),
        file_entry("bin/empty", b""),
        file_entry("bin/one", b"1"),
        file_entry("bin/inline-2048", os.urandom(2048)),
        file_entry("bin/extent-2049", os.urandom(2049)),
        file_entry("bin/zeros", bytes(20000)),
        Entry("bin/big", "file", 0o444, source=str(big), size=big.stat().st_size),
        Entry("bin/sparse", "file", 0o600, source=str(sparse), size=100 * MIB),
        Entry("bin/same", "hardlink", 0o4755, link="bin/tool"),
        Entry("bin/short", "symlink", 0o777, link="tool"),
        Entry("bin/long", "symlink", 0o777, link="/" + "x" * 3000),
        Entry("dev", "dir", 0o755),
        Entry("dev/tty", "chardev", 0o620, 0, 5, device=(4, 1)),
        Entry("dev/wide", "blockdev", 0o660, device=(259, 70000)),
        Entry("dev/pipe", "fifo", 0o600),
        Entry("names", "dir", 0o700, 1000, 100, mtime=1700000000),
        file_entry("names/with space $and\nnewline", b"a"),
        file_entry(os.fsdecode(b"names/latin1-\xe9"), b"b"),
        Entry("names/also-tool", "hardlink", 0o4755, link="bin/tool"),
        Entry("names/sub", "dir", 0o755),
    ]


def expected_bytes(entry: Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    assert entry.source is not None
    return Path(entry.source).read_bytes()


def compare(root: Path, entries: list[Entry]) -> None:
    """Every entry's type, mode, owner, bytes or target, and every directory's listing."""
    kinds = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
             "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO}
    by_path = {e.path: e for e in entries}
    for entry in entries:
        path = root / entry.path
        st = path.lstat()
        shown = by_path[entry.link.strip("/")] if entry.kind == "hardlink" and entry.link \
            else entry
        assert stat.S_IFMT(st.st_mode) == kinds[shown.kind], entry.path
        assert stat.S_IMODE(st.st_mode) == shown.mode, entry.path
        assert (st.st_uid, st.st_gid) == (shown.uid, shown.gid), entry.path
        assert st.st_mtime == (1 if shown.mtime is None else shown.mtime), entry.path
        if shown.kind == "file":
            assert path.read_bytes() == expected_bytes(shown), entry.path
        elif shown.kind == "symlink":
            assert os.readlink(path) == shown.link, entry.path
        elif shown.device is not None:
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == shown.device, entry.path
        if shown.kind == "dir":
            listed = sorted(os.listdir(path))
            prefix = f"{entry.path}/" if entry.path else ""
            children = sorted(e.path[len(prefix):] for e in entries
                              if e.path.startswith(prefix) and e.path != entry.path
                              and "/" not in e.path[len(prefix):])
            assert listed == children, entry.path


def test_every_kind_of_entry_checks_clean_and_mounts_as_given(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    entries = every_kind(tmp_path)
    write(image, entries)
    check_clean(image)
    if os.geteuid() == 0:
        with mounted(image, tmp_path / "mnt") as root:
            compare(root, entries)
            assert (root / "bin/tool").stat().st_nlink == 3
            # Holes stay holes: 100 MiB apparent, one sector allocated.
            assert (root / "bin/sparse").stat().st_blocks * 512 == 4096
            assert (root / "bin/zeros").stat().st_blocks == 0


def test_the_same_entries_give_the_same_bytes(tmp_path: Path) -> None:
    entries = every_kind(tmp_path)
    digests = []
    for name in ("one.img", "two.img"):
        image = tmp_path / name
        write(image, entries)
        digests.append(hashlib.sha256(image.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_dump_super_shows_mkfs_defaults(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    write(image, [Entry("", "dir", 0o755)], size=160 * MIB, label="nixos")
    shown = subprocess.run(["btrfs", "inspect-internal", "dump-super", "-f", str(image)],
                           capture_output=True, text=True, check=True).stdout
    for fact in ("csum_type\t\t0 (crc32c)", f"fsid\t\t\t{UUID}", "label\t\t\tnixos",
                 "nodesize\t\t16384", "sectorsize\t\t4096", "compat_ro_flags\t\t0x3",
                 "incompat_flags\t\t0x361", "type SYSTEM|DUP", "[match]"):
        assert fact in shown, fact
    assert "DUP" in subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "chunk",
                                    str(image)], capture_output=True, text=True,
                                   check=True).stdout
    check_clean(image)


def test_large_deep_and_crowded_directories(tmp_path: Path) -> None:
    entries = [Entry("", "dir", 0o755), Entry("crowd", "dir", 0o755)]
    entries += [file_entry(f"crowd/entry-{n:05}", str(n).encode() * (n % 7))
                for n in range(3000)]
    deep = ""
    for level in range(60):
        deep = f"{deep}/d{level}" if deep else f"d{level}"
        entries.append(Entry(deep, "dir", 0o755))
    entries.append(file_entry(f"{deep}/bottom", b"bottom"))
    image = tmp_path / "fs.img"
    write(image, entries)
    out = check_clean(image)
    assert "total fs tree bytes" in out
    if os.geteuid() == 0:
        with mounted(image, tmp_path / "mnt") as root:
            compare(root, entries)


def test_data_across_the_superblock_copy_at_64_mib(tmp_path: Path) -> None:
    """A file larger than the largest extent (128 MiB), cut where a data chunk ends
    before the copy at 64 MiB."""
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(150 * MIB))
    entries = [Entry("", "dir", 0o755),
               Entry("data", "file", 0o644, source=str(source), size=150 * MIB)]
    image = tmp_path / "fs.img"
    write(image, entries, size=400 * MIB, offset=MIB)
    # The copy at 64 MiB is the filesystem's, untouched by data.
    with image.open("rb") as fh:
        fh.seek(MIB + (64 << 20) + 64)
        assert fh.read(8) == b"_BHRfS_M"
    if os.geteuid() == 0:
        loop = subprocess.run(["losetup", "-f", "--show", "-o", str(MIB), str(image)],
                              capture_output=True, text=True, check=True).stdout.strip()
        try:
            check_clean(Path(loop))
            with mounted(Path(loop), tmp_path / "mnt", "ro") as root:
                assert (root / "data").read_bytes() == source.read_bytes()
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)


def test_many_hard_links_in_one_directory_overflow_into_extended_refs(tmp_path: Path) -> None:
    entries = [Entry("", "dir", 0o755), Entry("d", "dir", 0o755), file_entry("d/file", b"x")]
    entries += [Entry(f"d/link-{n:04}-{'n' * 40}", "hardlink", 0o644, link="d/file")
                for n in range(700)]
    entries += [Entry("e", "dir", 0o755), Entry("e/other", "hardlink", 0o644, link="d/file")]
    image = tmp_path / "fs.img"
    write(image, entries)
    check_clean(image)
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", str(image)],
                          capture_output=True, text=True, check=True).stdout
    assert "INODE_EXTREF" in dump
    if os.geteuid() == 0:
        with mounted(image, tmp_path / "mnt") as root:
            compare(root, entries)
            assert (root / "d/file").stat().st_nlink == 702


@needs_root
def test_the_kernel_writes_to_it_and_check_stays_clean(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    write(image, every_kind(tmp_path))
    with mounted(image, tmp_path / "mnt", "loop") as root:
        (root / "new.bin").write_bytes(os.urandom(30 * MIB))
        (root / "newdir").mkdir()
        for n in range(500):
            (root / "newdir" / f"f{n}").write_text(str(n))
        (root / "bin/big").unlink()
    check_clean(image)


def test_too_small_and_bad_trees_are_errors(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(40 * MIB))
    image = tmp_path / "fs.img"
    with pytest.raises(NoSpace):
        write(image, [Entry("", "dir", 0o755),
                      Entry("data", "file", 0o644, source=str(source), size=40 * MIB)],
              size=32 * MIB)
    with pytest.raises(TreeError, match="first entry"):
        write(image, [file_entry("a", b"a")])
    with pytest.raises(TreeError, match="before its directory"):
        write(image, [Entry("", "dir", 0o755), file_entry("x/a", b"a")])
    with pytest.raises(TreeError, match="no earlier file"):
        write(image, [Entry("", "dir", 0o755), Entry("h", "hardlink", 0o644, link="nope")])

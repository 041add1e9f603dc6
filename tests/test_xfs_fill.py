"""xfs_fill: trees written into an empty mkfs.xfs filesystem pass `xfs_repair -n`, and
the kernel reads back every entry as given (bytes, mode, owner, link target, device,
each directory's listing); the same entries give the same bytes."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from make_disk_image.filesystems import crc32c, xfs_fill
from make_disk_image.filesystems import xfs_format as fmt
from make_disk_image.models import Entry

CRC = crc32c.provider()
pytestmark = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")
ODD = os.fsdecode(b"odd \xff\xfe name $x\nline")


def _image(tmp_path: Path, entries: list[Entry], name: str = "xfs.img",
           size: str = "400M") -> Path:
    assert CRC is not None
    image = tmp_path / name
    subprocess.run(["truncate", "-s", size, image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "uuid=0b0c6ba6-4c46-4f5e-9b0e-5f2b7d1b2c3d",
                    image], check=True)
    xfs_fill.fill_xfs(image, 0, entries, crc=CRC)
    repair = subprocess.run(["xfs_repair", "-n", "-f", image], capture_output=True,
                            text=True)
    assert repair.returncode == 0, repair.stdout[-4000:] + repair.stderr[-2000:]
    return image


def _tree(tmp_path: Path, files_in_big_dir: int) -> list[Entry]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random").write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    (src / "one").write_bytes(b"x")
    sparse = src / "sparse"
    with sparse.open("wb") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"end")
    entries = [
        Entry("", "dir", 0o755),
        Entry("tmp", "dir", 0o1777, 0, 0),
        Entry("etc", "dir", 0o755, 7, 8, mtime=1234567890),
        Entry("etc/empty", "file", 0o644, data=b""),
        Entry("etc/one", "file", 0o4755, 3, 4, source=str(src / "one")),
        Entry("etc/random", "file", 0o600, source=str(src / "random")),
        Entry("etc/sparse", "file", 0o644, source=str(sparse)),
        Entry("etc/again", "hardlink", 0, link="etc/random"),
        Entry("etc/short", "symlink", 0o777, link="random"),
        Entry("etc/remote", "symlink", 0o777, link="/" + "long-target/" * 60),
        Entry("etc/" + ODD, "file", 0o2644, data=b"odd\n"),
        Entry("etc/odd-link", "symlink", 0o777, link=ODD),
        Entry("dev", "dir", 0o755),
        Entry("dev/null", "chardev", 0o666, device=(1, 3)),
        Entry("dev/sda", "blockdev", 0o660, 0, 6, device=(8, 0)),
        Entry("dev/pipe", "fifo", 0o600),
        Entry("big", "dir", 0o755),
    ]
    entries += [Entry(f"big/entry number {i} $", "file", 0o644, data=str(i).encode())
                for i in range(files_in_big_dir)]
    deep = ""
    for level in range(40):
        deep = f"{deep}/d{level}" if deep else "deep"
        entries.append(Entry(deep, "dir", 0o700))
    entries.append(Entry(f"{deep}/leaf", "file", 0o644, data=b"deep\n"))
    return entries


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, list[Entry]]]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    entries = _tree(tmp_path, 3000)
    image = _image(tmp_path, entries)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", image, mnt], check=True)
    try:
        yield mnt, entries
    finally:
        subprocess.run(["umount", mnt], check=True)


_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def test_the_kernel_reads_every_entry_back(mounted: tuple[Path, list[Entry]]) -> None:
    mnt, entries = mounted
    by_path = {e.path: e for e in entries}
    for entry in entries:
        path = mnt / entry.path
        st = path.lstat()
        first = by_path[entry.link] if entry.kind == "hardlink" and entry.link else entry
        assert stat.S_IFMT(st.st_mode) == _TYPES[first.kind], entry.path
        assert stat.S_IMODE(st.st_mode) == first.mode, entry.path
        assert (st.st_uid, st.st_gid) == (first.uid, first.gid), entry.path
        assert int(st.st_mtime) == (first.mtime or 1), entry.path
        if first.kind == "file":
            want = first.data if first.data is not None else \
                Path(str(first.source)).read_bytes()
            assert path.read_bytes() == want, entry.path
        elif first.kind == "symlink":
            assert os.readlink(path) == first.link
        elif first.kind in ("chardev", "blockdev"):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == first.device
        elif first.kind == "dir":
            inside = {e.path.rpartition("/")[2] for e in entries
                      if e.path and e.path.rpartition("/")[0] == entry.path}
            assert set(os.listdir(path)) == inside, entry.path
    random = mnt / "etc/random"
    assert random.stat().st_ino == (mnt / "etc/again").stat().st_ino
    assert random.stat().st_nlink == 2
    assert (mnt / "etc").stat().st_nlink == 2 and mnt.stat().st_nlink == 2 + 5


@pytest.mark.parametrize("count", [0, 12, 60, 300, 502, 25000])
def test_every_directory_form_passes_repair(tmp_path: Path, count: int) -> None:
    # Short form, block, leaf, node (502: too many names for a leaf block with its
    # free table, few enough for one index leaf); 25,000 inodes: a two-level inobt.
    entries = [Entry("", "dir", 0o755), Entry("d", "dir", 0o755)]
    entries += [Entry(f"d/{i:x}-{'n' * (i % 200 if count != 502 else 0)}", "file", 0o644,
                      data=b"") for i in range(count)]
    _image(tmp_path, entries, size="600M")


def test_the_same_entries_give_the_same_bytes(tmp_path: Path) -> None:
    entries = _tree(tmp_path, 100)
    digests = {hashlib.sha256(_image(tmp_path, entries, name).read_bytes()).hexdigest()
               for name in ("one.img", "two.img")}
    assert len(digests) == 1


def test_a_tree_larger_than_the_filesystem_is_refused(tmp_path: Path) -> None:
    assert CRC is not None
    image = tmp_path / "small.img"
    subprocess.run(["truncate", "-s", "300M", image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", image], check=True)
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate(400 * 1024 * 1024)
    entries = [Entry("", "dir", 0o755), Entry("huge", "file", 0o644, source=str(huge))]
    with pytest.raises(xfs_fill.NoSpace):
        xfs_fill.fill_xfs(image, 0, entries, crc=CRC)


def test_equal_hashes_stay_in_one_index_leaf(tmp_path: Path) -> None:
    # Flipping bit 0 of the third byte and bit 7 of the fourth keeps a 5-byte name's
    # hash: 1,600 pairs of equal hashes, so leaf boundaries fall among them.
    pairs = [(bytes([97, 98, 48 + i % 64, 192 + i // 64, 99]),
              bytes([97, 98, (48 + i % 64) ^ 1, (192 + i // 64) ^ 0x80, 99]))
             for i in range(1600)]
    assert all(fmt.da_hash(a) == fmt.da_hash(b) for a, b in pairs)
    entries = [Entry("", "dir", 0o755), Entry("d", "dir", 0o755)]
    entries += [Entry("d/" + os.fsdecode(name), "file", 0o644, data=b"")
                for pair in pairs for name in pair]
    _image(tmp_path, entries, size="600M")


@pytest.mark.parametrize(("options", "reason"), [
    ((), None),
    (("-m", "rmapbt=1"), "rmapbt"),
    (("-m", "finobt=0"), "finobt"),
    (("-n", "size=8192"), "directory blocks"),
])
def test_unsupported_names_what_the_writer_cannot_fill(tmp_path: Path,
                                                       options: tuple[str, ...],
                                                       reason: str | None) -> None:
    image = tmp_path / "xfs.img"
    subprocess.run(["truncate", "-s", "400M", image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", *options, image], check=True)
    found = xfs_fill.unsupported(image)
    assert found is None if reason is None else reason in str(found)


def test_make_xfs_falls_back_to_the_protofile_for_what_the_writer_cannot_fill(
        tmp_path: Path) -> None:
    from make_disk_image.filesystems.xfs import make_xfs

    image = tmp_path / "rmap.img"
    subprocess.run(["truncate", "-s", "400M", image], check=True)
    entries = [Entry("", "dir", 0o755), Entry("f", "file", 0o640, 5, 6, data=b"bytes\n")]
    make_xfs(image, entries, label="t", uuid=None, deterministic=True, step="t",
             extra=("-m", "rmapbt=1"))
    assert subprocess.run(["xfs_repair", "-n", "-f", image], capture_output=True).returncode == 0
    printed = subprocess.run(["xfs_db", "-r", "-c", "version", "-c", "path /f",
                              "-c", "print core.uid core.mode", image],
                             capture_output=True, text=True, check=True).stdout
    assert "RMAPBT" in printed.upper() and "core.uid = 5" in printed

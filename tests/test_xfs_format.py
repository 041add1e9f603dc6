"""xfs_format against images mkfs.xfs made: the geometry xfs_db prints, the name hashes
xfs_db computes, the root inode re-encoded byte for byte, and an inode written by the
engine that xfs_repair passes and the kernel reads."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from make_disk_image.filesystems import crc32c
from make_disk_image.filesystems import xfs_format as fmt

CRC = crc32c.provider()
pytestmark = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")


def _db(image: Path, *commands: str) -> str:
    args = ["xfs_db", "-r"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run([*args, image], check=True, capture_output=True,
                          text=True).stdout


def _empty(tmp_path: Path, size: str = "2500M") -> Path:
    image = tmp_path / "xfs.img"
    subprocess.run(["truncate", "-s", size, image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-L", "t", image], check=True)
    return image


def _geometry(image: Path) -> fmt.Geometry:
    with image.open("rb") as f:
        return fmt.Geometry.parse(f.read(512))


def test_geometry_is_what_xfs_db_prints(tmp_path: Path) -> None:
    image = _empty(tmp_path)
    geometry = _geometry(image)
    printed = dict(re.findall(r"^(\w+) = (\S+)", _db(image, "sb 0", "print"), re.MULTILINE))
    for name in ("blocksize", "dblocks", "logstart", "rootino", "agblocks", "agcount",
                 "logblocks", "sectsize", "inodesize", "inopblock", "blocklog",
                 "inodelog", "inopblog", "agblklog", "icount", "ifree", "fdblocks",
                 "inoalignmt", "dirblklog"):
        assert getattr(geometry, name) == int(printed[name], 0), name
    assert geometry.ino(*geometry.ino_place(geometry.rootino)) == geometry.rootino
    assert geometry.bigtime
    assert geometry.uuid.hex() == printed["uuid"].replace("-", "")


def test_not_xfs_is_refused() -> None:
    with pytest.raises(fmt.FormatError, match="no xfs superblock"):
        fmt.Geometry.parse(bytes(512))


@pytest.mark.parametrize("name", ["a", "ab", "abc", "abcd", "hello.txt", "lib",
                                  "nix-store-0123456789abcdef", "x$y.z"])
def test_name_hash_is_xfs_dbs(tmp_path: Path, name: str) -> None:
    image = _empty(tmp_path, "300M")
    printed = _db(image, f"hash {name}").split()
    assert fmt.da_hash(name.encode()) == int(printed[-1], 16)


def test_recorded_hashes() -> None:
    # xfs_db 6.1's `hash abc` and `hash hello.txt`.
    assert fmt.da_hash(b"abc") == 0x187163
    assert fmt.da_hash(b"hello.txt") == 0x9D168F12
    assert fmt.da_hash(b"") == 0


def _decode_time(raw: bytes) -> tuple[int, int]:
    (value,) = struct.unpack(">Q", raw)
    return value // fmt.NSEC - fmt.BIGTIME_EPOCH_OFFSET, value % fmt.NSEC


def test_the_root_inode_encodes_to_mkfs_bytes(tmp_path: Path) -> None:
    assert CRC is not None
    image = _empty(tmp_path)
    geometry = _geometry(image)
    with image.open("rb") as f:
        f.seek(geometry.ino_offset(geometry.rootino))
        on_disk = f.read(geometry.inodesize)
    (size,) = struct.unpack_from(">Q", on_disk, 56)
    (changecount,) = struct.unpack_from(">Q", on_disk, 104)
    root = fmt.Inode(
        ino=geometry.rootino, mode=0o40755, fmt=fmt.FMT_LOCAL, nlink=2, uid=0, gid=0,
        size=size, nblocks=0, nextents=0,
        fork=on_disk[fmt.INODE_CORE : fmt.INODE_CORE + size],
        atime=_decode_time(on_disk[32:40]), mtime=_decode_time(on_disk[40:48]),
        ctime=_decode_time(on_disk[48:56]), crtime=_decode_time(on_disk[144:152]),
        changecount=changecount)
    assert root.encode(geometry, CRC) == on_disk


def test_an_inode_the_engine_writes_passes_repair_and_mounts(tmp_path: Path) -> None:
    assert CRC is not None
    image = _empty(tmp_path, "300M")
    geometry = _geometry(image)
    root = geometry.rootino
    # An empty short-form directory: no entries, its parent is itself (4-byte numbers).
    fork = struct.pack(">BBI", 0, 0, root)
    inode = fmt.Inode(ino=root, mode=0o41777, fmt=fmt.FMT_LOCAL, nlink=2, uid=1000,
                      gid=100, size=len(fork), nblocks=0, nextents=0, fork=fork,
                      atime=(1, 0), mtime=(1, 0), ctime=(1, 0), crtime=(1, 0))
    with image.open("r+b") as f:
        f.seek(geometry.ino_offset(root))
        f.write(inode.encode(geometry, CRC))
    repair = subprocess.run(["xfs_repair", "-n", "-f", image], capture_output=True,
                            text=True)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    printed = _db(image, f"inode {root}", "print core.mode core.uid core.gid v3.crc")
    assert "core.mode = 041777" in printed
    assert "core.uid = 1000" in printed and "core.gid = 100" in printed
    assert "(correct)" in printed
    if os.geteuid() != 0:
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", image, mnt], check=True)
    try:
        st = mnt.stat()
        assert (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime)) == \
            (0o41777, 1000, 100, 1)
    finally:
        subprocess.run(["umount", mnt], check=True)

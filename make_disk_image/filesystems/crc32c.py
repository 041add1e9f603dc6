"""CRC-32C for the engine's filesystem writers: btrfs (tree blocks, the superblock, data
sectors and name hashes) and xfs v5 (every metadata block and inode).

The standard library has no CRC-32C, and a Python loop runs at a few MB/s: 2 GB of data
needs one in C. Two are tried, in order: the kernel's through AF_ALG ("hash", "crc32c"),
and e2fsprogs' libext2fs (ext2fs_crc32c_le, which e2fsprogs needs for ext4's metadata
checksums) through ctypes, found by name or as mke2fs loads it. Measured on the build
host (kernel 6.18 without AF_ALG hash sockets): libext2fs, 4 KiB at a time, 100 MB in
0.07 s. Where neither is there,
`provider()` is None and the caller uses mkfs.btrfs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from make_disk_image import process

# The environment variable that names libext2fs where the loader cannot find it (Nix).
LIBEXT2FS_ENV = "MDI_LIBEXT2FS"
# btrfs_name_hash seeds the raw CRC with ~1 and does not invert the result.
NAME_SEED = 0xFFFFFFFE
ALL_ONES = 0xFFFFFFFF

Raw = Callable[[int, bytes], int]  # (seed, data) -> raw CRC
Sums = Callable[[bytes, int], bytes]  # (data, sector) -> packed sector checksums


@dataclass(frozen=True)
class Crc32c:
    """CRC-32C in the forms btrfs uses; `name` says where it comes from."""

    name: str
    raw: Raw
    sector_sums: Sums  # the standard CRC-32C of each sector of the data, packed

    def checksum(self, data: bytes) -> int:
        """The standard CRC-32C (seed ~0, result inverted): blocks and sectors."""
        return self.raw(ALL_ONES, data) ^ ALL_ONES

    def name_hash(self, name: bytes) -> int:
        """btrfs' directory name hash: the DIR_ITEM key's offset."""
        return self.raw(NAME_SEED, name)


def _sums_of(raw: Raw) -> Sums:
    def sums(data: bytes, sector: int) -> bytes:
        crcs = [raw(ALL_ONES, data[at : at + sector]) ^ ALL_ONES
                for at in range(0, len(data), sector)]
        return struct.pack(f"<{len(crcs)}I", *crcs)
    return sums


def traced_libext2fs() -> str | None:
    """Where mke2fs (on PATH) loads libext2fs from: glibc's loader lists a program's
    libraries instead of running it when LD_TRACE_LOADED_OBJECTS is set (ldd's way).
    A Nix build needs this: nixpkgs' Python finds no library by name there."""
    try:
        listed = process.run(["mke2fs"], step="btrfs",
                             env={"LD_TRACE_LOADED_OBJECTS": "1"}).stdout.decode()
    except process.CommandError:
        return None  # mke2fs ran (a static one): its usage, and a failure status
    found = re.search(r"^\s*libext2fs\.so\.\d+ => (/\S+)", listed, re.MULTILINE)
    return found.group(1) if found else None


def _libext2fs_paths() -> Iterator[str | None]:
    yield os.environ.get(LIBEXT2FS_ENV)
    yield ctypes.util.find_library("ext2fs")
    yield traced_libext2fs()


def _libext2fs() -> tuple[Raw, Sums] | None:
    func = None
    # The named library first; where it cannot be loaded, the one the loader finds by
    # name, then the one mke2fs loads.
    for path in _libext2fs_paths():
        try:
            func = ctypes.CDLL(path).ext2fs_crc32c_le if path else None
        except (OSError, AttributeError):
            continue
        if func is not None:
            break
    if func is None:
        return None
    func.restype = ctypes.c_uint32
    func.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]

    def address(data: bytes) -> int:
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0

    def raw(seed: int, data: bytes) -> int:
        return int(func(seed, address(data), len(data)))

    def sums(data: bytes, sector: int) -> bytes:
        # Each sector in place: no slice is copied (`data` lives through the loop).
        base = address(data)
        crcs = [func(ALL_ONES, base + at, sector) ^ ALL_ONES
                for at in range(0, len(data), sector)]
        return struct.pack(f"<{len(crcs)}I", *crcs)

    return raw, sums


def _af_alg() -> Raw | None:
    try:
        sock = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
        sock.bind(("hash", "crc32c"))
    except (OSError, AttributeError):
        return None
    ops: dict[int, socket.socket] = {}

    def raw(seed: int, data: bytes) -> int:
        op = ops.get(seed)
        if op is None:
            # The kernel's crc32c takes its seed as a 4-byte key and inverts its result.
            sock.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, struct.pack("<I", seed))
            op = ops[seed] = sock.accept()[0]
        op.sendall(data)
        (digest,) = struct.unpack("<I", op.recv(4))
        return int(digest) ^ ALL_ONES

    return raw


def provider() -> Crc32c | None:
    """The fastest CRC-32C here, or None."""
    kernel = _af_alg()
    if kernel is not None:
        return Crc32c("AF_ALG crc32c", kernel, _sums_of(kernel))
    lib = _libext2fs()
    if lib is not None:
        return Crc32c("libext2fs ext2fs_crc32c_le", *lib)
    return None

"""A qcow2 writer with zlib-compressed clusters, compressed on every core.

`qemu-img convert -c` compresses one 64 KiB cluster after another on one core (qemu 7.2
gains nothing from `-m`, and `-W` writes clusters in completion order, so its bytes vary).
Here worker threads compress batches of clusters (zlib releases the GIL) and the main
thread places the results in guest order, so the file is the same whatever the number of
workers. Every cluster is compressed exactly as qemu does it (raw deflate, window bits
-12, memLevel 9, default level), kept plain when that does not make it smaller, and left
unallocated when it is all zeros; clusters, L2 tables and refcounts are laid out as qemu
lays them out. The result is qemu-img's own bytes (qcow2 version 3, 64 KiB clusters,
16-bit refcounts, zlib) while the file stays under 2 GiB, the part one refcount block
covers; past that qemu puts further refcount blocks among the data, this writer after it
(same disk, valid qcow2, other bytes)."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu's default
REFCOUNTS_PER_BLOCK = CLUSTER * 8 // (1 << REFCOUNT_ORDER)
COPIED = 1 << 63  # L1/L2 flag: refcount is exactly 1
COMPRESSED = 1 << 62
# Compressed cluster descriptor: bits 0..CSIZE_SHIFT-1 host offset, then the number of
# 512-byte sectors the data spans beyond the first.
CSIZE_SHIFT = 62 - (CLUSTER_BITS - 8)
SECTOR = 512
BATCH = 64  # clusters per worker task (4 MiB): few tasks, bounded memory
HEADER_LENGTH = 112  # v3 header with the compression type byte, padded to 8
ZERO = bytes(CLUSTER)

# qemu's feature name table header extension, so `qemu-img info` and other readers can
# name feature bits; contents as qemu 7.2 writes them.
_FEATURES = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)
_FEATURE_TABLE_EXT = 0x6803F857


def compress_cluster(chunk: bytes) -> bytes:
    """One cluster as qemu's qcow2_compress() deflates it."""
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
    return deflate.compress(chunk) + deflate.flush()


def _batch(fd: int, first: int, count: int) -> list[bytes | None]:
    """Clusters first..first+count-1: None when all zeros, else compressed, or the plain
    cluster (exactly CLUSTER bytes) when compression does not make it smaller."""
    out: list[bytes | None] = []
    for index in range(first, first + count):
        chunk = os.pread(fd, CLUSTER, index * CLUSTER)
        if len(chunk) < CLUSTER:  # the last cluster of a size that is not a multiple
            chunk = chunk.ljust(CLUSTER, b"\0")
        if chunk == ZERO:
            out.append(None)
            continue
        packed = compress_cluster(chunk)
        out.append(packed if len(packed) < CLUSTER else chunk)
    return out


def _has_data(fd: int, start: int, end: int) -> bool:
    """Whether [start, end) of the file may hold data (not only a hole)."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA) < end
    except OSError as exc:
        # ENXIO: no data after start; anything else (no SEEK_DATA here): read it.
        return exc.errno != errno.ENXIO


def _batches(fd: int, clusters: int, workers: int) -> Iterator[list[bytes | None]]:
    """Every cluster's result in guest order, compressed `workers` batches at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[list[bytes | None]] | int] = deque()
        for first in range(0, clusters, BATCH):
            count = min(BATCH, clusters - first)
            if _has_data(fd, first * CLUSTER, (first + count) * CLUSTER):
                pending.append(pool.submit(_batch, fd, first, count))
            else:
                pending.append(count)  # a hole: no read, no task
            while len(pending) > 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(item: Future[list[bytes | None]] | int) -> list[bytes | None]:
    return [None] * item if isinstance(item, int) else item.result()


def _align(offset: int) -> int:
    return -(-offset // CLUSTER) * CLUSTER


def _header(size: int, l1_size: int, l1_offset: int, rt_offset: int, rt_clusters: int) -> bytes:
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb",
        3,  # version
        0,  # backing file offset
        0,  # backing file name length
        CLUSTER_BITS,
        size,
        0,  # no encryption
        l1_size,
        l1_offset,
        rt_offset,
        rt_clusters,
        0,  # snapshots
        0,  # snapshots offset
        0,  # incompatible features: none (zlib needs no compression type bit)
        0,  # compatible features
        0,  # autoclear features
        REFCOUNT_ORDER,
        HEADER_LENGTH,
    )
    header += bytes(HEADER_LENGTH - len(header))  # compression type 0 = zlib, padding
    table = b"".join(struct.pack(">BB46s", kind, bit, name) for kind, bit, name in _FEATURES)
    header += struct.pack(">II", _FEATURE_TABLE_EXT, len(table)) + table
    return header + struct.pack(">II", 0, 0)  # end of header extensions


def _pack(fd: int, out: int, clusters: int, layout: _Layout, workers: int) -> None:
    """Write every cluster's data and allocate L2 tables, as qemu does in order: an L2
    table in the next free cluster when its range gets its first data, then the data.
    Compressed clusters go byte after byte; a plain cluster (or L2 table) takes the next
    free cluster while compressed ones go on filling the cluster they had begun, and span
    into a next cluster only when it is free."""
    cursor = 0  # where the next compressed cluster may start; 0: in a new cluster
    index = 0
    for results in _batches(fd, clusters, workers):
        for data in results:
            if data is not None:
                if not layout.l1[index // L2_ENTRIES]:
                    layout.l1[index // L2_ENTRIES] = layout.allocate(layout.end, CLUSTER)
                if len(data) == CLUSTER:
                    offset = layout.end
                    layout.l2[index] = offset | COPIED
                else:
                    room = _align(cursor)
                    fits = cursor > 0 and (
                        cursor + len(data) <= room
                        # Spanning into the next cluster needs it free, and qemu does not
                        # span into a cluster that needs a new refcount block first.
                        or (room == layout.end and layout.covers(room))
                    )
                    offset = cursor if fits else layout.end
                    sectors = (offset + len(data) - 1) // SECTOR - offset // SECTOR
                    layout.l2[index] = COMPRESSED | sectors << CSIZE_SHIFT | offset
                    cursor = offset + len(data)
                os.pwrite(out, data, offset)
                layout.allocate(offset, len(data))
            index += 1


class _Layout:
    """Where things are in the qcow2 file and the refcount of every host cluster.

    Like qemu-img's: the header, the refcount table, the first refcount block and the L1
    table in clusters 0..3, then data and L2 tables. Each further refcount block (one per
    2 GiB of file) goes right after the allocation that first needs it, as qemu puts it."""

    def __init__(self, clusters: int) -> None:
        self.l1_size = max(1, -(-clusters // L2_ENTRIES))
        self.l1 = array("Q", bytes(8 * self.l1_size))
        self.l2 = array("Q", bytes(8 * clusters))
        self.refcounts = array("H")
        self.blocks = [2 * CLUSTER]  # refcount blocks
        self.rt_offset = CLUSTER
        self.l1_offset = 3 * CLUSTER
        self.end = 0
        self.tail = 0  # end of the last byte used
        self.allocate(0, self.l1_offset + _align(8 * self.l1_size))

    def covers(self, offset: int) -> bool:
        """Whether the refcount blocks so far cover the cluster at `offset`."""
        return offset >> CLUSTER_BITS < len(self.blocks) * REFCOUNTS_PER_BLOCK

    def allocate(self, offset: int, length: int) -> int:
        """Count a reference to [offset, offset+length); return offset | COPIED."""
        first, last = offset >> CLUSTER_BITS, (offset + length - 1) >> CLUSTER_BITS
        if last >= len(self.blocks) * REFCOUNTS_PER_BLOCK:  # past what the blocks cover
            if len(self.blocks) == CLUSTER // 8:
                raise ValueError("a qcow2 file over 16 TiB needs a larger refcount table")
            block = (last + 1) << CLUSTER_BITS
            self.blocks.append(block)
            self.allocate(block, CLUSTER)
        if last >= len(self.refcounts):
            self.refcounts.frombytes(bytes(2 * (last + 1 - len(self.refcounts))))
        for host in range(first, last + 1):
            self.refcounts[host] += 1
        self.end = max(self.end, _align(offset + length))
        self.tail = max(self.tail, offset + length)
        return offset | COPIED


def write(raw: Path, dest: Path, *, workers: int) -> None:
    """Write `raw` (a raw disk image) to `dest` as zlib-compressed qcow2."""
    size = raw.stat().st_size
    clusters = -(-size // CLUSTER)
    layout = _Layout(clusters)
    with raw.open("rb") as source, dest.open("wb") as out:
        fd = out.fileno()
        _pack(source.fileno(), fd, clusters, layout, workers)
        for entry, l2_offset in enumerate(layout.l1):
            if l2_offset:
                table = layout.l2[entry * L2_ENTRIES : (entry + 1) * L2_ENTRIES]
                table.byteswap()  # big-endian on disk
                os.pwrite(fd, table.tobytes(), l2_offset & ~COPIED)
        blocks = layout.blocks
        refcounts = layout.refcounts
        refcounts.frombytes(bytes(2 * (len(blocks) * REFCOUNTS_PER_BLOCK - len(refcounts))))
        refcounts.byteswap()
        for n, offset in enumerate(blocks):
            chunk = refcounts[n * REFCOUNTS_PER_BLOCK : (n + 1) * REFCOUNTS_PER_BLOCK]
            os.pwrite(fd, chunk.tobytes(), offset)
        os.pwrite(fd, struct.pack(f">{len(blocks)}Q", *blocks), layout.rt_offset)
        layout.l1.byteswap()
        os.pwrite(fd, layout.l1.tobytes(), layout.l1_offset)
        os.pwrite(fd, _header(size, layout.l1_size, layout.l1_offset, layout.rt_offset, 1), 0)
        # qemu-img ends the file at the sector after the last byte used.
        os.ftruncate(fd, -(-layout.tail // SECTOR) * SECTOR)

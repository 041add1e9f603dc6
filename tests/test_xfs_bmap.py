"""xfs_bmap: extent records stay in the inode up to 21; past that an extent btree's
root in the inode over leaves spread evenly and linked, each leaf's header and CRC
as xfs keeps them; past 20 leaves the writer's limit, named. (A whole file of 26
extents through xfs_repair and the kernel: test_xfs_limits.)"""

from __future__ import annotations

import struct
import subprocess

import pytest

from make_disk_image.filesystems import crc32c
from make_disk_image.filesystems import xfs_bmap as bmap
from make_disk_image.filesystems import xfs_btree as btree
from make_disk_image.filesystems import xfs_format as fmt

CRC = crc32c.provider()
pytestmark = pytest.mark.skipif(CRC is None, reason="no CRC-32C (AF_ALG or libext2fs)")
INO = 1234


@pytest.fixture(scope="module")
def geometry(tmp_path_factory: pytest.TempPathFactory) -> fmt.Geometry:
    image = tmp_path_factory.mktemp("bmap") / "xfs.img"
    subprocess.run(["truncate", "-s", "320M", image], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", image], check=True)
    with image.open("rb") as f:
        return fmt.Geometry.parse(f.read(512))


def _records(count: int) -> list[bytes]:
    # Extent i: file blocks 10*i on, 3 blocks at file system block 1000 + 10*i.
    return [btree.extent_record(10 * i, 1000 + 10 * i, 3) for i in range(count)]


def _fork(geometry: fmt.Geometry, count: int) -> tuple[int, bytes, int, dict[int, bytes]]:
    assert CRC is not None
    written: dict[int, bytes] = {}
    free = iter(range(50_000, 60_000))

    def take() -> tuple[int, int]:
        block = next(free)
        return block, block * 8

    def write(fsblock: int, data: bytes) -> None:
        written[fsblock] = data

    form, data, taken = bmap.data_fork(geometry, CRC, INO, _records(count), take, write)
    return form, data, taken, written


def test_up_to_21_extents_stay_in_the_inode(geometry: fmt.Geometry) -> None:
    form, data, taken, written = _fork(geometry, 21)
    assert (form, data, taken, written) == (fmt.FMT_EXTENTS, b"".join(_records(21)), 0, {})


@pytest.mark.parametrize(("count", "leaves"), [(22, 1), (251, 1), (600, 3), (5020, 20)])
def test_more_extents_go_to_leaves_under_the_inode_root(geometry: fmt.Geometry, count: int,
                                                       leaves: int) -> None:
    assert CRC is not None
    form, root, taken, written = _fork(geometry, count)
    assert form == fmt.FMT_BTREE and taken == leaves == len(written)
    level, numrecs = struct.unpack_from(">HH", root)
    assert (level, numrecs) == (1, leaves)
    keys = struct.unpack_from(f">{leaves}Q", root, 4)
    pointers = struct.unpack_from(f">{leaves}Q", root, 4 + 20 * 8)
    assert list(pointers) == sorted(written)
    records, seen = _records(count), 0
    for index, block in enumerate(pointers):
        data = written[block]
        magic, lvl, n, left, right, disk, _, uuid, owner = \
            struct.unpack_from(">IHHQQQQ16sQ", data)
        assert (magic, lvl, disk, uuid, owner) == (bmap.BMAP_MAGIC, 0, block * 8,
                                                  geometry.uuid, INO)
        assert left == (pointers[index - 1] if index else bmap.NULL_FSBLOCK)
        assert right == (pointers[index + 1] if index + 1 < leaves else bmap.NULL_FSBLOCK)
        assert count // leaves <= n <= -(-count // leaves)
        assert data[72 : 72 + 16 * n] == b"".join(records[seen : seen + n])
        assert keys[index] == 10 * seen
        assert fmt.with_crc(data, bmap.LONG_CRC_OFFSET, CRC) == data
        seen += n
    assert seen == count


def test_past_20_leaves_names_the_limit(geometry: fmt.Geometry) -> None:
    with pytest.raises(ValueError, match="5021 extents: more than the 5020 one level"):
        _fork(geometry, 5021)

"""Sizes and offsets: facts recorded from systemd-repart 254 (`--size=auto`, its JSON)."""

from __future__ import annotations

import pytest

from make_disk_image.repart import definitions, placement

M = 1 << 20


def _d(name: str, **config: str | int) -> definitions.Definition:
    return definitions.parse(name, config, "x86-64")


def test_appliance_layout_as_repart_254() -> None:
    defs = [
        _d("10-esp", Type="esp", Format="vfat", SizeMinBytes="64M"),
        _d("20-xbootldr", Type="xbootldr", Format="vfat", SizeMinBytes="32M"),
        _d("30-swap", Type="swap", Format="swap", SizeMinBytes="16M", SizeMaxBytes="16M"),
        _d("40-root", Type="root", Format="ext4", Minimize="guess"),
    ]
    # The root's filesystem, minimized beforehand, took 27906048 bytes.
    layout = placement.place(defs, [None, None, None, 27906048], sector_size=512,
                             disk_size=None)
    assert layout.size == 146415616
    assert layout.last_usable_sector == 285934
    assert [(p.offset, p.size) for p in layout.partitions] == [
        (1048576, 67108864), (68157440, 33554432), (101711872, 16777216),
        (118489088, 27906048)]


def test_defaults_and_small_contents_as_repart_254() -> None:
    defs = [
        _d("00-esp", Type="esp", Format="vfat", SizeMinBytes="64M"),
        _d("20-store", Type="usr", Format="erofs", Minimize="best"),
        _d("30-data", Type="linux-generic", Format="ext4"),
        _d("40-sq", Type="linux-generic", Format="squashfs", Minimize="best"),
        _d("50-swap", Type="swap", Format="swap"),
    ]
    layout = placement.place(defs, [None, 303104, None, 303104, None], sector_size=512,
                             disk_size=None)
    assert layout.size == 110120960
    assert layout.last_usable_sector == 215046
    assert [p.size for p in layout.partitions] == [64 * M] + [10 * M] * 4


def test_growing_by_weight_within_maximum() -> None:
    defs = [_d("1", Type="esp", SizeMinBytes="10M", SizeMaxBytes="20M"),
            _d("2", Type="root", Weight=1000), _d("3", Type="home", Weight=3000)]
    layout = placement.place(defs, [None] * 3, sector_size=512, disk_size=1 << 30)
    sizes = [p.size for p in layout.partitions]
    assert sizes[0] == 20 * M
    assert sizes[2] - 10 * M == pytest.approx(3 * (sizes[1] - 10 * M), abs=8192)
    end = layout.partitions[-1].offset + sizes[-1]
    assert end <= layout.last_usable_sector * 512 and end > (1 << 30) - M


def test_filesystem_minimums_and_errors() -> None:
    assert placement.minimum_size(_d("1", Type="root", Format="xfs"), None) == 300 * M
    assert placement.minimum_size(_d("1", Type="root", Format="btrfs"), None) == 256 * M
    with pytest.raises(placement.PlacementError, match="image.repart.imageSize"):
        placement.place([_d("1", Type="root")], [None], sector_size=512, disk_size=5 * M)
    with pytest.raises(placement.PlacementError, match="image.repart.sectorSize"):
        placement.place([_d("1", Type="root")], [None], sector_size=1000, disk_size=None)

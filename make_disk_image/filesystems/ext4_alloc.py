"""Free blocks and inodes of an ext4 filesystem, handed out in order.

Both come from the bitmaps mke2fs wrote, read once; blocks are taken from the lowest
free one upwards, inodes likewise, so the same entries always land in the same places.
The bitmaps are updated in memory as things are taken, with the per-group counts the
group descriptors need.
"""

from __future__ import annotations

from collections.abc import Iterator

from make_disk_image.filesystems.ext4_layout import MAX_EXTENT_BLOCKS, Geometry


class NoSpace(Exception):
    """No free block or inode is left."""


def zero_runs(bitmap: bytes | bytearray, nbits: int) -> Iterator[tuple[int, int]]:
    """(first bit, length) of each run of clear bits among the first `nbits`."""
    free = ~int.from_bytes(bitmap[: (nbits + 7) // 8], "little") & ((1 << nbits) - 1)
    pos = 0
    while free:
        skip = (free & -free).bit_length() - 1
        free >>= skip
        pos += skip
        length = (~free & (free + 1)).bit_length() - 1
        yield pos, length
        free >>= length
        pos += length


def set_bits(bitmap: bytearray, start: int, count: int, value: bool) -> None:
    end = start + count
    while start < end and start % 8:
        _set_bit(bitmap, start, value)
        start += 1
    whole = (end - start) // 8
    bitmap[start // 8 : start // 8 + whole] = (b"\xff" if value else b"\0") * whole
    start += whole * 8
    while start < end:
        _set_bit(bitmap, start, value)
        start += 1


def _set_bit(bitmap: bytearray, bit: int, value: bool) -> None:
    if value:
        bitmap[bit // 8] |= 1 << (bit % 8)
    else:
        bitmap[bit // 8] &= ~(1 << (bit % 8)) & 0xFF


class BlockSpace:
    """The free blocks, taken lowest first; `taken[group]` counts the net change,
    `changed` names the groups whose bitmap changed (a release and a take may cancel)."""

    def __init__(self, geometry: Geometry, bitmaps: list[bytearray]) -> None:
        self.geometry = geometry
        self.bitmaps = bitmaps
        self.taken = [0] * geometry.groups
        self.changed: set[int] = set()
        self._runs: list[tuple[int, int]] | None = None
        self._run = 0
        self._used_in_run = 0

    def _mark(self, start: int, count: int, value: bool) -> None:
        geo = self.geometry
        while count:
            group, bit = divmod(start - geo.first_data_block, geo.blocks_per_group)
            span = min(count, geo.blocks_per_group - bit)
            set_bits(self.bitmaps[group], bit, span, value)
            self.taken[group] += span if value else -span
            self.changed.add(group)
            start += span
            count -= span

    def release(self, runs: list[tuple[int, int]]) -> None:
        """Give back blocks mke2fs used (a directory the filler writes anew)."""
        assert self._runs is None, "blocks are released before any is taken"
        for start, count in runs:
            self._mark(start, count, False)

    def _free_runs(self) -> list[tuple[int, int]]:
        geo = self.geometry
        runs: list[tuple[int, int]] = []
        for group in range(geo.groups):
            base = geo.group_start(group)
            for bit, length in zero_runs(self.bitmaps[group], geo.group_blocks(group)):
                if runs and runs[-1][0] + runs[-1][1] == base + bit:
                    runs[-1] = (runs[-1][0], runs[-1][1] + length)
                else:
                    runs.append((base + bit, length))
        return runs

    def take(self, count: int) -> list[tuple[int, int]]:
        """`count` blocks as (first block, length) runs, none longer than an extent."""
        if self._runs is None:
            self._runs = self._free_runs()
        out: list[tuple[int, int]] = []
        while count:
            if self._run >= len(self._runs):
                raise NoSpace("no free block left")
            start, length = self._runs[self._run]
            first = start + self._used_in_run
            span = min(count, length - self._used_in_run, MAX_EXTENT_BLOCKS)
            if out and out[-1][0] + out[-1][1] == first and out[-1][1] + span <= MAX_EXTENT_BLOCKS:
                out[-1] = (out[-1][0], out[-1][1] + span)
            else:
                out.append((first, span))
            self._used_in_run += span
            if self._used_in_run == length:
                self._run += 1
                self._used_in_run = 0
            count -= span
        for start, span in out:
            self._mark(start, span, True)
        return out


class InodeSpace:
    """The free inodes, lowest first; `taken[group]` counts those taken per group."""

    def __init__(self, geometry: Geometry, bitmaps: list[bytearray]) -> None:
        self.geometry = geometry
        self.bitmaps = bitmaps
        self.taken = [0] * geometry.groups
        self._free = self._free_inodes()

    def _free_inodes(self) -> Iterator[int]:
        per_group = self.geometry.inodes_per_group
        for group, bitmap in enumerate(self.bitmaps):
            for bit, length in zero_runs(bitmap, per_group):
                yield from range(group * per_group + bit + 1,
                                 group * per_group + bit + length + 1)

    def take(self) -> int:
        ino = next(self._free, None)
        if ino is None:
            raise NoSpace("no free inode left")
        group, bit = divmod(ino - 1, self.geometry.inodes_per_group)
        _set_bit(self.bitmaps[group], bit, True)
        self.taken[group] += 1
        return ino

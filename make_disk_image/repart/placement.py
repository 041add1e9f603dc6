"""Sizes and offsets of the partitions, as systemd-repart 254 computes them.

- The grain is 4096 bytes: every start and size is a multiple of it. The first
  partition starts at 1 MiB (libfdisk's first usable LBA for a new GPT).
- A partition needs at least: its `SizeMinBytes` (10 MiB when unset), its filesystem's
  least size (format_table: ext4 1 MiB, btrfs 256 MiB, xfs 300 MiB), or the size of the filesystem
  made for it beforehand (`Minimize=`, erofs, squashfs), rounded up to the grain.
- `--size=auto` (nixpkgs' builder): the disk is 1044 KiB of GPT room plus these sizes.
- A larger disk (`imageSize`): the space after the partitions is shared by `Weight=`,
  within `SizeMaxBytes`; whatever the grain leaves stays unpartitioned at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from make_disk_image.repart.definitions import Definition

GRAIN = 4096
FIRST_PARTITION = 1 << 20
GPT_ROOM = 1044 * 1024
DEFAULT_MIN_SIZE = 10 << 20
GPT_ENTRIES_BYTES = 128 * 128


class PlacementError(ValueError):
    pass


@dataclass(frozen=True)
class Placed:
    offset: int  # bytes from the disk's start
    size: int  # bytes


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes
    sector_size: int
    partitions: tuple[Placed, ...]

    @property
    def last_usable_sector(self) -> int:
        backup = 1 + GPT_ENTRIES_BYTES // self.sector_size
        return self.size // self.sector_size - backup - 1


def round_up(value: int, to: int = GRAIN) -> int:
    return (value + to - 1) // to * to


def round_down(value: int, to: int = GRAIN) -> int:
    return value // to * to


def minimum_size(definition: Definition, content_size: int | None) -> int:
    """The least a new partition may have; `content_size`: its filesystem made beforehand."""
    if content_size is not None:
        needed = round_up(content_size)
    elif definition.filesystem is not None:
        needed = round_up(max(definition.filesystem.minimum_size, GRAIN))
    else:
        needed = GRAIN
    wanted = definition.size_min if definition.size_min is not None else DEFAULT_MIN_SIZE
    return max(round_up(wanted), needed)


def maximum_size(definition: Definition, minimum: int) -> int | None:
    if definition.size_max is None:
        return None
    return max(minimum, round_down(definition.size_max))


def auto_size(minimums: Sequence[int]) -> int:
    return round_up(GPT_ROOM) + sum(minimums)


def _shares(span: int, weights: dict[int, int]) -> dict[int, int]:
    total = sum(weights.values())
    return {i: (span * w // total if total else 0) for i, w in weights.items()}


def grow(
    free: int, minimums: Sequence[int], maximums: Sequence[int | None], weights: Sequence[int]
) -> list[int]:
    """Share `free` bytes (beyond the minimums) by weight, no partition above its maximum.

    Partitions whose share would pass their maximum get the maximum and leave the game,
    and the rest is shared again among the others (repart's growing loop).
    """
    sizes = list(minimums)
    pending = {i: w for i, w in enumerate(weights)}
    span = free
    while pending:
        capped = None
        for i, share in _shares(span, pending).items():
            limit = maximums[i]
            if limit is not None and minimums[i] + share > limit:
                capped = i
                break
        if capped is None:
            break
        limit = maximums[capped]
        assert limit is not None
        span -= limit - minimums[capped]
        sizes[capped] = limit
        del pending[capped]
    for i, share in _shares(span, pending).items():
        sizes[i] = minimums[i] + round_down(share)
    return sizes


def place(
    definitions: Sequence[Definition],
    content_sizes: Sequence[int | None],
    *,
    sector_size: int,
    disk_size: int | None,
) -> DiskLayout:
    """Where each definition's partition goes; `disk_size` None is `--size=auto`."""
    if sector_size not in (512, 1024, 2048, 4096):
        raise PlacementError(
            f"image.repart.sectorSize: {sector_size} is not a power of 2 from 512 to 4096"
        )
    minimums = [minimum_size(d, c) for d, c in zip(definitions, content_sizes, strict=True)]
    maximums = [maximum_size(d, m) for d, m in zip(definitions, minimums, strict=True)]
    needed = auto_size(minimums)
    size = needed if disk_size is None else round_up(disk_size)
    if size < needed:
        raise PlacementError(
            f"image.repart.imageSize: {disk_size} bytes cannot hold the partitions; they need "
            f"{needed} bytes (or leave imageSize unset for the least size)"
        )
    layout_end = round_down(
        size - (1 + GPT_ENTRIES_BYTES // sector_size) * sector_size
    )
    free = layout_end - FIRST_PARTITION - sum(minimums)
    sizes = grow(free, minimums, maximums, [d.weight for d in definitions])
    placed, offset = [], FIRST_PARTITION
    for part_size in sizes:
        placed.append(Placed(offset, part_size))
        offset += part_size
    return DiskLayout(size, sector_size, tuple(placed))

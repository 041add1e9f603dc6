"""The root filesystem, whichever fsType it is: its make_disk_image.filesystems row
makes, fills and tunes it.

It is made twice, both times natively on the host and with the same arguments: by
prepare, for the build VM to install the bootloader into (thrown away afterwards), and
by finish, from prepare's tree plus what the guest wrote, as the image's filesystem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.models import DiskPlan, Entry

STEP = "root filesystem"
# Timestamps when deterministic: Nix's store time, for the superblock and every inode.
SOURCE_DATE_EPOCH = 1


def make_root_filesystem(target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
                         uuid: str | None, deterministic: bool, checksums: bool = True,
                         step: str = STEP) -> None:
    """The plan's root filesystem holding `entries`, in `target`.

    `uuid`: the filesystem UUID, the same for both runs (the bootloader may record it).
    `checksums` false: the build VM's copy, or one `tune` completes.
    """
    FILESYSTEMS[plan.fs_type].make(target, plan, entries, uuid=uuid,
                                   deterministic=deterministic, checksums=checksums, step=step)


def make_from_store(target: Path, plan: DiskPlan, store_paths: Sequence[str], *,
                    uuid: str | None, deterministic: bool, step: str = STEP) -> None:
    """The plan's store image of `store_paths`, read by its tool from the store itself
    (staging.store_image_paths), as the whole of `target`."""
    FILESYSTEMS[plan.fs_type].make_from_store(target, plan, store_paths, uuid=uuid,
                                              deterministic=deterministic, step=step)


def tune(target: Path, plan: DiskPlan, *, deterministic: bool, step: str = STEP) -> None:
    """What the image's own root filesystem needs after it is filled."""
    FILESYSTEMS[plan.fs_type].tune(target, plan, deterministic=deterministic, step=step)

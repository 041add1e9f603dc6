"""`diskSize = "minimal"` for btrfs, measured by the engine's own writer: the size it
needs is exact (it writes at that size, not a MiB less), no larger than mkfs.btrfs
--shrink's, found without a user namespace or mkfs.btrfs, and the room it leaves takes
the guest's writes without the kernel taking a metadata chunk out of the data's room."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import Closure, Engine, base_spec
from test_btrfs_write import UUID, check_clean, crc, every_kind, file_entry, needs_crc
from test_other_filesystems import extract_root, mounted, plan_of

from make_disk_image.filesystems import btrfs
from make_disk_image.filesystems.btrfs_fstree import NoSpace
from make_disk_image.filesystems.btrfs_write import Stats, needed_size, write_btrfs
from make_disk_image.minimal import SLACK
from make_disk_image.models import MIB, Entry

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
pytestmark = needs_crc
METADATA_SIZE = re.compile(r"^Metadata,\w+: Size:(\d+)", re.M)
# What the guest writes, as the build VM does: GRUB's ~300 files (a few KiB each, and
# some inline), then data up to the room "minimal" promises.
GUEST_FILES = 300
GUEST_DATA = 12 * MIB


def written_at(image: Path, size: int, entries: list[Entry], *, for_guest: bool) -> Stats:
    image.unlink(missing_ok=True)
    with image.open("wb") as fh:
        fh.truncate(size)
    return write_btrfs(image, 0, size, entries, label="nixos", uuid=UUID, crc=crc(),
                       for_guest=for_guest)


def metadata_size(root: Path) -> int:
    usage = subprocess.run(["btrfs", "filesystem", "usage", "-b", str(root)], check=True,
                           capture_output=True, text=True).stdout
    found = METADATA_SIZE.search(usage)
    assert found, usage
    return int(found.group(1))


def write_as_the_guest(root: Path) -> None:
    """The guest's writes fit, and the kernel took no new metadata chunk for them."""
    before = metadata_size(root)
    guest = root / "boot/grub"
    guest.mkdir(parents=True)
    for i in range(GUEST_FILES):
        (guest / f"mod{i}.mod").write_bytes(os.urandom(3000))
        (guest / f"mod{i}.lst").write_bytes(b"x\n")
    os.sync()
    for i in range(GUEST_DATA // MIB):
        (root / f"data{i}").write_bytes(os.urandom(MIB))
    os.sync()
    assert metadata_size(root) == before


def tree(tmp_path: Path) -> list[Entry]:
    """every_kind's entries, with many small files as a store has."""
    entries = every_kind(tmp_path)
    entries.append(Entry("many", "dir", 0o755))
    entries += [file_entry(f"many/f{i}", os.urandom(1000 + i)) for i in range(2000)]
    return entries


def test_the_measure_is_exact_and_deterministic(tmp_path: Path) -> None:
    entries = tree(tmp_path)
    stats = needed_size(entries, crc=crc())
    assert needed_size(entries, crc=crc()) == stats
    assert stats.end % MIB == 0
    image = tmp_path / "fs.img"
    assert written_at(image, stats.end, entries, for_guest=True).stripe == stats.stripe
    check_clean(image)
    # A MiB less: the metadata keeps less room; without room for the trees, none fits.
    assert written_at(image, stats.end - MIB, entries, for_guest=True).stripe < stats.stripe
    with pytest.raises(NoSpace):
        written_at(image, stats.data_end + MIB, entries, for_guest=True)


def test_the_measure_allows_for_the_guests_files(tmp_path: Path) -> None:
    """finish writes the guest's files with the tree: in the room "minimal" added, the
    metadata keeps its full room though it moves past the superblock copy at 64 MiB."""
    entries = [*tree(tmp_path), file_entry("data", os.urandom(3 * MIB))]
    before = needed_size(entries, crc=crc())
    assert before.end < 64 * MIB
    guest = [Entry("boot", "dir", 0o755)]
    guest += [file_entry(f"boot/m{i}", os.urandom(48 * 1024)) for i in range(290)]
    after = needed_size(entries + guest, crc=crc())
    assert after.data_end < 64 * MIB < after.end
    image = tmp_path / "fs.img"
    made = written_at(image, before.grown_end(SLACK), entries + guest, for_guest=True)
    assert made.stripe == after.stripe
    check_clean(image)


def test_zero_sectors_fit_below_the_files_size(tmp_path: Path) -> None:
    """every_kind's 100 MiB sparse file holds 4 KiB of data: the filesystem fits in far
    less than the files' sizes add up to (the data chunks are cut at the device's end)."""
    entries = every_kind(tmp_path)
    assert sum(e.size for e in entries if e.kind == "file") > 100 * MIB
    stats = needed_size(entries, crc=crc(), for_guest=False)
    image = tmp_path / "fs.img"
    written_at(image, 48 * MIB, entries, for_guest=False)
    check_clean(image)
    assert stats.data_bytes < 2 * MIB


def test_no_larger_than_mkfs_btrfs_shrink(tmp_path: Path) -> None:
    """The size "minimal" measured before (mkfs.btrfs --rootdir --shrink in a user
    namespace) against the writer's, guest room included."""
    entries = [e for e in tree(tmp_path) if e.kind in ("dir", "file", "symlink")]
    entries = [e.__class__(**{**e.__dict__, "uid": 0, "gid": 0}) for e in entries]
    scratch = tmp_path / "shrunk.btrfs"
    with scratch.open("wb") as fh:
        fh.truncate(1 << 30)
    btrfs.make_btrfs(scratch, entries, label="nixos", uuid=UUID, step="test", shrink=True)
    assert needed_size(entries, crc=crc()).end <= scratch.stat().st_size


@needs_root
def test_the_room_left_takes_the_guests_writes(tmp_path: Path) -> None:
    entries = tree(tmp_path)
    image = tmp_path / "fs.img"
    written_at(image, needed_size(entries, crc=crc()).end + SLACK, entries, for_guest=True)
    with mounted(image, "btrfs", writable=True) as root:
        write_as_the_guest(root)
    check_clean(image)


@needs_root
def test_minimal_root_without_user_namespaces(closure: Closure, engine: Engine,
                                              tmp_path: Path) -> None:
    """An `unshare` that fails, first on PATH (as where user namespaces are refused):
    "minimal" neither needs it nor mkfs.btrfs; the root is smaller than the 160 MiB
    mkfs.btrfs' layout needed, checks clean, and takes the guest's writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("unshare", "mkfs.btrfs"):
        (bin_dir / tool).write_text("#!/bin/sh\necho refused >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    tmp_path.chmod(0o755)
    spec = base_spec(closure, fsType="btrfs", partitionTableType="legacy+gpt",
                     installBootLoader=False, diskSize="minimal", additionalSpace="0M")
    result = engine.build_without_vm(spec, name="btrfs-minimal-no-ns", path_first=bin_dir)
    assert result.returncode == 0, result.stderr
    assert "unshare" not in result.stderr and "mkfs.btrfs" not in result.stderr
    plan = plan_of(result)
    assert "btrfs_write's layout" in plan["minimal"]["method"]
    assert plan["root_size"] < btrfs.FILESYSTEMS[0].min_size
    check_clean(extract_root(result))
    image = result.out / "nixos.img"
    with mounted(image, "btrfs", plan["root_offset"], writable=True) as root:
        write_as_the_guest(root)
    check_clean(extract_root(result))

"""FAT partitions inside an image file: made, read back and refilled on the host (mtools)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from make_disk_image.filesystems import vfat as fat
from make_disk_image.models import MIB, PlannedPartition
from make_disk_image.process import CommandError

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def esp(start_mib: int = 1, size_mib: int = 40) -> PlannedPartition:
    start = start_mib * MIB // 512
    return PlannedPartition(
        number=1, role="esp", start=start, end=start + size_mib * MIB // 512 - 1,
        type="C12A7328-F81F-11D2-BA4B-00A0C93EC93B", guid="1C06F03B-704E-4657-B9CD-681A087A2FDC",
        name="ESP", flags=("boot",), filesystem="vfat", label="ESP", mountpoint="/boot",
    )  # fmt: skip


def mtools(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=ENV).stdout


def image(tmp_path: Path, name: str, part: PlannedPartition | None = None) -> Path:
    """A 48 MiB disk; with `part`, its FAT filesystem made as prepare and finish do."""
    path = tmp_path / name
    path.write_bytes(b"")
    fat.make_all(path, [part] if part else [], {1: "1C06F03B"}, deterministic=True,
                 disk_size=48 * MIB)
    return path


def fsck(img: Path, part: PlannedPartition, tmp_path: Path) -> None:
    copy = tmp_path / "part.fat"
    with img.open("rb") as src:
        src.seek(part.offset_bytes)
        copy.write_bytes(src.read(part.size_bytes))
    proc = subprocess.run(["fsck.vfat", "-n", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def populate(img: Path, part: PlannedPartition) -> None:
    """What a bootloader installer leaves, written with mtools as the guest's kernel would."""
    drive = f"{img}@@{part.offset_bytes}"
    mtools("mmd", "-i", drive, "::/EFI", "::/EFI/systemd", "::/EFI/Linux", "::/loader",
           "::/loader/entries")
    for rel, data in (("EFI/systemd/systemd-bootx64.efi", b"MZ" * 5000),
                      ("loader/loader.conf", b"timeout 0\n"),
                      ("loader/random-seed", os.urandom(32)),
                      ("loader/entries/nixos-generation-1.conf", b"title NixOS\n")):
        src = img.parent / "src" / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        mtools("mcopy", "-i", drive, str(src), f"::/{rel}")


def test_made_at_an_offset_with_the_partitions_geometry(tmp_path: Path) -> None:
    part = esp()
    img = image(tmp_path, "disk.img", part)
    fsck(img, part, tmp_path)
    info = mtools("minfo", "-i", f"{img}@@{part.offset_bytes}", "::")
    assert "hidden sectors: 2048" in info
    assert "serial number: 1C06F03B" in info
    assert 'label="ESP        "' in info
    # Nothing outside the partition was written.
    with img.open("rb") as fh:
        assert fh.read(part.offset_bytes) == bytes(part.offset_bytes)


def test_read_back_leaves_out_the_random_seed_when_deterministic(tmp_path: Path) -> None:
    part = esp()
    img = image(tmp_path, "disk.img", part)
    populate(img, part)
    content = fat.extract(img, part, tmp_path / "copy", deterministic=True)
    assert content.directories == ("EFI", "EFI/Linux", "EFI/systemd", "loader",
                                   "loader/entries")
    assert content.files == ("EFI/systemd/systemd-bootx64.efi",
                             "loader/entries/nixos-generation-1.conf", "loader/loader.conf")
    assert content.dropped == ("loader/random-seed",)
    kept = fat.extract(img, part, tmp_path / "copy-nondet", deterministic=False)
    assert "loader/random-seed" in kept.files and kept.dropped == ()


def test_an_empty_partition_reads_back_empty(tmp_path: Path) -> None:
    part = esp()
    img = image(tmp_path, "disk.img", part)
    content = fat.extract(img, part, tmp_path / "copy", deterministic=True)
    assert (content.directories, content.files) == ((), ())


def test_refill_is_sorted_and_repeatable(tmp_path: Path) -> None:
    part = esp()
    guest_disk = image(tmp_path, "guest.img", part)
    populate(guest_disk, part)
    content = fat.extract(guest_disk, part, tmp_path / "copy", deterministic=True)
    images = []
    for n in (1, 2):
        img = image(tmp_path, f"final-{n}.img", part)
        fat.fill(img, part, content, deterministic=True)
        fsck(img, part, tmp_path)
        images.append(img.read_bytes())
    assert images[0] == images[1]
    drive = f"{tmp_path / 'final-1.img'}@@{part.offset_bytes}"
    assert mtools("mtype", "-i", drive, "::/loader/loader.conf") == "timeout 0\n"
    assert "1980-01-01" in mtools("mdir", "-i", drive, "::/loader")
    assert "random-seed" not in mtools("mdir", "-/", "-b", "-i", drive, "::/")


def test_volume_ids_are_fixed_or_random() -> None:
    part = esp()
    assert fat.volume_id(part, deterministic=True) == "1C06F03B"
    randoms = {fat.volume_id(part, deterministic=False) for _ in range(4)}
    assert len(randoms) > 1 and all(len(v) == 8 for v in randoms)


def test_the_fat_type_follows_the_partitions_size(tmp_path: Path) -> None:
    """As on the partition's device: mkfs.vfat sizes by what follows the offset."""
    small, large = esp(1, 40), esp(1, 600)
    for part, kind in ((small, "FAT16"), (large, "FAT32")):
        img = tmp_path / f"{kind}.img"
        img.write_bytes(b"")
        fat.make_all(img, [part], {1: "1C06F03B"}, deterministic=True, disk_size=700 * MIB)
        with img.open("rb") as fh:
            fh.seek(part.offset_bytes)
            boot = fh.read(512)
        assert kind.encode() in boot


def fake_mdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str, status: int) -> None:
    """An `mdir` first on PATH that says `stderr` and exits with `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mdir"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(stderr)} >&2\nexit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("stderr", [
    'mdir: File "::/EFI" not found',  # another path than the root
    "init :: device not found",
    "Can't open /build/nixos.raw: No such file or directory\nFile \"::/\" not found",
])  # fmt: skip
def test_only_mtools_empty_root_message_reads_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str
) -> None:
    """Any other mdir failure that mentions "not found" is an error naming the step."""
    part = esp()
    img = image(tmp_path, "disk.img", part)
    fake_mdir(tmp_path, monkeypatch, stderr, 1)
    with pytest.raises(CommandError) as err:
        fat.extract(img, part, tmp_path / "copy", deterministic=True)
    assert err.value.step == "FAT: read ESP" and "not found" in str(err.value)


def test_mtools_empty_root_message_reads_as_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = esp()
    img = image(tmp_path, "disk.img", part)
    fake_mdir(tmp_path, monkeypatch, 'mdir: File "::/" not found', 1)
    content = fat.extract(img, part, tmp_path / "copy", deterministic=True)
    assert (content.directories, content.files) == ((), ())

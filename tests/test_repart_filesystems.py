"""The filesystem makers on their own: sizes, labels, bit-identical bytes."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from imagecheck import Inode, cat, dumpe2fs, e2fsck_clean, ls, run, stat
from test_btrfs_write import check_clean, compare, crc, needs_crc
from test_other_filesystems import mounted

from make_disk_image.filesystems import crc32c
from make_disk_image.filesystems.btrfs_write import needed_size, write_btrfs
from make_disk_image.models import Entry
from make_disk_image.process import StepError
from make_disk_image.repart import filesystems
from make_disk_image.tarstream import run_fed

FS_UUID = uuid.UUID("7981aaf4-2a9a-4f86-9f1f-5b42c8f28bbf")


def test_data_bytes_skips_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"x" * 8192)
    assert filesystems.data_bytes(path) in (8192, 12288)


def test_fat_label() -> None:
    assert filesystems.fat_label("esp") == "ESP"
    assert filesystems.fat_label("a-very-long-label") == "A-VERY-LONG"



def made_twice(make: Callable[..., None], where: Path, size: int, entries: list[Entry], *,
               label: str) -> Path:
    """`make` of `entries` into two files under `where`, which must be the same bytes;
    the first."""
    where.mkdir()
    made = [where / name for name in ("a", "b")]
    for target in made:
        make(target, size, entries, fs_uuid=FS_UUID, label=label, step="test")
    digests = {hashlib.sha256(target.read_bytes()).hexdigest() for target in made}
    assert len(digests) == 1
    return made[0]


def test_ext4_twice_the_same_bytes(tmp_path: Path) -> None:
    """The engine's writer fills repart's ext4: the same bytes twice, clean, with
    metadata checksums, the entries' owners and modes, repart's label and UUID."""
    entries = [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
               Entry("etc/hello", "file", 0o640, 1000, 100, data=b"hello\n", size=6)]
    image = made_twice(filesystems.make_ext4, tmp_path / "ext4", 8 << 20, entries,
                       label="root")
    assert e2fsck_clean(image, 0).returncode == 0
    fields = dumpe2fs(image, 0)
    assert "metadata_csum" in fields["Filesystem features"].split()
    assert (fields["Filesystem volume name"], fields["Filesystem UUID"]) == ("root", str(FS_UUID))
    assert (fields["Inode size"], fields["Reserved block count"]) == ("256", "0")
    assert cat(image, 0, "/etc/hello") == "hello\n"
    assert stat(image, 0, "/etc/hello") == Inode(0o100640, 1000, 100, 6)
    guess = filesystems.guess_ext4_size(tmp_path, entries, fs_uuid=FS_UUID, label="root",
                                        step="test")
    assert 1 << 20 < guess < 64 << 20


def made_in_place(make: Callable[..., None], image: Path, size: int,
                  entries: list[Entry], *, label: str) -> bytes:
    """`make` at an offset of 1 MiB inside `image`, which holds bytes of its own before
    and after: nothing written there. The filesystem's bytes."""
    offset = 1 << 20
    marker = b"not the filesystem's" * 50
    with image.open("wb") as f:
        f.write(marker)
        f.seek(offset + size)
        f.write(marker)
    make(image, size, entries, fs_uuid=FS_UUID, label=label, step="test", offset=offset)
    data = image.read_bytes()
    assert data[:len(marker)] == marker and data[len(marker):offset].strip(b"\0") == b""
    assert data[offset + size:] == marker
    return data[offset:offset + size]


def test_ext4_in_place_leaves_the_rest_of_the_image(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    entries = [Entry("", "dir", 0o755), Entry("a", "file", 0o644, data=b"x" * 9000, size=9000)]
    made_in_place(filesystems.make_ext4, image, 8 << 20, entries, label="root")
    assert e2fsck_clean(image, 1 << 20).returncode == 0
    assert cat(image, 1 << 20, "/a") == "x" * 9000


def one_directory(entries: int) -> list[Entry]:
    return [Entry("", "dir", 0o755), Entry("d", "dir", 0o755),
            *[Entry(f"d/entry-{n:06}.conf", "file", 0o644, data=b"%d\n" % n, size=len(b"%d\n" % n))
              for n in range(entries)]]


def test_a_large_directory_is_written_once_then_indexed(tmp_path: Path) -> None:
    """`mke2fs -d` adds each entry by scanning its directory (quadratic: 40,000 entries
    in one directory took 110 s) and leaves it linear, unindexed. The engine's writer
    writes it once, and e2fsck -D indexes it: an htree directory with every entry."""
    target = tmp_path / "big.ext4"
    filesystems.make_ext4(target, 64 << 20, one_directory(3000), fs_uuid=FS_UUID,
                          label="root", step="test")
    assert e2fsck_clean(target, 0).returncode == 0
    assert "Flags: 0x81000" in run("debugfs", "-R", "stat /d", str(target))  # extents, index
    htree = run("debugfs", "-R", "htree /d", str(target))
    assert "Root node dump:" in htree and "Number of entries (count):" in htree
    assert len(ls(target, 0, "/d")) == 3000
    assert cat(target, 0, "/d/entry-002999.conf") == "2999\n"


def test_swap(tmp_path: Path) -> None:
    target = tmp_path / "swap"
    filesystems.make_swap(target, 16 << 20, fs_uuid=FS_UUID, label="swap", step="test")
    out = subprocess.run(["blkid", "-p", "-o", "export", target], capture_output=True,
                         text=True, check=True).stdout
    assert f"UUID={FS_UUID}" in out and "TYPE=swap" in out


def test_tree_blocks_count_what_mke2fs_writes(tmp_path: Path) -> None:
    """Minimize=guess counts instead of filling: the count must be what repart 254's
    trial, `mkfs.ext4 -d`, writes (zero blocks left as holes, long symlinks,
    directories, inode table), over the empty filesystem the guess makes."""
    entries = [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
               Entry("etc/hello", "file", 0o644, data=b"x\n", size=2),
               Entry("etc/zeros", "file", 0o644, data=bytes(3 * 4096) + b"end", size=12291),
               Entry("etc/long", "symlink", 0o777, link="/" + "a" * 70, size=71),
               Entry("etc/short", "symlink", 0o777, link="hello", size=5),
               *[Entry(f"etc/d{i:03}-{'n' * 40}", "dir", 0o755) for i in range(200)]]
    counted = filesystems.tree_blocks(entries)
    made = {}
    for name, features, tree in [("empty", "^metadata_csum,uninit_bg", None),
                                 ("root only", "^metadata_csum,uninit_bg", entries[:1]),
                                 ("csum root only", "metadata_csum", entries[:1]),
                                 ("csum filled", "metadata_csum", entries)]:
        target = tmp_path / "trial.ext4"
        fill = ("-d", "-") if tree is not None else ()
        argv = filesystems.mkfs_ext4_command(target, filesystems.TRIAL_SIZE, fs_uuid=FS_UUID,
                                             label="root", features=features, extra=fill,
                                             offset=None)
        run_fed(argv, tree or [], step="test", env={"SOURCE_DATE_EPOCH": "1"})
        made[name] = filesystems.data_bytes(target)
        target.unlink()
    # The guess's empty trial holds what repart's trial of the root alone holds.
    assert made["empty"] == made["root only"]
    # With metadata checksums, directory blocks keep a tail: the count allows for it.
    assert made["csum filled"] - made["csum root only"] == counted * 4096


@pytest.mark.parametrize(("fmt", "size", "detail", "extra"), [
    # The engine's writer runs out of blocks.
    ("ext4", 8, r"filling it: .*", ()),
    ("btrfs", 32, r"btrfs_write needed at least \d+ MiB", ()),
    # mkfs.btrfs grows its file to hold the tree rather than failing.
    ("btrfs", 32, r"the filesystem needs \d+ MiB", ("--nodesize", "16384")),
])
def test_too_small_names_the_size_option(tmp_path: Path, fmt: str, size: int,
                                         detail: str, extra: tuple[str, ...]) -> None:
    big = b"x" * ((size + 8) << 20)
    entries = [Entry("", "dir", 0o755), Entry("big", "file", 0o644, data=big, size=len(big))]
    make = {"ext4": filesystems.make_ext4, "btrfs": filesystems.make_btrfs}[fmt]
    with pytest.raises(StepError, match=rf"partition's {size} MiB do not hold its files; "
                       rf"raise its SizeMinBytes \({detail}\)"):
        make(tmp_path / f"small.{fmt}", size << 20, entries, fs_uuid=FS_UUID, label="home",
             step="test", extra=extra)


def btrfs_entries(tmp_path: Path) -> list[Entry]:
    """A file of each size class, owners other than root, a symlink and a hard link."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 8192 + b"tail")
    return [Entry("", "dir", 0o755), Entry("etc", "dir", 0o755),
            Entry("etc/hello", "file", 0o640, 1000, 100, data=b"hello\n", size=6),
            Entry("etc/big", "file", 0o444, source=str(big), size=big.stat().st_size),
            Entry("etc/same", "hardlink", 0o444, link="etc/big"),
            Entry("etc/alias", "symlink", 0o777, link="hello"),
            Entry("srv", "dir", 0o1777, 0, 100)]


@pytest.fixture
def no_namespaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `unshare` first on PATH that fails as a sandbox refusing user namespaces does."""
    bin_dir = tmp_path / "no-userns"
    bin_dir.mkdir()
    (bin_dir / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    (bin_dir / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _commands(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "] $ " in r.getMessage()]


@needs_crc
def test_btrfs_by_the_writer_without_a_namespace(tmp_path: Path, no_namespaces: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The engine's writer makes repart's btrfs where user namespaces are refused: no
    command at all, clean with its data checksums, the same bytes twice, the entries'
    bytes, modes, owners and links, repart's label and UUID."""
    caplog.set_level(logging.INFO, logger="make_disk_image")
    entries = btrfs_entries(tmp_path)
    image = made_twice(filesystems.make_btrfs, tmp_path / "btrfs", 256 << 20, entries,
                       label="home")
    assert _commands(caplog) == []
    assert image.stat().st_size == 256 << 20
    check_clean(image)
    shown = run("btrfs", "inspect-internal", "dump-super", str(image))
    assert f"fsid\t\t\t{FS_UUID}" in shown and "label\t\t\thome" in shown
    if os.geteuid() == 0:
        with mounted(image, "btrfs") as root:
            compare(root, entries)
            assert (root / "etc/big").stat().st_ino == (root / "etc/same").stat().st_ino


@needs_crc
def test_btrfs_in_place_leaves_the_rest_of_the_image(tmp_path: Path) -> None:
    """In place, the writer writes the bytes it writes into a file of its own."""
    entries, size = btrfs_entries(tmp_path), 256 << 20
    data = made_in_place(filesystems.make_btrfs, tmp_path / "disk.raw", size, entries,
                         label="home")
    alone = tmp_path / "alone.btrfs"
    filesystems.make_btrfs(alone, size, entries, fs_uuid=FS_UUID, label="home", step="test")
    assert data == alone.read_bytes()


@pytest.mark.parametrize("offset", [None, 1 << 20])
def test_btrfs_mkfs_options_keep_mkfs_btrfs(tmp_path: Path, offset: int | None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """`mkfsOptions` only mean something to mkfs.btrfs: it makes the filesystem, with
    them, and the log says why; in place, its file is copied in."""
    caplog.set_level(logging.INFO, logger="make_disk_image")
    entries = [Entry("", "dir", 0o755),
               Entry("hello", "file", 0o644, data=b"hello\n", size=6)]
    size = 256 << 20
    image = tmp_path / "disk.raw"
    if offset is not None:
        with image.open("wb") as f:
            f.truncate(offset + size)
    filesystems.make_btrfs(image, size, entries, fs_uuid=FS_UUID, label="home", step="test",
                           work=tmp_path, extra=("--nodesize", "32768"), offset=offset)
    assert any("mkfsOptions for btrfs (--nodesize 32768): mkfs.btrfs --rootdir makes it"
               in r.getMessage() for r in caplog.records)
    assert any("mkfs.btrfs" in c and "--nodesize 32768" in c for c in _commands(caplog))
    part = tmp_path / "part.btrfs"
    part.write_bytes(image.read_bytes()[offset or 0:(offset or 0) + size])
    check_clean(part)
    shown = run("btrfs", "inspect-internal", "dump-super", str(part))
    assert "nodesize\t\t32768" in shown and f"fsid\t\t\t{FS_UUID}" in shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw", "part.btrfs"]


@needs_crc
def test_btrfs_guess_is_the_writers_bytes_and_a_half(tmp_path: Path, no_namespaces: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Minimize=guess for btrfs, as repart guesses: the bytes the filesystem holds once
    written on a sparse 1 TiB file (what that file allocates), plus half; counted by the
    writer into /dev/null, no command run, and a filesystem of that size checks clean."""
    caplog.set_level(logging.INFO, logger="make_disk_image")
    entries = btrfs_entries(tmp_path)
    entries += [Entry(f"srv/f{i}", "file", 0o644, data=os.urandom(3000 + i), size=3000 + i)
                for i in range(500)]
    guess = filesystems.guess_btrfs_size(entries, step="test")
    assert _commands(caplog) == []
    trial = tmp_path / "trial.btrfs"
    with trial.open("wb") as f:
        f.truncate(1 << 40)
    write_btrfs(trial, 0, 1 << 40, entries, label="home", uuid=str(FS_UUID), crc=crc())
    held = trial.stat().st_blocks * 512
    trial.unlink()
    assert guess == max(held + held // 2, needed_size(entries, crc=crc()).end)
    image = tmp_path / "guessed.btrfs"
    filesystems.make_btrfs(image, guess, entries, fs_uuid=FS_UUID, label="home", step="test")
    check_clean(image)


def test_btrfs_guess_refusals_name_the_fix() -> None:
    problem = filesystems.guess_btrfs_problem(("--nodesize", "32768"))
    assert problem is not None and "mkfsOptions" in problem and "SizeMinBytes" in problem
    if crc32c.provider() is not None:
        assert filesystems.guess_btrfs_problem(()) is None

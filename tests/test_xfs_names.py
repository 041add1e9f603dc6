"""xfs names a protofile cannot hold: same-hash placeholders, written back by xfs_db.

The hash is checked against xfs_db's own `hash` command, and whole filesystems made from
trees of such names are read back through the kernel and checked by `xfs_repair -n`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from make_disk_image.filesystems.xfs_names import (
    PLACEHOLDER_BYTES,
    _unprint,
    da_hash,
    placeholder,
    printed,
    token_safe,
)
from make_disk_image.models import Entry

NAMES = [b"abc", b"a b", b"Librem 5 Devkit.conf", b"$", b"$HOME", b":colon", b"new\nline",
         b"tab\there", b"\xff\xfe not utf-8", b"  ", b"ab ", b"x" * 255, b"a b" * 85]


@pytest.fixture(scope="module")
def xfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("xfs") / "empty.xfs"
    with image.open("wb") as fh:
        fh.truncate(300 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], check=True)
    return image


def xfs_db_hash(image: Path, name: bytes) -> int:
    out = subprocess.run([b"xfs_db", b"-r", b"-c", b"hash " + name, os.fsencode(image)],
                         check=True, capture_output=True).stdout
    return int(out.split()[-1], 16)


def test_hash_is_xfs_dbs(xfs_image: Path) -> None:
    # xfs_db's `hash` takes one token: names without white space.
    for name in [b"a", b"ab", b"abc", b"abcd", b"abcde", b"libfoo.so.1.2.3",
                 b"\xff\xfe\x80", b"y" * 255]:
        assert da_hash(name) == xfs_db_hash(xfs_image, name), name


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_placeholder_has_the_names_length_and_hash(xfs_image: Path, name: bytes) -> None:
    stand_in = placeholder(name, {b"taken"})
    if name == b"$":
        assert stand_in is None  # one byte: its hash is the byte itself
        return
    assert stand_in is not None
    assert len(stand_in) == len(name)
    assert token_safe(stand_in)
    assert da_hash(stand_in) == da_hash(name)
    assert da_hash(stand_in) == xfs_db_hash(xfs_image, stand_in)


def test_placeholder_avoids_taken_names() -> None:
    first = placeholder(b"a b c d", set())
    assert first is not None
    second = placeholder(b"a b c d", {first})
    assert second is not None and second != first
    assert da_hash(second) == da_hash(first)


def test_printed_form_is_xfs_dbs_and_reads_back() -> None:
    every = bytes(range(1, 256))
    assert _unprint(printed(every)) == every
    assert printed(b'a"b\\c d\n\x01') == '"a\\"b\\\\c d\\d\\001"'
    assert set(PLACEHOLDER_BYTES) == set(range(1, 256)) - set(b" \t\n/")


def _tree(source: Path) -> list[Entry]:
    entries = [Entry("", "dir", 0o755)]

    def add(path: str, kind: str = "file", **kw: object) -> None:
        entries.append(Entry(path, kind, 0o755 if kind == "dir" else 0o644,  # type: ignore[arg-type]
                             source=str(source) if kind == "file" else None, **kw))  # type: ignore[arg-type]

    add("dir with space", "dir")
    add("dir with space/$HOME")
    add("dir with space/new\nline")
    add("dir with space/sub dir", "dir")
    add("dir with space/sub dir/:colon")
    add("dir with space/sub dir/tab\there")
    add(os.fsdecode(b"\xff\xfe not utf-8"))
    add("link", "symlink", link="dir with space/$HOME")
    add("big", "dir")
    for i in range(600):  # a leaf-format directory: several data blocks and a hash index
        add(f"big/file {i:04d}" if i % 50 == 0 else f"big/f{i:04d}")
    add("plain.txt")
    return sorted(entries, key=lambda e: e.path.split("/"))


def test_xfs_holds_every_name(tmp_path: Path) -> None:
    from test_other_filesystems import mounted

    from make_disk_image.filesystems.xfs import make_xfs

    source = tmp_path / "a file with spaces"
    source.write_bytes(b"content\n")
    entries = _tree(source)
    image = tmp_path / "a build dir" / "root.xfs"  # its scratch files: not a token
    image.parent.mkdir()
    with image.open("wb") as fh:
        fh.truncate(300 << 20)
    make_xfs(image, entries, label="nixos", uuid=None, deterministic=True, step="t")
    check = subprocess.run(["xfs_repair", "-n", "-f", str(image)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with mounted(image, "xfs") as root:
        found = sorted(os.fsencode(p.relative_to(root)) for p in root.rglob("*"))
        assert found == sorted(os.fsencode(e.path) for e in entries if e.path)
        assert os.readlink(root / "link") == "dir with space/$HOME"
        assert (root / "dir with space/new\nline").read_bytes() == b"content\n"


def test_long_link_targets_are_refused(tmp_path: Path) -> None:
    from make_disk_image.filesystems.xfs_proto import write_protofile
    from make_disk_image.process import StepError

    ok = [Entry("", "dir", 0o755), Entry("l", "symlink", 0o777, link="y" * 336)]
    write_protofile(ok, tmp_path / "p1", tmp_path, step="t")
    too_long = [Entry("", "dir", 0o755), Entry("l", "symlink", 0o777, link="y" * 337)]
    with pytest.raises(StepError, match="337 bytes"):
        write_protofile(too_long, tmp_path / "p2", tmp_path, step="t")

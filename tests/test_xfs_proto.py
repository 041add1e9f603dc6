"""The xfs protofile: owners, modes, hard links as copies, stand-ins for what it cannot
hold (make_disk_image.filesystems.xfs_proto; the stand-ins' own tests are test_xfs_names.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from make_disk_image.filesystems.xfs_names import da_hash, token_safe
from make_disk_image.filesystems.xfs_proto import write_protofile
from make_disk_image.models import Entry


def test_protofile_names_owners_modes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_text("x")
    entries = [Entry("", "dir", 0o755), Entry("tmp", "dir", 0o1777),
               Entry("tmp/f", "file", 0o4755, 1000, 100, source=str(source)),
               Entry("tmp/h", "hardlink", 0o4755, 1000, 100, link="tmp/f"),
               Entry("l", "symlink", 0o777, link="/nix/store/x"),
               Entry("d", "file", 0o600, data=b"inline")]
    data = tmp_path / "data"
    data.mkdir()
    sticky, renames = write_protofile(entries, tmp_path / "proto", data, step="t")
    assert [e.path for e in sticky] == ["tmp"]
    assert not renames
    lines = (tmp_path / "proto").read_text().splitlines()
    assert lines[:3] == ["/dev/null", "0 0", "d--755 0 0"]
    assert "tmp d--777 0 0" in lines  # the sticky bit comes later (xfs_db)
    assert f"f -u-755 1000 100 {source}" in lines
    assert f"h -u-755 1000 100 {source}" in lines  # a hard link: the bytes again
    assert "l l--777 0 0 /nix/store/x" in lines
    assert (data / "0").read_bytes() == b"inline"


def test_what_a_token_cannot_hold_goes_in_as_a_stand_in(tmp_path: Path) -> None:
    source = tmp_path / "dir with space" / "src"
    source.parent.mkdir()
    source.write_text("x")
    entries = [Entry("", "dir", 0o755), Entry("a b", "dir", 0o755),
               Entry("a b/$HOME", "file", 0o644, source=str(source)),
               Entry("a b/:c", "symlink", 0o777, link="to a b"),
               Entry(os.fsdecode(b"\xff z"), "file", 0o644, source=str(source))]
    data = tmp_path / "data"
    data.mkdir()
    _, renames = write_protofile(entries, tmp_path / "proto", data, step="t")
    # The protofile's own separators; "$" tokens end directories.
    tokens = [t for t in re.split(rb"[ \t\n]+", (tmp_path / "proto").read_bytes()) if t]
    assert all(token_safe(t) for t in tokens if t != b"$")
    assert tokens.count(b"$") == 3
    assert str(source).encode() not in tokens  # read through a symlink of a plain name
    assert os.readlink(data / "source-0") == str(source)
    assert b"source-0" in tokens  # relative: mkfs.xfs runs in the data directory
    assert set(renames.names) == {"", "a b"}
    for names in renames.names.values():
        for stand_in, real in names.items():
            assert stand_in in tokens
            assert (len(stand_in), da_hash(stand_in)) == (len(real), da_hash(real))
    assert list(renames.names["a b"].values()) == [b":c"]
    assert b"$HOME" in tokens  # a "$" that is not the whole token is a name
    assert renames.targets == {"a b/:c": b"to a b"}
    assert b"toxaxb" in tokens


def test_a_one_byte_name_gets_a_stand_in_of_another_hash(tmp_path: Path) -> None:
    entries = [Entry("", "dir", 0o755), Entry("$", "dir", 0o755), Entry("x", "dir", 0o755)]
    _, renames = write_protofile(entries, tmp_path / "proto", tmp_path, step="t")
    assert renames.names == {"": {b"y": b"$"}}
    assert renames.unhashed == {("", b"y")}

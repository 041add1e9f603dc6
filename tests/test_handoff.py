"""The contract between the phases: prepare's tree, as finish reads it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from make_disk_image.handoff import TREE, VERSION, read_tree, write_tree
from make_disk_image.models import Entry
from make_disk_image.process import StepError

NOT_UTF8 = os.fsdecode(b"caf\xe9 \n$name")


def every_kind(xchg: Path) -> list[Entry]:
    return [
        Entry("", "dir", 0o755),
        Entry("etc", "dir", 0o700, uid=7, gid=8, mtime=5),
        Entry("etc/NIXOS", "file", 0o644, data=b"", size=0),
        Entry("etc/bytes", "file", 0o600, data=b"\x00\xff\n", size=3),
        Entry("nix/store/a-pkg/bin/tool", "file", 0o555, source="/nix/store/a-pkg/bin/tool",
              size=12),
        Entry(f"nix/store/a-pkg/{NOT_UTF8}", "file", 0o444,
              source=f"/nix/store/a-pkg/{NOT_UTF8}", size=1),
        Entry("nix/store/a-pkg/copy", "hardlink", 0o555, source="/nix/store/a-pkg/copy",
              link="nix/store/a-pkg/bin/tool", size=12),
        Entry("nix/var/nix/db/db.sqlite", "file", 0o644, source=f"{xchg}/nix-db/db.sqlite",
              size=4096),
        Entry("run/fifo", "fifo", 0o600),
        Entry("dev/console", "chardev", 0o600, device=(5, 1)),
        Entry("sbin/init", "symlink", 0o777, link="/nix/store/a-pkg/bin/tool", size=25),
    ]


def test_the_tree_comes_back_as_prepare_wrote_it(tmp_path: Path) -> None:
    xchg = tmp_path / "xchg"
    xchg.mkdir()
    entries = every_kind(xchg)
    path = write_tree(xchg, entries, "inputs-1")
    assert read_tree(path, "inputs-1", step="finish") == entries
    # Sources prepare made in xchg/ are written relative to it: both sides resolve them.
    rows = json.loads(path.read_text())["entries"]
    assert [r[6] for r in rows if r[0] == "nix/var/nix/db/db.sqlite"] == ["nix-db/db.sqlite"]
    moved = tmp_path / "elsewhere"
    xchg.rename(moved)
    back = read_tree(moved / TREE, "inputs-1", step="finish")
    assert back[7].source == f"{moved}/nix-db/db.sqlite"
    assert back[4].source == "/nix/store/a-pkg/bin/tool"


def test_a_tree_from_another_spec_is_refused(tmp_path: Path) -> None:
    path = write_tree(tmp_path, every_kind(tmp_path), "inputs-1")
    with pytest.raises(StepError, match="staged from another spec.*same spec"):
        read_tree(path, "inputs-2", step="finish")


def test_a_tree_of_another_version_or_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="run `make-disk-image prepare` first"):
        read_tree(tmp_path / TREE, "inputs-1", step="finish")
    path = write_tree(tmp_path, every_kind(tmp_path), "inputs-1")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": VERSION - 1}))
    with pytest.raises(StepError, match="another version of make-disk-image"):
        read_tree(path, "inputs-1", step="finish")

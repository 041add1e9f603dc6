"""tree_order: parents first, hard links to earlier files, names as bytes."""

from __future__ import annotations

import pytest

from make_disk_image.filesystems.tree_order import Numbering, split
from make_disk_image.models import Entry


class Refused(Exception):
    pass


def test_split_gives_the_parent_and_the_name_as_bytes() -> None:
    assert split("a/b/c\udcff") == ("a/b", b"c\xff")
    assert split("top") == ("", b"top")


def test_entries_resolve_to_their_parent_and_linked_file() -> None:
    numbering: Numbering[int] = Numbering(1, Refused)
    tree = [Entry("d", "dir", 0o755), Entry("d/f", "file", 0o644),
            Entry("d/g", "hardlink", 0o644, link="d/f"),
            Entry("h", "hardlink", 0o644, link="/d/g")]
    placed = []
    for ino, entry in enumerate(tree, start=2):
        parent, name, linked = numbering.place(entry)
        placed.append((parent, name, linked))
        numbering.add(entry, linked if linked is not None else ino)
    assert placed == [(1, b"d", None), (2, b"f", None), (2, b"g", 3), (1, b"h", 3)]


def test_out_of_order_entries_raise_the_writers_error() -> None:
    numbering: Numbering[int] = Numbering(1, Refused)
    with pytest.raises(Refused, match="comes before its directory /d"):
        numbering.place(Entry("d/f", "file", 0o644))
    with pytest.raises(Refused, match="no earlier file"):
        numbering.place(Entry("g", "hardlink", 0o644, link="later"))
    numbering.add(Entry("d", "dir", 0o755), 2)
    with pytest.raises(Refused, match="no earlier file"):
        numbering.place(Entry("g", "hardlink", 0o644, link="d"))  # a directory

"""A parents-first tree numbered into inodes: what every writer of a whole filesystem
from entries (ext4_fill, btrfs_fstree) asks of each entry before it writes it: its
parent directory's inode, its name as bytes, and for a hard link the inode it shares.
The entries come in tree order (staging.Tree.ordered), so one pass resolves them all.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from make_disk_image.models import Entry

Inode = TypeVar("Inode")


def split(path: str) -> tuple[str, bytes]:
    """A tree path's parent path and its last name, as the bytes a directory holds."""
    parent, _, name = path.rpartition("/")
    return parent, os.fsencode(name)


class Numbering(Generic[Inode]):
    """The inodes given so far, by path: directories (parents) and everything a hard link
    may point at. `error`: the writer's own exception type, for its callers' messages."""

    def __init__(self, root: Inode, error: type[Exception]) -> None:
        self.dirs: dict[str, Inode] = {"": root}
        self.files: dict[str, Inode] = {}
        self.error = error

    def place(self, entry: Entry) -> tuple[Inode, bytes, Inode | None]:
        """`entry`'s parent inode, its name, and for a hard link its file's inode."""
        parent_path, name = split(entry.path)
        parent = self.dirs.get(parent_path)
        if parent is None:
            raise self.error(f"/{entry.path} comes before its directory /{parent_path}")
        if entry.kind != "hardlink":
            return parent, name, None
        linked = self.files.get((entry.link or "").strip("/"))
        if linked is None:
            raise self.error(f"/{entry.path} is a hard link to {entry.link!r}, which is "
                             "no earlier file of the tree")
        return parent, name, linked

    def add(self, entry: Entry, inode: Inode) -> None:
        """`entry` now has `inode`: a directory as a parent, anything else as a file."""
        (self.dirs if entry.kind == "dir" else self.files)[entry.path] = inode

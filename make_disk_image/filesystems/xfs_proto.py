"""mkfs.xfs's protofile for the image tree (xfsprogs' mkfs/proto.c format).

A line per entry, in tree order: its name, a mode field (type letter, setuid and setgid
letters, three octal digits: no sticky bit), owner and group, then what it holds (a
file's source path, a symlink's target, a device's numbers); "$" ends a directory.
Tokens are separated by white space and cannot be quoted: a name, target or source path
that is not a plain token goes in as a stand-in (make_disk_image.filesystems.xfs_names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from make_disk_image.filesystems.xfs_names import (
    INLINE_LINK_MAX,
    SEPARATORS,
    Renames,
    any_placeholder,
    placeholder,
    token_safe,
)
from make_disk_image.models import Entry
from make_disk_image.process import StepError

# Protofile mode letters by entry kind.
_PROTO_TYPES = {"file": "-", "hardlink": "-", "dir": "d", "symlink": "l", "chardev": "c",
                "blockdev": "b", "fifo": "p"}


def _proto_name(entry: Entry, taken: set[bytes], renames: Renames, step: str) -> bytes:
    """The entry's name in the protofile: its own, or a placeholder written back later."""
    parent, _, base = entry.path.rpartition("/")
    name = os.fsencode(base)
    if token_safe(name):
        return name
    stand_in = placeholder(name, taken)
    if stand_in is None:
        # Only a small directory can take it (xfs_names.write_back checks).
        stand_in = any_placeholder(name, taken)
        if stand_in is None:
            raise StepError(
                step,
                f"/{entry.path}: the name {name!r} cannot be written in an xfs protofile; "
                "rename it or use fsType ext4 or btrfs",
            )
        renames.unhashed.add((parent, stand_in))
    taken.add(stand_in)
    renames.names.setdefault(parent, {})[stand_in] = name
    return stand_in


def _proto_link(entry: Entry, renames: Renames, step: str) -> bytes:
    assert entry.link is not None
    target = os.fsencode(entry.link)
    if len(target) > INLINE_LINK_MAX:
        raise StepError(
            step,
            f"/{entry.path}: its symlink target is {len(target)} bytes; xfsprogs 6.1's "
            f"protofile writes targets over {INLINE_LINK_MAX} bytes without their block "
            "header (xfs_repair junks them); shorten it or use fsType ext4 or btrfs",
        )
    if token_safe(target):
        return target
    renames.targets[entry.path] = target
    stand_in = bytes(b if b not in SEPARATORS else ord("x") for b in target)
    return b"x" + stand_in[1:] if not token_safe(stand_in) else stand_in


def _proto_source(source: str, data_dir: Path) -> bytes:
    """A file's path as a token: its own, or a symlink to it with a plain name."""
    token = os.fsencode(str(source))
    if token_safe(token):
        return token
    # Relative: mkfs.xfs runs in data_dir, whose own path may not be a plain token.
    alias = f"source-{len(os.listdir(data_dir))}"
    (data_dir / alias).symlink_to(source)
    return alias.encode()


def write_protofile(entries: Sequence[Entry], proto: Path, data_dir: Path, *,
                    step: str) -> tuple[list[Entry], Renames]:
    """mkfs.xfs's protofile for `entries`; returns the sticky ones (set afterwards) and
    the names and link targets to write back (xfs_names.write_back)."""
    by_path = {e.path: e for e in entries}
    children: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.path:
            parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
            children.setdefault(parent, []).append(entry)
    sticky = [e for e in entries if e.mode & 0o1000]
    renames = Renames()
    lines = [b"/dev/null", b"0 0"]

    def mode_field(entry: Entry, kind: str) -> bytes:
        return (f"{_PROTO_TYPES[kind]}{'u' if entry.mode & 0o4000 else '-'}"
                f"{'g' if entry.mode & 0o2000 else '-'}{entry.mode & 0o777:03o}").encode()

    def emit(entry: Entry, name: bytes) -> None:
        kind = entry.kind
        if kind == "hardlink":
            # Protofiles have no hard links: the first name's bytes again.
            assert entry.link is not None
            first = by_path[entry.link]
            entry = Entry(entry.path, "file", first.mode, first.uid, first.gid,
                          source=first.source, data=first.data)
            kind = "file"
        head = b" ".join([name, mode_field(entry, kind), str(entry.uid).encode(),
                          str(entry.gid).encode()]).lstrip()
        if kind == "file":
            if entry.data is not None:
                # Relative, as a source's alias: read in data_dir.
                body = str(len(os.listdir(data_dir)))
                (data_dir / body).write_bytes(entry.data)
                lines.append(head + b" " + body.encode())
            else:
                assert entry.source is not None
                lines.append(head + b" " + _proto_source(entry.source, data_dir))
        elif kind == "symlink":
            lines.append(head + b" " + _proto_link(entry, renames, step))
        elif kind in ("chardev", "blockdev"):
            assert entry.device is not None
            lines.append(head + f" {entry.device[0]} {entry.device[1]}".encode())
        else:
            lines.append(head)
        if kind == "dir":
            inside = children.get(entry.path, [])
            taken = {n for n in (os.fsencode(c.path.rpartition("/")[2]) for c in inside)
                     if token_safe(n)}
            for child in inside:
                emit(child, _proto_name(child, taken, renames, step))
            lines.append(b"$")

    emit(by_path[""], b"")
    lines.append(b"$")
    proto.write_bytes(b"\n".join(lines) + b"\n")
    return sticky, renames

"""xfs names and link targets a protofile cannot hold, written in place afterwards.

mkfs.xfs -p (xfsprogs 6.1's mkfs/proto.c) reads its protofile as tokens separated by
space, tab or newline; a token starting with ':' begins a comment and a token "$" ends
a directory, with no quoting. A store can hold every other name too ('Librem 5
Devkit.conf', fonts' names). Such a name goes into the protofile as a placeholder of the
same length whose xfs directory hash (xfs_da_hashname) is the same, so the directory's
hash index stays right; after mkfs, xfs_db writes the real bytes over the placeholder's
(`write NAME.name "..."`, which takes the bytes between the quotes as they are and
updates the block's CRC). A symlink target gets a same-length placeholder the same way.

The hash is XOR-linear in the name's bytes: byte t from the end lands at bit 7t (mod
32), rotated. So a placeholder is the name with its unsafe bytes replaced, then a few
more bytes changed to cancel the hash difference: a linear system over GF(2), solved
once, whose solutions are tried in a fixed order until every byte is safe and the name
is free in its directory. The result depends on the names only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from make_disk_image import process
from make_disk_image.process import StepError

HASH_BITS = 32
# Bytes the protofile reads as separators; ':' starts a comment only at a token's start.
SEPARATORS = frozenset(b" \t\n")
# A placeholder's bytes: any a name may hold but the protofile's separators (it is
# found again by its printed form, never typed into xfs_db).
PLACEHOLDER_BYTES = bytes(sorted(set(range(1, 256)) - SEPARATORS - {ord("/")}))
MAX_TRIES = 1 << 16
# The longest symlink target xfs keeps in the inode (512-byte v5 inodes); a longer one
# is written in blocks, which xfsprogs 6.1's protofile writes without their header.
INLINE_LINK_MAX = 336


def da_hash(name: bytes) -> int:
    """xfs_da_hashname: byte t from the end XORed in at bit 7t mod 32, rotated."""
    value = 0
    for t, byte in enumerate(reversed(name)):
        shift = 7 * t % HASH_BITS
        value ^= ((byte << shift) | (byte >> (HASH_BITS - shift))) & 0xFFFFFFFF
    return value


def token_safe(token: bytes) -> bool:
    """Whether `token` can be written in a protofile as it is."""
    return bool(token) and not SEPARATORS & set(token) and not token.startswith(b":") \
        and token != b"$"


def _solve(columns: list[int], target: int) -> tuple[int, list[int]] | None:
    """x with XOR of columns[i] for set bits i of x == target, and the null space's
    basis; columns are 32-bit values. None when there is no solution."""
    pivots: list[tuple[int, int, int]] = []  # (pivot bit, reduced column, combination)
    basis: list[int] = []
    for i, column in enumerate(columns):
        combo = 1 << i
        for bit, reduced, used in pivots:
            if column >> bit & 1:
                column ^= reduced
                combo ^= used
        if column:
            pivots.append((column.bit_length() - 1, column, combo))
        else:
            basis.append(combo)
    solution = 0
    for bit, reduced, used in sorted(pivots, reverse=True):
        if target >> bit & 1:
            target ^= reduced
            solution ^= used
    return (solution, basis) if target == 0 else None


def _candidates(name: bytes) -> Iterator[bytes]:
    """Names of `name`'s length and hash, unsafe bytes replaced, in a fixed order."""
    base = bytes(b if b in PLACEHOLDER_BYTES else ord("x") for b in name)
    # The changed bytes are the last ones: 5 consecutive positions cover all 32 bits.
    free = list(range(len(name) - 1, max(-1, len(name) - 13), -1))
    columns = []
    for position in free:
        t = len(name) - 1 - position
        for bit in range(8):
            shift = (7 * t + bit) % HASH_BITS
            columns.append(1 << shift)
    solved = _solve(columns, da_hash(name) ^ da_hash(base))
    if solved is None:
        return
    solution, basis = solved
    for n in range(min(MAX_TRIES, 1 << len(basis))):
        x = solution
        for i, vector in enumerate(basis):
            if n >> i & 1:
                x ^= vector
        out = bytearray(base)
        for k, position in enumerate(free):
            out[position] ^= (x >> (8 * k)) & 0xFF
        yield bytes(out)


def placeholder(name: bytes, taken: set[bytes]) -> bytes | None:
    """A protofile-safe name of `name`'s length and xfs hash, not in `taken`; None if
    there is none (a name of one or two bytes has few of the same hash)."""
    for candidate in _candidates(name):
        if all(b in PLACEHOLDER_BYTES for b in candidate) and token_safe(candidate) \
                and candidate not in taken:
            return candidate
    return None


def any_placeholder(name: bytes, taken: set[bytes]) -> bytes | None:
    """A protofile-safe name of `name`'s length, hash aside, not in `taken`."""
    for letter in b"xyzqjkvwXYZQJKVW0123456789":
        candidate = bytes([letter]) * len(name)
        if candidate not in taken:
            return candidate
    return None


def printed(name: bytes) -> str:
    """A name as xfs_db prints a string field (db/fprint.c's fp_charns)."""
    out = []
    for byte in name:
        char = chr(byte)
        if char in "\\'\"?":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        elif 7 <= byte <= 13:
            out.append("\\" + chr(ord("a") + byte - 7))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


@dataclass
class Renames:
    """Per directory (its path in the image), placeholder -> real name; per symlink
    (its path), the real target."""

    names: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    targets: dict[str, bytes] = field(default_factory=dict)
    # (directory, placeholder) whose hash is not the real name's (a one-byte name has
    # no other name of its hash): right only in a short-form directory, which has no
    # hash index.
    unhashed: set[tuple[str, bytes]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.names or self.targets)

    def directories(self) -> set[str]:
        """Directories to enter: those with a rename or a symlink, and their parents."""
        wanted = set(self.names) | {p.rpartition("/")[0] for p in self.targets}
        for path in list(wanted):
            while path:
                path = path.rpartition("/")[0]
                wanted.add(path)
        return wanted


_FIELD = re.compile(r"^((?:u3\.sfdir3\.list|bu|du)\[(\d+)\])\.(name|inumber(?:\.i[48])?) = (.*)$")
_EXTENT = re.compile(r"^data offset (\d+) startblock \d+ \(\S+\) count (\d+)")
# Directory data blocks lie below XFS_DIR2_LEAF_OFFSET (32 GiB) in the file.
LEAF_OFFSET_BYTES = 32 << 30


def _xfs_db(image: Path, commands: list[bytes], *, write: bool, step: str) -> str:
    # Commands as bytes, passed through str as the file system encoding does (os.fsdecode
    # and the subprocess's os.fsencode give the same bytes back, names not UTF-8 too).
    argv: list[str | Path] = ["xfs_db", "-x" if write else "-r"]
    for command in commands:
        argv += ["-c", os.fsdecode(command)]
    return process.run([*argv, image], step=step).stdout.decode(errors="replace")


@dataclass(frozen=True)
class _Slot:
    commands: tuple[bytes, ...]  # how to reach the entry's block from the inode
    prefix: str  # its field, e.g. "bu[3]"


def _listing(image: Path, inode: int, block_size: int,
             step: str) -> tuple[dict[str, tuple[_Slot, int]], bool]:
    """A directory's entries: printed name -> (where its fields are, inode number), and
    whether it is short-form (held in its inode, no hash index)."""
    head = _xfs_db(image, [f"inode {inode}".encode(), b"print", b"bmap"], write=False,
                   step=step)
    slots: dict[str, tuple[_Slot, int]] = {}
    blocks: list[int] = []
    for line in head.splitlines():
        extent = _EXTENT.match(line)
        if extent and int(extent.group(1)) * block_size < LEAF_OFFSET_BYTES:
            start, count = int(extent.group(1)), int(extent.group(2))
            blocks += range(start, start + count)
    if not blocks:
        _parse_fields(head, _Slot((), ""), slots)
        return slots, True
    for block in blocks:
        reach = (f"dblock {block}".encode(),)
        text = _xfs_db(image, [f"inode {inode}".encode(), *reach, b"print"], write=False,
                       step=step)
        _parse_fields(text, _Slot(reach, ""), slots)
    return slots, False


def _parse_fields(text: str, where: _Slot, slots: dict[str, tuple[_Slot, int]]) -> None:
    names: dict[str, str] = {}
    inodes: dict[str, int] = {}
    for line in text.splitlines():
        match = _FIELD.match(line.strip())
        if not match:
            continue
        prefix, _, kind, value = match.groups()
        if kind == "name":
            names[prefix] = value
        else:
            inodes[prefix] = int(value)
    for prefix, name in names.items():
        if prefix in inodes:
            slots[name] = (_Slot(where.commands, prefix), inodes[prefix])


def write_back(image: Path, renames: Renames, *, step: str) -> None:
    """Give every placeholder in `image` (an xfs filesystem file) its real bytes."""
    if not renames:
        return
    sb = _xfs_db(image, [b"sb 0", b"print rootino blocksize"], write=False, step=step)
    fields = dict(line.split(" = ", 1) for line in sb.splitlines() if " = " in line)
    block_size = int(fields["blocksize"])
    wanted = renames.directories()
    # Top-down, by the protofile's names: a directory is entered through its parent's
    # listing before its own placeholder (if any) is replaced.
    queue: list[tuple[str, int]] = [("", int(fields["rootino"]))]
    while queue:
        path, inode = queue.pop()
        slots, short_form = _listing(image, inode, block_size, step)
        renamed = renames.names.get(path, {})
        loose = [s for d, s in renames.unhashed if d == path]
        if loose and not short_form:
            raise StepError(
                step,
                f"/{path}: holds a one-byte name {renamed[loose[0]]!r} that an xfs "
                "protofile cannot hold, in a directory too large to rename it in "
                "afterwards; rename it or use fsType ext4 or btrfs",
            )
        writes: list[tuple[int, _Slot, bytes, bytes]] = []
        for child_name, (slot, child_inode) in _children(slots):
            real = renamed.get(child_name, child_name)
            child = f"{path}/{_decode(real)}" if path else _decode(real)
            if child_name in renamed:
                writes.append((inode, slot, b"name", real))
            if child in wanted:
                queue.append((child, child_inode))
            if child in renames.targets:
                writes.append((child_inode, _Slot((), "u3"), b"symlink",
                               renames.targets[child]))
        _write_fields(image, writes, step)


def _children(slots: dict[str, tuple[_Slot, int]]) -> Iterator[tuple[bytes, tuple[_Slot, int]]]:
    for text, value in slots.items():
        raw = _unprint(text)
        if raw not in (b".", b".."):
            yield raw, value


def _unprint(text: str) -> bytes:
    """The bytes of a name xfs_db printed (the inverse of `printed`)."""
    body = text[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(ord(char))
            i += 1
        elif body[i + 1] in "01234567":
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
        elif body[i + 1] in "abcdefg":
            out.append(ord(body[i + 1]) - ord("a") + 7)
            i += 2
        else:
            out.append(ord(body[i + 1]))
            i += 2
    return bytes(out)


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _write_fields(image: Path, writes: list[tuple[int, _Slot, bytes, bytes]],
                  step: str) -> None:
    """One xfs_db run for a directory's writes: each field, reached from its inode."""
    if not writes:
        return
    commands: list[bytes] = []
    for inode, slot, attribute, value in writes:
        if b'"' in value:
            raise StepError(step, f"the name {value!r} has a '\"' and white space or a "
                            "leading ':', which neither an xfs protofile nor xfs_db can "
                            "write; rename it or use fsType ext4 or btrfs")
        target = (slot.prefix.encode() + b"." + attribute) if slot.prefix else attribute
        commands += [f"inode {inode}".encode(), *slot.commands,
                     b"write " + target + b' "' + value + b'"']
    out = _xfs_db(image, commands, write=True, step=step)
    for _, _, _, value in writes:
        if printed(value) not in out:
            raise StepError(step, f"xfs_db did not write the name {value!r}: {out.strip()}")

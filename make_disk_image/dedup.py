"""`deduplicate`: identical files of the store become one inode with several names.

What `nix-store --optimise` does to a store, done to the image's tree instead of the
builder's: regular files with the same bytes, mode and owner inside the closure's store
paths share one inode. Which name holds the inode is the first in the tree's order
(parents before children, siblings by name), so the result depends on the closure's
paths and bytes only, never on the builder's inodes: an optimised store and a plain one
give the same image.

Reading is kept small: files are grouped by size (and mode and owner) first, and only
files that share a group with another are hashed, each streamed once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.models import Entry
from make_disk_image.process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "deduplicate"
# ext2/3/4 allow at most 65,000 names for one inode (EXT4_LINK_MAX); a group with more
# identical files starts a new inode after that many (the other filesystems allow more).
MAX_LINKS = 65000
HASH_WORKERS = 4


def check_links_kept(fs_type: str, deduplicate: bool) -> None:
    """Refuse `deduplicate` where this host's tools would make the filesystem without
    its links (interface.json's `hardLinks` is what the fsType can hold at all; this is
    what the host can), before the store is read."""
    if not deduplicate:
        return
    problem = FILESYSTEMS[fs_type].links_problem(STEP)
    if problem is not None:
        raise StepError(STEP, f"argument `deduplicate`: {problem}")


@dataclass(frozen=True)
class Deduplicated:
    """What deduplication did: for the log and for the tests."""

    files: int  # regular files considered (inside the store paths)
    hashed: int  # of those, files read because another had the same size
    linked: int  # names turned into hard links
    bytes_saved: int  # apparent bytes no longer stored twice


def _digest(source: str) -> bytes:
    try:
        with open(source, "rb") as fh:
            return hashlib.file_digest(fh, "blake2b").digest()
    except OSError as exc:
        raise StepError(
            STEP, f"cannot read {source}: {exc.strerror}; make it readable by the build user"
        ) from exc


def _in_scope(path: str, roots: frozenset[str]) -> bool:
    """Whether `path` is one of `roots` (the store paths' image paths) or inside one."""
    head = path
    while head:
        if head in roots:
            return True
        head = head.rpartition("/")[0]
    return False


def link_identical(entries: dict[str, Entry], roots: Iterable[str]) -> Deduplicated:
    """Turn every file under `roots` that repeats an earlier one into a hard link to it.

    `entries` is the tree's map of image path to entry; it is changed in place. A file
    is a candidate when its bytes come from a host file (`source`); the earliest name in
    the tree's order keeps the inode.
    """
    started = time.monotonic()
    scope = frozenset(r.strip("/") for r in roots)
    by_shape: dict[tuple[int, int, int, int], list[Entry]] = {}
    files = 0
    for path in sorted(entries, key=lambda p: p.split("/")):
        entry = entries[path]
        if entry.kind != "file" or entry.source is None or not _in_scope(path, scope):
            continue
        files += 1
        by_shape.setdefault((entry.size, entry.mode, entry.uid, entry.gid), []).append(entry)
    # Read in a few threads: most of the time is opening and reading small files, and
    # hashlib lets go of the GIL while it hashes. Empty files are all the same.
    candidates = [e.source for (size, *_), group in by_shape.items()
                  if size and len(group) > 1 for e in group if e.source is not None]
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        digests = dict(zip(candidates, pool.map(_digest, candidates), strict=True))
    hashed, linked, saved = len(digests), 0, 0
    for (size, *_), group in by_shape.items():
        if len(group) < 2:
            continue
        by_digest: dict[bytes, list[Entry]] = {}
        for entry in group:
            assert entry.source is not None
            key = digests[entry.source] if size else b""
            by_digest.setdefault(key, []).append(entry)
        for same in by_digest.values():
            for i, entry in enumerate(same):
                if i % MAX_LINKS == 0:
                    holder = entry
                    continue
                entries[entry.path] = replace(entry, kind="hardlink", link=holder.path)
                linked += 1
                saved += size
    result = Deduplicated(files, hashed, linked, saved)
    logger.info(
        "%s: %d of %d store files are copies of another (%d hashed): %.1f MiB stored once "
        "(%.1f s)", STEP, linked, files, hashed, saved / (1 << 20), time.monotonic() - started,
    )
    return result


def unlink_orphans(entries: list[Entry], holders: set[str]) -> list[Entry]:
    """`entries` with each of deduplication's hard links whose first name is not among
    `holders` (files as prepare staged them) a file of its own again, from its own
    source: finish's tree is prepare's with the guest's changes, and the guest may have
    removed or replaced a first name. The guest's own hard links have no source and stay.
    """
    out: list[Entry] = []
    promoted: dict[str, str] = {}
    for entry in entries:
        if entry.kind == "hardlink" and entry.source is not None and entry.link not in holders:
            assert entry.link is not None
            holder = promoted.get(entry.link)
            if holder is None:
                # The first orphan of a lost holder holds the inode for the others.
                promoted[entry.link] = entry.path
                entry = replace(entry, kind="file", link=None)
            else:
                entry = replace(entry, link=holder)
        out.append(entry)
    return out

"""The guest's record of what it changed, and finish's merge of it, on plain directories.

The guest walks the mounted image; here a directory stands in for it. Its inodes cannot
have prepare's ctime (0), so files that still look like prepare's (mtime 1 s, same
path and size) take the rule for inodes the guest touched: the bytes are compared.
Store paths are entered only when their top was added or touched.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from make_disk_image.changes import record_changes
from make_disk_image.finish import final_entries
from make_disk_image.handoff import read_record, write_record
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, Entry, GuestRecord, Handoff, Spec
from make_disk_image.prepare import split_store
from make_disk_image.process import StepError
from make_disk_image.staging import Tree

PREPARED = (1, 1)  # atime, mtime in seconds: prepare's times


def prepared_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, PREPARED)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """What prepare read: store-like source directories."""
    src = tmp_path / "sources"
    (src / "lib").mkdir(parents=True)
    (src / "lib/libtest.txt").write_bytes(b"library v1\n")
    (src / "other").mkdir()
    (src / "other/file").write_bytes(b"other\n")
    (src / "big.dat").write_bytes(b"x" * 70000)
    (src / "owned").write_bytes(b"owned by name\n")
    return src


def tree_for(sources: Path) -> Tree:
    tree = Tree()
    tree.add_host(str(sources / "lib"), "nix/store/aaaa-lib")
    tree.add_host(str(sources / "other"), "nix/store/bbbb-other")
    tree.add_host(str(sources / "big.dat"), "srv/big.dat")
    tree.add_host(str(sources / "owned"), "etc/owned")
    tree.add_file("etc/NIXOS", b"")
    return tree


def handoff_for(tree: Tree) -> Handoff:
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y")
    outside, names = split_store(tree.ordered())
    return Handoff(plan_disk(spec, 64 * MIB, None), None, {}, True, {}, outside, names)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A root filesystem as the guest leaves it: prepare's files, then the guest's."""
    root = tmp_path / "root"
    prepared_file(root / "nix/store/aaaa-lib/libtest.txt", b"library v1\n", 0o444)
    os.utime(root / "nix/store/aaaa-lib", PREPARED)
    # A store path whose top the guest did not touch is not entered, even if a file
    # inside it differs (the store is read-only to the bootloader).
    prepared_file(root / "nix/store/bbbb-other/file", b"other\n")
    prepared_file(root / "srv/big.dat", b"x" * 70000)
    prepared_file(root / "etc/NIXOS", b"")
    prepared_file(root / "etc/owned", b"owned by name\n", 0o600)
    os.chown(root / "etc/owned", 1000, 100)  # chown by name: only the inode changed
    # Same path, size and mtime as prepare's, other bytes: must not be taken for it.
    prepared_file(root / "srv/big.dat", b"y" * 70000)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")  # written by activation
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text("set timeout=0\n")
    os.link(root / "boot/grub/grub.cfg", root / "boot/grub/grub.cfg.link")
    (root / "etc/static").symlink_to("/nix/store/aaaa-lib")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.mkfifo(root / "run-fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "lost+found").mkdir()  # mke2fs makes it again
    return root



def by_path(record: GuestRecord) -> dict[str, tuple[Entry, str]]:
    return {e.path: (e, o) for e, o in record.entries}


def test_the_record_names_prepares_bytes_and_copies_the_guests(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    xchg = tmp_path / "xchg"
    record = record_changes(image_root, handoff_for(tree_for(sources)), xchg)
    entries = by_path(record)
    owned, origin = entries["etc/owned"]
    assert origin == "prepare" and owned.source is None
    assert (owned.uid, owned.gid, owned.mode) == (1000, 100, 0o600)
    assert entries["etc/NIXOS"][1] == "prepare"
    for path in ("srv/big.dat", "etc/passwd", "boot/grub/grub.cfg"):
        entry, origin = entries[path]
        assert origin == "guest" and entry.source is not None
        assert (xchg / entry.source).read_bytes() == (image_root / path).read_bytes()
    assert entries["boot/grub/grub.cfg.link"][0].kind == "hardlink"
    assert entries["boot/grub/grub.cfg.link"][0].link == "boot/grub/grub.cfg"
    assert entries["etc/static"][0].link == "/nix/store/aaaa-lib"
    assert entries["tmp"][0].kind == "dir" and entries["tmp"][0].mode == 0o1777
    assert entries["run-fifo"][0].kind == "fifo"
    assert entries["null"][0].device == (1, 3)
    assert "lost+found" not in entries
    paths = [e.path for e, _ in record.entries]
    assert paths == sorted(paths, key=lambda p: p.split("/"))


def test_store_paths_are_entered_only_when_their_top_changed(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    (image_root / "nix/store/cccc-new").mkdir()
    (image_root / "nix/store/cccc-new/f").write_text("new\n")
    record = record_changes(image_root, handoff_for(tree_for(sources)), tmp_path / "xchg")
    # A plain directory's ctime is real, so both prepared store paths count as touched
    # here; the new one is added. In the VM, prepare's ctime (0) leaves them unentered.
    assert set(record.store_walked) == {"aaaa-lib", "bbbb-other", "cccc-new"}
    assert "nix/store/cccc-new/f" in by_path(record)


def test_removed_store_paths_are_named(sources: Path, image_root: Path, tmp_path: Path) -> None:
    tree = tree_for(sources)
    tree.add_host(str(sources / "lib"), "nix/store/dddd-gone")
    record = record_changes(image_root, handoff_for(tree), tmp_path / "xchg")
    assert "dddd-gone" in record.store_walked
    merged = [e.path for e in final_entries(tree.ordered(), record)]
    assert not any(p.startswith("nix/store/dddd-gone") for p in merged)


def test_a_socket_is_an_error_naming_it(sources: Path, image_root: Path, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(image_root / "run-socket"))
        with pytest.raises(StepError, match="/run-socket is a socket"):
            record_changes(image_root, handoff_for(tree_for(sources)), tmp_path / "xchg")
    finally:
        sock.close()


def test_finish_merges_the_record_into_prepares_tree(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    xchg = tmp_path / "xchg"
    tree = tree_for(sources)
    written = write_record(xchg, record_changes(image_root, handoff_for(tree), xchg))
    record = read_record(written, step="test")
    merged = {e.path: e for e in final_entries(tree.ordered(), record)}
    # prepare's bytes from prepare's sources, with the guest's owner and mode.
    owned = merged["etc/owned"]
    assert owned.source == str(sources / "owned") and (owned.uid, owned.mode) == (1000, 0o600)
    assert merged["etc/NIXOS"].data == b""
    # The guest's bytes from xchg/, resolved against the record's directory.
    passwd = merged["etc/passwd"].source
    assert passwd is not None and Path(passwd).read_text() == "root:x:0:0::/root:/bin/sh\n"
    # Deleted by the guest: gone. Store paths not entered: prepare's entries.
    assert merged["nix/store/aaaa-lib/libtest.txt"].kind == "file"
    paths = list(merged)
    assert paths == sorted(paths, key=lambda p: p.split("/"))


def test_a_prepare_entry_prepare_never_had_is_refused(sources: Path) -> None:
    record = GuestRecord(True, ((Entry("etc/ghost", "file", 0o644), "prepare"),))
    with pytest.raises(StepError, match="prepare's tree has none"):
        final_entries(tree_for(sources).ordered(), record)

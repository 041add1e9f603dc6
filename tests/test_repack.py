"""The repack's walk, its source rules and its tar stream, on plain directories (no VM).

The guest walks the mounted image; here a directory stands in for it. Its files cannot
have prepare's ctime (0), so files that still look like prepare's (mtime 1 s, same
path and size) take the rule for inodes the guest touched: the bytes are compared.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from imagecheck import cat, e2fsck_clean, run

from make_disk_image import repack
from make_disk_image.guest import Handoff, check_repack_inputs
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, ContentEntry, Spec
from make_disk_image.process import StepError
from make_disk_image.staging import Entry, Tree, write_tar

PREPARED = (1, 1)  # atime, mtime in seconds: prepare's times


def prepared_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, PREPARED)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """What prepare read: a store-like source directory."""
    src = tmp_path / "sources"
    (src / "lib").mkdir(parents=True)
    (src / "lib/libtest.txt").write_bytes(b"library v1\n")
    (src / "big.dat").write_bytes(b"x" * 70000)
    return src


def tree_for(sources: Path) -> Tree:
    tree = Tree()
    tree.add_host(sources / "lib", "nix/store/aaaa-lib")
    tree.add_host(sources / "big.dat", "srv/big.dat")
    tree.add_file("etc/NIXOS", b"")
    tree.add_file("etc/owned", b"owned by name\n")
    return tree


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A root filesystem as the guest leaves it: prepare's files, then the guest's."""
    root = tmp_path / "root"
    prepared_file(root / "nix/store/aaaa-lib/libtest.txt", b"library v1\n", 0o444)
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


def by_path(snapshot: repack.RootSnapshot) -> dict[str, Entry]:
    return {e.path: e for e in snapshot.entries}


def test_sources_come_from_prepare_unless_the_guest_wrote_the_bytes(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    snapshot = repack.snapshot_root(image_root, tree_for(sources), tmp_path / "scratch")
    entries = by_path(snapshot)
    assert entries["nix/store/aaaa-lib/libtest.txt"].source == sources / "lib/libtest.txt"
    assert entries["etc/NIXOS"].data == b""
    owned = entries["etc/owned"]
    assert owned.data == b"owned by name\n" and owned.source is None
    assert (owned.uid, owned.gid, owned.mode) == (1000, 100, 0o600)
    for path in ("srv/big.dat", "etc/passwd", "boot/grub/grub.cfg"):
        entry = entries[path]
        assert entry.source is not None and entry.source.is_relative_to(tmp_path / "scratch")
        assert entry.source.read_bytes() == (image_root / path).read_bytes()
    assert (snapshot.reused, snapshot.copied) == (3, 3)
    assert snapshot.copied_bytes == 70000 + len("root:x:0:0::/root:/bin/sh\n") + len(
        "set timeout=0\n"
    )


def test_walk_keeps_types_owners_modes_and_order(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    snapshot = repack.snapshot_root(image_root, tree_for(sources), tmp_path / "scratch")
    paths = [e.path for e in snapshot.entries]
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    assert paths[0] == "" and "lost+found" not in paths
    entries = by_path(snapshot)
    assert entries["boot/grub/grub.cfg.link"].kind == "hardlink"
    assert entries["boot/grub/grub.cfg.link"].link == "boot/grub/grub.cfg"
    assert entries["etc/static"].kind == "symlink"
    assert entries["etc/static"].link == "/nix/store/aaaa-lib"
    assert entries["tmp"].kind == "dir" and entries["tmp"].mode == 0o1777
    assert entries["run-fifo"].kind == "fifo"
    assert entries["null"].kind == "chardev" and entries["null"].device == (1, 3)


def test_a_socket_is_an_error_naming_it(sources: Path, image_root: Path, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(image_root / "run-socket"))
        with pytest.raises(StepError, match="/run-socket is a socket"):
            repack.snapshot_root(image_root, tree_for(sources), tmp_path / "scratch")
    finally:
        sock.close()


def test_the_walk_makes_a_clean_filesystem_with_what_the_guest_left(
    sources: Path, image_root: Path, tmp_path: Path
) -> None:
    snapshot = repack.snapshot_root(image_root, tree_for(sources), tmp_path / "scratch")
    images = []
    for n in (1, 2):
        image = tmp_path / f"root-{n}.img"
        image.write_bytes(b"")
        os.truncate(image, 16 * MIB)
        with (tmp_path / "tree.tar").open("wb") as tar:
            write_tar(snapshot.entries, tar)
        with (tmp_path / "tree.tar").open("rb") as tar:
            subprocess.run(
                ["mke2fs", "-q", "-t", "ext4", "-F", "-U", "clear", "-E", "hash_seed=" +
                 "F222513B-DED1-49FA-B591-20CE86A2FE7F", "-d", "-", str(image)],
                stdin=tar, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1"},
            )  # fmt: skip
        images.append(image.read_bytes())
        assert e2fsck_clean(image, 0).returncode == 0
    assert images[0] == images[1]
    image = tmp_path / "root-1.img"
    assert cat(image, 0, "/etc/owned") == "owned by name\n"
    assert cat(image, 0, "/srv/big.dat") == "y" * 70000
    listing = run("debugfs", "-R", "stat /boot/grub/grub.cfg", str(image))
    assert "Links: 2" in listing
    null = run("debugfs", "-R", "stat /null", str(image))
    assert "character special" in null and "Device major/minor number: 01:03" in null
    owned = run("debugfs", "-R", "stat /etc/owned", str(image))
    assert "User:  1000   Group:   100" in owned


def test_fat_snapshot_leaves_out_the_random_seed(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    (esp / "EFI/systemd").mkdir(parents=True)
    (esp / "EFI/systemd/systemd-bootx64.efi").write_bytes(b"MZ")
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    (esp / "loader/random-seed").write_bytes(os.urandom(32))
    snapshot = repack.snapshot_fat(esp, tmp_path / "copy")
    assert snapshot.directories == ("EFI", "EFI/systemd", "loader", "loader/entries")
    assert snapshot.files == ("EFI/systemd/systemd-bootx64.efi", "loader/loader.conf")
    assert snapshot.dropped == ("loader/random-seed",)
    assert (tmp_path / "copy/loader/loader.conf").read_text() == "timeout 0\n"
    assert not (tmp_path / "copy/loader/random-seed").exists()


def test_fat_refill_is_sorted_and_repeatable(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    (esp / "EFI/nixos").mkdir(parents=True)
    for name in ("b-initrd.efi", "a-kernel.efi", "a-long-file-name-for-vfat.conf"):
        (esp / "EFI/nixos" / name).write_bytes(name.encode() * 1000)
    (esp / "loader").mkdir()
    (esp / "loader/loader.conf").write_text("timeout 0\n")
    snapshot = repack.snapshot_fat(esp, tmp_path / "copy")
    images = []
    for n in (1, 2):
        fat = tmp_path / f"esp-{n}.fat"
        fat.write_bytes(b"")
        os.truncate(fat, 32 * MIB)
        subprocess.run(
            ["mkfs.vfat", "--invariant", "-i", "1C06F03B", "-n", "ESP", str(fat)],
            check=True,
            capture_output=True,
            env={**os.environ, **repack.FAT_ENV},
        )
        repack.fill_fat(fat, snapshot)
        images.append(fat.read_bytes())
        fsck = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert images[0] == images[1]
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(tmp_path / "esp-1.fat"), "::/EFI/nixos"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert listing.split() == [
        f"::/EFI/nixos/{n}"
        for n in ("a-kernel.efi", "a-long-file-name-for-vfat.conf", "b-initrd.efi")
    ]
    text = subprocess.run(
        ["mtype", "-i", str(tmp_path / "esp-1.fat"), "::/loader/loader.conf"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert text == "timeout 0\n"


def test_repack_needs_prepares_handoff(tmp_path: Path) -> None:
    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y")
    plan = plan_disk(spec, 64 * MIB, None)
    assert repack.repacks(spec)  # installBootLoader defaults to true
    with pytest.raises(StepError, match="needs prepare's handoff file"):
        check_repack_inputs(Handoff(plan, False, {}))
    with pytest.raises(StepError, match="no readable Nix database files"):
        check_repack_inputs(Handoff(plan, True, {"db.sqlite": tmp_path / "missing"}))
    assert not repack.repacks(Spec(toplevel="x", closureInfo="y", deterministic=False))
    assert not repack.repacks(Spec(toplevel="x", closureInfo="y", installBootLoader=False))


def test_sources_the_vm_cannot_see_are_copied_from_the_image(tmp_path: Path) -> None:
    closure_info = tmp_path / "closure-info"
    closure_info.mkdir()
    (closure_info / "store-paths").write_text("")
    (tmp_path / "a").write_text("a\n")
    spec = Spec(
        toplevel="/nix/store/x",
        closureInfo=str(closure_info),
        contents=(
            ContentEntry(source=str(tmp_path / "a"), target="/etc/a"),
            ContentEntry(source=str(tmp_path / "gone"), target="/etc/b"),
            ContentEntry(source=str(tmp_path / "gone*"), target="/etc/c"),
        ),
        configFile=str(tmp_path / "gone.nix"),
    )
    tree = repack.prepared_tree(spec, {})
    assert tree.entries["etc/a"].source == tmp_path / "a"
    assert "etc/b" not in tree and "etc/nixos/configuration.nix" not in tree
    image_root = tmp_path / "root"
    prepared_file(image_root / "etc/a", b"a\n")
    prepared_file(image_root / "etc/b", b"b\n")
    snapshot = repack.snapshot_root(image_root, tree, tmp_path / "scratch")
    entries = by_path(snapshot)
    assert entries["etc/a"].source == tmp_path / "a"
    b = entries["etc/b"].source
    assert b is not None and b.is_relative_to(tmp_path / "scratch") and b.read_bytes() == b"b\n"

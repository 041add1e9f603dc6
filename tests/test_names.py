"""Every file name a store can hold, in every filesystem.

A store path with names that tokenizing formats trip on (white space, newlines, '$',
':' first, bytes that are not UTF-8) and a symlink whose target has them too, built as a
store image (onlyNixStore) by the unprivileged engine in each fsType, checked by the
filesystem's own checker and read back through the kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, world_readable_dir

NAMES = [b"Librem 5 Devkit.conf", b"$", b"$HOME", b"a$b", b":colon", b"new\nline",
         b"tab\there", b"\xff\xfe not utf-8", b" leading space", b"trailing space ",
         b'quote"and\\backslash']


@pytest.fixture(scope="module")
def store_path() -> Iterator[Path]:
    base = world_readable_dir("mdi-names-")
    path = base / "nnnn-names"
    (path / "dir with space").mkdir(parents=True)
    for name in NAMES:
        for where in (path, path / "dir with space"):
            (where / os.fsdecode(name)).write_bytes(name + b"\n")
    (path / "link to a name").symlink_to("dir with space/new\nline")
    for directory, _, files in os.walk(path):
        os.chmod(directory, 0o555)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
    yield path
    for directory, _, _ in os.walk(base):
        os.chmod(directory, 0o755)
    shutil.rmtree(base)


def _listing(root: Path) -> list[tuple[bytes, bytes]]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = os.fsencode(path.relative_to(root))
        body = os.fsencode(os.readlink(path)) if path.is_symlink() else \
            path.read_bytes() if path.is_file() else b"<dir>"
        out.append((rel, body))
    return sorted(out)


@pytest.mark.parametrize(("fs_type", "deduplicate"), [
    ("ext4", False), ("btrfs", False), ("xfs", False), ("erofs", False), ("squashfs", False),
    # Each name's file is in both directories: linked, and squashfs then reads the tar
    # stream instead of the store.
    ("ext4", True), ("btrfs", True), ("xfs", True), ("erofs", True), ("squashfs", True)])
def test_every_name_in_every_filesystem(store_path: Path, engine: Engine,
                                        fs_type: str, deduplicate: bool) -> None:
    from test_other_filesystems import mounted

    info = world_readable_dir("mdi-names-info-")
    (info / "store-paths").write_text(f"{store_path}\n")
    (info / "store-paths").chmod(0o644)
    spec = {"toplevel": str(store_path), "closureInfo": str(info), "onlyNixStore": True,
            "installBootLoader": False, "copyChannel": False, "fsType": fs_type,
            "partitionTableType": "none", "deduplicate": deduplicate}
    result = engine.build_without_vm(spec, name=f"names-{fs_type}")
    assert result.returncode == 0, result.stderr
    image = result.out / "nixos.img"
    check = {"ext4": ["e2fsck", "-fn"], "btrfs": ["btrfs", "check", "--readonly"],
             "xfs": ["xfs_repair", "-n", "-f"], "erofs": ["fsck.erofs"],
             "squashfs": ["unsquashfs", "-s"]}[fs_type]
    proc = subprocess.run([*check, str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with mounted(image, fs_type) as root:
        assert _listing(root / store_path.name) == _listing(store_path)
    shutil.rmtree(info)

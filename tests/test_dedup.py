"""`deduplicate`: identical store files as one inode, chosen by path, never by inode.

The image tests build store images (onlyNixStore) from two stores with the same store
paths: a plain one, and one optimised the way `nix-store --optimise` leaves a store
(identical files hard-linked, here to the *last* name, not the first the engine picks).
Deduplication on or off, both give the same image; on, the root filesystem stores each
content once. Every image is checked by its filesystem's own checker. xfs keeps the links
through the engine's writer (its fallback, mkfs.xfs -p, refuses them: tests/test_xfs.py).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Engine, EngineRun, world_readable_dir

from make_disk_image import dedup
from make_disk_image.dedup import link_identical, unlink_orphans
from make_disk_image.models import Entry
from make_disk_image.staging import Tree

MIB = 1 << 20
# Bytes of the test store's contents: (store path, file) -> (content, mode).
SHARED = b"shared library bytes\n" * 50_000  # ~1 MiB, in four places
OTHER = b"x" * len(SHARED)  # the same size, other bytes
STORE: dict[tuple[str, str], tuple[bytes, int]] = {
    ("aaaa-one", "lib/libshared.so"): (SHARED, 0o444),
    ("aaaa-one", "bin/tool"): (SHARED, 0o555),  # same bytes, other mode: its own inode
    ("aaaa-one", "share/empty"): (b"", 0o444),
    ("bbbb-two", "lib/libshared.so"): (SHARED, 0o444),
    ("bbbb-two", "lib/same-size"): (OTHER, 0o444),
    ("bbbb-two", "share/copy"): (SHARED, 0o444),
    ("bbbb-two", "share/empty"): (b"", 0o444),
    ("cccc-three", ""): (SHARED, 0o444),  # a store path that is one file
}


def _write_store(root: Path) -> list[Path]:
    for (path, rel), (data, mode) in STORE.items():
        target = root / path / rel if rel else root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    for directory, _, _ in os.walk(root):
        os.chmod(directory, 0o555 if directory != str(root) else 0o755)
    return sorted(root / name for name in {p for p, _ in STORE})


def _optimise(root: Path) -> None:
    """Hard-link identical files (bytes and mode) to the last of them in walk order, as
    an optimised store may have them: the builder's choice, not the engine's."""
    groups: dict[tuple[bytes, int], list[Path]] = {}
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(directory) / name
            key = (hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mode)
            groups.setdefault(key, []).append(path)
    for paths in groups.values():
        for path in paths[:-1]:
            os.chmod(path.parent, 0o755)
            path.unlink()
            os.link(paths[-1], path)
            os.chmod(path.parent, 0o555)


def _remove(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        os.chmod(directory, 0o755)
    shutil.rmtree(root)


@dataclass(frozen=True)
class Stores:
    plain: list[Path]
    optimised: list[Path]


@pytest.fixture(scope="module")
def stores() -> Iterator[Stores]:
    base = world_readable_dir("mdi-dedup-stores-")
    plain = _write_store(base / "plain")
    optimised = _write_store(base / "optimised")
    _optimise(base / "optimised")
    shared = os.stat(optimised[0] / "lib/libshared.so")
    assert shared.st_nlink == 4, "the optimised store must have hard links"
    assert os.stat(plain[0] / "lib/libshared.so").st_nlink == 1
    yield Stores(plain, optimised)
    _remove(base)


def _store_spec(paths: list[Path], fs_type: str, **overrides: object) -> dict[str, object]:
    info = world_readable_dir("mdi-dedup-info-")
    (info / "store-paths").write_text("".join(f"{p}\n" for p in paths))
    (info / "store-paths").chmod(0o644)
    spec: dict[str, object] = {
        "toplevel": str(paths[0]), "closureInfo": str(info), "onlyNixStore": True,
        "installBootLoader": False, "copyChannel": False, "fsType": fs_type,
        "partitionTableType": "none",
    }
    spec.update(overrides)
    return spec


def _build(engine: Engine, paths: list[Path], fs_type: str, name: str,
           **overrides: object) -> Path:
    result: EngineRun = engine.build_without_vm(_store_spec(paths, fs_type, **overrides),
                                                name=name)
    assert result.returncode == 0, result.stderr
    return result.out / "nixos.img"


# --- the tree --------------------------------------------------------------------------


def _tree(paths: list[Path], prefix: str = "") -> Tree:
    tree = Tree()
    for path in paths:
        tree.add_host(path, f"{prefix}{path.name}")
    return tree


def test_first_name_in_path_order_holds_the_inode(stores: Stores) -> None:
    tree = _tree(stores.optimised)
    result = link_identical(tree.entries, [p.name for p in stores.optimised])
    entries = tree.entries
    assert entries["aaaa-one/lib/libshared.so"].kind == "file"
    for other in ("bbbb-two/lib/libshared.so", "bbbb-two/share/copy", "cccc-three"):
        assert (entries[other].kind, entries[other].link) == \
            ("hardlink", "aaaa-one/lib/libshared.so")
    # Same bytes, other mode; same size, other bytes: files of their own.
    assert entries["aaaa-one/bin/tool"].kind == "file"
    assert entries["bbbb-two/lib/same-size"].kind == "file"
    assert (entries["bbbb-two/share/empty"].kind, entries["bbbb-two/share/empty"].link) == \
        ("hardlink", "aaaa-one/share/empty")
    assert result.linked == 4
    assert result.bytes_saved == 3 * len(SHARED)
    # Only files that share a size (and mode) with another are read; empty ones never.
    assert result.hashed == 5
    assert result.files == 8


def test_plain_and_optimised_stores_give_the_same_tree(stores: Stores) -> None:
    trees = [_tree(paths) for paths in (stores.plain, stores.optimised)]
    for tree, paths in zip(trees, (stores.plain, stores.optimised), strict=True):
        link_identical(tree.entries, [p.name for p in paths])

    def shape(tree: Tree) -> list[tuple[str, str, int, str | None]]:
        return [(e.path, e.kind, e.mode, e.link) for e in tree.ordered()]

    assert shape(trees[0]) == shape(trees[1])


def test_only_store_paths_are_deduplicated(stores: Stores) -> None:
    tree = _tree(stores.plain, prefix="nix/store/")
    tree.add_host(stores.plain[0] / "lib/libshared.so", "etc/copy")
    link_identical(tree.entries, [f"nix/store/{stores.plain[1].name}"])
    assert tree.entries["etc/copy"].kind == "file"
    assert tree.entries["nix/store/aaaa-one/lib/libshared.so"].kind == "file"
    assert tree.entries["nix/store/bbbb-two/share/copy"].link == \
        "nix/store/bbbb-two/lib/libshared.so"


def test_usage_counts_linked_bytes_once(stores: Stores) -> None:
    tree = _tree(stores.plain)
    before = tree.usage()
    link_identical(tree.entries, [p.name for p in stores.plain])
    after = tree.usage()
    assert before.file_blocks - after.file_blocks == 3 * -(-len(SHARED) // 4096)
    assert before.inodes == after.inodes


def test_a_group_larger_than_the_link_limit_starts_a_new_inode(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "MAX_LINKS", 2)
    tree = _tree(stores.plain)
    link_identical(tree.entries, [p.name for p in stores.plain])
    kinds = [(e.path, e.kind, e.link) for e in tree.ordered() if e.size == len(SHARED)
             and e.mode == 0o444 and e.path != "bbbb-two/lib/same-size"]
    assert kinds == [
        ("aaaa-one/lib/libshared.so", "file", None),
        ("bbbb-two/lib/libshared.so", "hardlink", "aaaa-one/lib/libshared.so"),
        ("bbbb-two/share/copy", "file", None),
        ("cccc-three", "hardlink", "bbbb-two/share/copy"),
    ]


def test_orphaned_links_become_files_again() -> None:
    entries = [
        Entry("a", "file", 0o444, source="/s/a", size=3),
        Entry("b", "hardlink", 0o444, source="/s/b", size=3, link="gone"),
        Entry("c", "hardlink", 0o444, source="/s/c", size=3, link="gone"),
        Entry("d", "hardlink", 0o444, source="/s/d", size=3, link="a"),
        Entry("e", "hardlink", 0o644, link="x"),  # the guest's own: kept as it is
    ]
    fixed = unlink_orphans(entries, {"a"})
    assert [(e.path, e.kind, e.link) for e in fixed] == [
        ("a", "file", None), ("b", "file", None), ("c", "hardlink", "b"),
        ("d", "hardlink", "a"), ("e", "hardlink", "x"),
    ]


# --- images ----------------------------------------------------------------------------


def _used_blocks(image: Path, fs_type: str) -> int:
    """4 KiB blocks in use: the superblock's count less its free count."""
    if fs_type == "xfs":
        listing = subprocess.run(["xfs_db", "-r", "-c", "sb 0", "-c", "print dblocks fdblocks",
                                  str(image)], check=True, capture_output=True, text=True)
        fields = dict(line.split(" = ") for line in listing.stdout.splitlines())
        return int(fields["dblocks"]) - int(fields["fdblocks"])
    listing = subprocess.run(["dumpe2fs", "-h", str(image)], check=True,
                             capture_output=True, text=True)
    fields = dict(line.split(":", 1) for line in listing.stdout.splitlines() if ":" in line)
    return int(fields["Block count"]) - int(fields["Free blocks"])


CHECKERS = {"ext4": ["e2fsck", "-fn"], "xfs": ["xfs_repair", "-n", "-f"],
            "erofs": ["fsck.erofs"], "squashfs": ["unsquashfs", "-s"]}


def _checked(image: Path, fs_type: str) -> None:
    proc = subprocess.run([*CHECKERS[fs_type], str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "erofs", "squashfs"])
@pytest.mark.parametrize("deduplicate", [False, True])
def test_optimised_and_plain_stores_give_identical_images(
        stores: Stores, engine: Engine, fs_type: str, deduplicate: bool) -> None:
    images = [
        _build(engine, paths, fs_type, f"{fs_type}-{kind}", deduplicate=deduplicate,
               diskSize=64 if fs_type == "ext4" else "auto")
        for kind, paths in (("plain", stores.plain), ("optimised", stores.optimised))
    ]
    # xfs: 300 MiB each, compared without reading both into memory.
    assert filecmp.cmp(images[0], images[1], shallow=False)
    _checked(images[0], fs_type)


def _links(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (the first path sharing its inode, in sorted order, as an index; nlink)."""
    first: dict[int, int] = {}
    found: dict[str, tuple[int, int]] = {}
    for i, rel in enumerate(sorted(str(p.relative_to(root)) for p in root.rglob("*"))):
        st = os.lstat(root / rel)
        found[rel] = (first.setdefault(st.st_ino, i), st.st_nlink)
    return found


@pytest.mark.parametrize(("fs_type", "deduplicate"), [
    ("btrfs", False), ("btrfs", True), ("xfs", False), ("xfs", True), ("ext4", True),
    ("erofs", True), ("squashfs", True)])
def test_links_in_the_image_are_the_engines(
        stores: Stores, engine: Engine, fs_type: str, deduplicate: bool) -> None:
    """What the filesystem holds, read by the kernel: the same names share an inode
    from either store (btrfs and xfs images also differ by their tools' clocks)."""
    from test_other_filesystems import mounted

    shapes = []
    for kind, paths in (("plain", stores.plain), ("optimised", stores.optimised)):
        image = _build(engine, paths, fs_type, f"{fs_type}-{kind}",
                       deduplicate=deduplicate)
        if fs_type == "btrfs":
            proc = subprocess.run(["btrfs", "check", "--readonly", str(image)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        elif fs_type == "xfs":
            _checked(image, fs_type)
        with mounted(image, fs_type) as root:
            shapes.append(_links(root))
    assert shapes[0] == shapes[1]
    shared = shapes[0]["bbbb-two/share/copy"]
    if deduplicate:
        assert shared == (shapes[0]["aaaa-one/lib/libshared.so"][0], 4)
        assert shapes[0]["aaaa-one/bin/tool"][1] == 1
    else:
        assert shared[1] == 1


@pytest.mark.parametrize(("fs_type", "disk_size"), [("ext4", 64), ("xfs", 320)])
def test_deduplicated_images_store_each_content_once(
        stores: Stores, engine: Engine, fs_type: str, disk_size: int) -> None:
    """Used blocks, less those of a filesystem holding one copy: at most the distinct
    files' blocks plus directories; without deduplication the copies show (so the bound
    can fail). One size for all three: xfs' log and allocation groups follow it."""
    distinct = {(data, mode) for data, mode in STORE.values()}
    distinct_blocks = sum(-(-len(data) // 4096) for data, _ in distinct)
    copies_blocks = sum(-(-len(data) // 4096) for data, _ in STORE.values())
    one = _build(engine, [stores.plain[2]], fs_type, f"{fs_type}-one", diskSize=disk_size)
    overhead = _used_blocks(one, fs_type) - -(-len(SHARED) // 4096)
    directories = 16  # the store paths' directories, a block each, and slack
    images = {flag: _build(engine, stores.optimised, fs_type, f"{fs_type}-{flag}",
                           deduplicate=flag, diskSize=disk_size) for flag in (False, True)}
    used = {flag: _used_blocks(image, fs_type) for flag, image in images.items()}
    assert used[True] - overhead <= distinct_blocks + directories
    assert used[False] - overhead >= copies_blocks
    _checked(images[True], fs_type)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_auto_size_counts_linked_bytes_once(stores: Stores, engine: Engine,
                                            fs_type: str) -> None:
    sizes = {}
    for flag in (False, True):
        result = engine.build_without_vm(
            _store_spec(stores.plain, fs_type, deduplicate=flag, additionalSpace="0M"),
            name=f"auto-{flag}")
        assert result.returncode == 0, result.stderr
        plan = json.loads((result.build_dir / "xchg/make-disk-image.json").read_text())["plan"]
        sizes[flag] = plan["auto"]["closure_space_use"]
    assert sizes[False] - sizes[True] == 3 * -(-len(SHARED) // 4096) * 4096


# Two store paths holding the same 240 MiB (sparse: holes read as zeros): deduplicated,
# an xfs holds it once and its size leaves xfsprogs' 300 MiB floor.
BIG = 240 * MIB


@pytest.fixture(scope="module")
def big_store() -> Iterator[list[Path]]:
    base = world_readable_dir("mdi-dedup-big-")
    paths = [base / "dddd-big-one", base / "eeee-big-two"]
    for path in paths:
        path.mkdir()
        with (path / "blob").open("wb") as fh:
            fh.truncate(BIG)
        (path / "blob").chmod(0o444)
        path.chmod(0o555)
    yield paths
    _remove(base)


@pytest.mark.parametrize("disk_size", ["auto", "minimal"])
def test_xfs_sizes_count_linked_bytes_once(big_store: list[Path], engine: Engine,
                                           disk_size: str) -> None:
    """The xfs row's formula takes the files' bytes once (1.052 x, filesystems'
    needed_bytes): the sizes differ by one copy of it, and the deduplicated one holds
    the tree (its image made and checked)."""
    sizes = {}
    for flag in (False, True):
        spec = _store_spec(big_store, "xfs", deduplicate=flag, diskSize=disk_size,
                           additionalSpace="0M")
        planned = engine.run("plan", spec, name=f"plan-{flag}")
        assert planned.returncode == 0, planned.stderr
        sizes[flag] = json.loads(planned.stdout)["disk_size"]
    one_copy = BIG * 1052 // 1000
    assert abs(sizes[False] - sizes[True] - one_copy) <= MIB, sizes
    image = _build(engine, big_store, "xfs", "xfs-big", deduplicate=True, diskSize=disk_size,
                   additionalSpace="0M")
    assert image.stat().st_size == sizes[True]
    _checked(image, "xfs")
    assert _used_blocks(image, "xfs") * 4096 < BIG + 80 * MIB  # one copy and the log


"""btrfs, xfs, erofs and squashfs images made by the unprivileged build user.

prepare + finish as Nix runs them without a guest; each image is checked by its own
tool (btrfs check, xfs_repair -n, fsck.erofs, unsquashfs) and read through a read-only
loop mount (the test runs as root; the build does not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Closure, Engine, EngineRun, base_spec, world_readable_dir

from make_disk_image.models import MIB

ROOT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


def plan_of(result: EngineRun) -> dict:  # type: ignore[type-arg]
    data = json.loads((result.build_dir / "xchg/make-disk-image.json").read_text())
    return data["plan"]  # type: ignore[no-any-return]


def image_of(result: EngineRun) -> Path:
    return result.out / "nixos.img"


def extract_root(result: EngineRun) -> Path:
    """The root partition as its own file (btrfs check and xfs_repair take no offset)."""
    plan = plan_of(result)
    part = result.build_dir / "root.part"
    with image_of(result).open("rb") as src, part.open("wb") as dst:
        src.seek(plan["root_offset"])
        remaining = plan["root_size"]
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            dst.write(chunk)
            remaining -= len(chunk)
    return part


@contextlib.contextmanager
def mounted(image: Path, fs_type: str, offset: int = 0, *,
            writable: bool = False) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="mdi-fs-mnt-"))
    mode = "rw" if writable else "ro"
    subprocess.run(["mount", "-t", fs_type, "-o", f"loop,{mode},offset={offset}", str(image),
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@pytest.fixture
def contents_src() -> Iterator[Path]:
    src = world_readable_dir("mdi-fs-contents-")
    (src / "conf").mkdir()
    (src / "conf/app.toml").write_text("key = 1\n")
    (src / "conf/app.toml").chmod(0o644)
    (src / "conf").chmod(0o755)
    (src / "tmp").mkdir()
    (src / "tmp").chmod(0o1777)
    yield src
    shutil.rmtree(src)


def check_root(root: Path, closure: Closure) -> None:
    assert (root / "etc/NIXOS").is_file()
    assert (root / "etc/app/app.toml").read_text() == "key = 1\n"
    hello = os.lstat(root / closure.app.lstrip("/") / "bin/hello")
    assert (hello.st_mode & 0o7777, hello.st_uid, hello.st_gid) == (0o555, 0, 0)
    link = root / closure.app.lstrip("/") / "share/doc/lib-link"
    assert os.readlink(link) == f"{closure.lib}/lib/libtest.txt"
    assert (root / "nix/var/nix/db/db.sqlite").is_file()
    assert os.lstat(root / "tmp").st_mode & 0o7777 == 0o1777
    assert not (root / closure.extra.lstrip("/")).exists()


@pytest.mark.parametrize("fs_type", ["btrfs", "xfs"])
def test_writable_root_in_a_partition(closure: Closure, engine: Engine, contents_src: Path,
                                      fs_type: str) -> None:
    spec = base_spec(
        closure, fsType=fs_type, partitionTableType="efi", installBootLoader=False,
        contents=[{"source": str(contents_src / "conf"), "target": "/etc/app"},
                  {"source": str(contents_src / "tmp"), "target": "/tmp"}],
    )
    result = engine.build_without_vm(spec, name=fs_type)
    assert result.returncode == 0, result.stderr
    plan = plan_of(result)
    part = extract_root(result)
    check = (["btrfs", "check", "--readonly", str(part)] if fs_type == "btrfs"
             else ["xfs_repair", "-n", "-f", str(part)])
    proc = subprocess.run(check, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(part)], check=True,
                           capture_output=True, text=True).stdout
    assert f"TYPE={fs_type}" in blkid
    assert "LABEL=nixos" in blkid
    # rootFSUID is null for these by default; deterministic, rootGPUID stands in.
    assert f"UUID={ROOT_GUID.lower()}" in blkid
    with mounted(image_of(result), fs_type, plan["root_offset"]) as root:
        check_root(root, closure)
    # The image is sparse: the scratch filesystem's holes stay holes.
    image = image_of(result)
    assert image.stat().st_blocks * 512 < image.stat().st_size


def test_btrfs_root_keeps_other_owners(closure: Closure, engine: Engine,
                                       contents_src: Path) -> None:
    """The engine's btrfs writer gives entries their own owners (mkfs.btrfs, in a user
    namespace, could give only root's)."""
    spec = base_spec(
        closure, fsType="btrfs", partitionTableType="efi", installBootLoader=False,
        contents=[{"source": str(contents_src / "conf"), "target": "/etc/app",
                   "user": "1000", "group": "100", "mode": "0750"},
                  {"source": str(contents_src / "tmp"), "target": "/tmp"}],
    )
    result = engine.build_without_vm(spec, name="btrfs-owners")
    assert result.returncode == 0, result.stderr
    assert "btrfs_write took" in result.stderr  # not mkfs.btrfs
    part = extract_root(result)
    proc = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", str(part)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with mounted(image_of(result), "btrfs", plan_of(result)["root_offset"]) as root:
        owned = os.lstat(root / "etc/app")
        assert (owned.st_uid, owned.st_gid) == (1000, 100)
        assert (root / "etc/app/app.toml").read_text() == "key = 1\n"
        check_root(root, closure)


def test_btrfs_minimal_with_other_owners(closure: Closure, engine: Engine,
                                         contents_src: Path) -> None:
    """"minimal"'s measure (the writer's own layout, owners included) and the writer
    giving the entries their own owners."""
    spec = base_spec(
        closure, fsType="btrfs", partitionTableType="legacy+gpt", installBootLoader=False,
        diskSize="minimal",
        contents=[{"source": str(contents_src / "conf"), "target": "/etc/app",
                   "user": "1000", "group": "100"},
                  {"source": str(contents_src / "tmp"), "target": "/tmp"}],
    )
    result = engine.build_without_vm(spec, name="btrfs-minimal-owners")
    assert result.returncode == 0, result.stderr
    assert "btrfs_write's layout" in plan_of(result)["minimal"]["method"]
    with mounted(image_of(result), "btrfs", plan_of(result)["root_offset"]) as root:
        owned = os.lstat(root / "etc/app/app.toml")
        assert (owned.st_uid, owned.st_gid) == (1000, 100)


def test_btrfs_root_is_identical_across_builds(closure: Closure, engine: Engine,
                                               contents_src: Path) -> None:
    """The engine's btrfs writer: the same spec gives the same root filesystem bytes
    (mkfs.btrfs' chunk-tree and device UUIDs and its clock varied)."""
    spec = base_spec(
        closure, fsType="btrfs", partitionTableType="efi", installBootLoader=False,
        contents=[{"source": str(contents_src / "conf"), "target": "/etc/app"},
                  {"source": str(contents_src / "tmp"), "target": "/tmp"}],
    )
    runs = [engine.build_without_vm(spec, name=f"btrfs-same-{i}") for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    first, second = (extract_root(r).read_bytes() for r in runs)
    assert first == second


@pytest.mark.parametrize("fs_type", ["erofs", "squashfs"])
def test_read_only_store_image_is_identical_across_builds(
        closure: Closure, engine: Engine, fs_type: str) -> None:
    spec = base_spec(closure, fsType=fs_type, partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False)
    runs = [engine.build_without_vm(spec, name=f"{fs_type}-{i}") for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    first, second = (image_of(r) for r in runs)
    assert first.read_bytes() == second.read_bytes()
    check = (["fsck.erofs", str(first)] if fs_type == "erofs"
             else ["unsquashfs", "-s", str(first)])
    proc = subprocess.run(check, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store_paths = (Path(spec["closureInfo"]) / "store-paths").read_text().split()
    with mounted(first, fs_type) as root:
        assert sorted(os.listdir(root)) == sorted(os.path.basename(p) for p in store_paths)
        hello = os.lstat(root / os.path.basename(closure.app) / "bin/hello")
        assert (hello.st_mode & 0o7777, hello.st_uid) == (0o555, 0)


def test_read_only_fixed_size_pads_or_refuses(closure: Closure, engine: Engine) -> None:
    spec = base_spec(closure, fsType="squashfs", partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False, diskSize=8)
    result = engine.build_without_vm(spec, name="sq-fixed")
    assert result.returncode == 0, result.stderr
    assert image_of(result).stat().st_size == 8 * MIB


@pytest.mark.parametrize(("overrides", "argument", "words"), [
    ({"fsType": "erofs"}, "fsType", "read-only"),
    ({"fsType": "squashfs", "onlyNixStore": True, "partitionTableType": "efi",
      "installBootLoader": False, "copyChannel": False}, "partitionTableType", '"none"'),
    ({"fsType": "xfs", "label": "a-label-too-long"}, "label", "12 bytes"),
    ({"fsType": "zfs"}, "fsType", '"btrfs"'),
    ({"fsType": "ext3"}, "fsType", "-E offset"),
])
def test_impossible_combinations_fail_before_work(
        closure: Closure, engine: Engine, overrides: dict, argument: str,  # type: ignore[type-arg]
        words: str) -> None:
    result = engine.run("prepare", base_spec(closure, **overrides))
    assert result.returncode != 0
    assert f"argument `{argument}`" in result.stderr, result.stderr
    assert words in result.stderr
    assert not (result.build_dir / "nixos.raw").exists()


@pytest.mark.parametrize("fs_type", ["btrfs", "xfs", "squashfs"])
def test_minimal_size(closure: Closure, engine: Engine, fs_type: str) -> None:
    """"minimal": btrfs measured by its writer (tests/test_btrfs_minimal.py), no larger
    than "auto"; xfs and the store images take their auto formula."""
    store_image = fs_type == "squashfs"
    layout = "none" if store_image else "legacy+gpt"
    common = dict(fsType=fs_type, partitionTableType=layout, installBootLoader=False,
                  onlyNixStore=store_image, copyChannel=not store_image)
    minimal = engine.build_without_vm(base_spec(closure, diskSize="minimal", **common),
                                      name=f"{fs_type}-minimal")
    auto = engine.build_without_vm(base_spec(closure, **common), name=f"{fs_type}-auto")
    assert minimal.returncode == auto.returncode == 0, minimal.stderr + auto.stderr
    plan = plan_of(minimal)
    assert plan["size_source"] == "minimal"
    assert plan["minimal"]["method"]
    if fs_type == "btrfs":
        assert "btrfs_write's layout" in plan["minimal"]["method"]
        assert plan["disk_size"] < plan_of(auto)["disk_size"]
    if not store_image:
        part = extract_root(minimal)
        check = (["btrfs", "check", "--readonly", str(part)] if fs_type == "btrfs"
                 else ["xfs_repair", "-n", "-f", str(part)])
        proc = subprocess.run(check, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_store_image_sources_are_the_store_paths(tmp_path: Path) -> None:
    from make_disk_image.filesystems.squashfs import top_sources
    from make_disk_image.staging import Tree

    for name in ("aaa-one", "bbb-two"):
        (tmp_path / name / "bin").mkdir(parents=True)
        (tmp_path / name / "bin" / "x").write_text(name)
    (tmp_path / "ccc-file").write_text("a store path that is a file")
    tree = Tree()
    for name in ("aaa-one", "bbb-two", "ccc-file"):
        tree.add_host(tmp_path / name, name)
    assert top_sources(tree.ordered()) == [str(tmp_path / n) for n in ("aaa-one", "bbb-two",
                                                                       "ccc-file")]
    # A file placed under another name than its source's: the source is not the image.
    renamed = Tree()
    renamed.add_host(tmp_path / "aaa-one", "aaa-one")
    renamed.add_host(tmp_path / "aaa-one" / "bin" / "x", "aaa-one/lib/y")
    assert top_sources(renamed.ordered()) is None
    tree.add_file("etc/NIXOS", b"")  # not copied from a host path: materialize instead
    assert top_sources(tree.ordered()) is None


def test_squashfs_memory_bound_keeps_the_bytes(closure: Closure, tmp_path: Path) -> None:
    """mksquashfs -mem (the engine bounds its caches) gives the bytes it gives without."""
    from make_disk_image.filesystems.squashfs import SQUASHFS_MEMORY, make_squashfs

    sources = [Path(closure.lib), Path(closure.app)]
    bounded = tmp_path / "bounded.img"
    make_squashfs(bounded, sources, root_mode=0o755, deterministic=True, step="t",
                  links=False, compression="lz4")
    unbounded = tmp_path / "unbounded.img"
    subprocess.run(["mksquashfs", *map(str, sources), str(unbounded), "-noappend",
                    "-all-root", "-no-xattrs", "-no-progress", "-quiet", "-root-mode", "755",
                    "-processors", str(os.cpu_count() or 1), "-comp", "lz4",
                    "-no-hardlinks"], check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1"})
    assert SQUASHFS_MEMORY
    assert bounded.read_bytes() == unbounded.read_bytes()


def test_squashfs_read_from_the_store_is_the_staged_trees_image(
        closure: Closure, engine: Engine, tmp_path: Path) -> None:
    """A squashfs store image: prepare stages no tree, mksquashfs reads the store paths
    themselves, and the bytes are those of the image made from the staged tree."""
    from make_disk_image.filesystems.squashfs import write_squashfs
    from make_disk_image.spec import parse_spec
    from make_disk_image.staging import build_tree

    spec = base_spec(closure, fsType="squashfs", partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False)
    result = engine.build_without_vm(spec, name="sq-direct")
    assert result.returncode == 0, result.stderr
    assert "no tree staged" in result.stderr
    assert not (result.build_dir / "xchg/tree.json").exists()
    assert plan_of(result)["size_source"] == "tool"
    staged = tmp_path / "staged.img"
    write_squashfs(staged, build_tree(parse_spec(spec), {}).ordered(), deterministic=True,
                   step="t", compression="lz4")
    assert image_of(result).read_bytes() == staged.read_bytes()


def test_squashfs_from_the_store_refuses_another_spec(closure: Closure,
                                                      engine: Engine) -> None:
    """finish with other store paths than prepare's fails, and leaves nothing in $out."""
    spec = base_spec(closure, fsType="squashfs", partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False)
    build_dir, out = engine.new_build("sq-other")
    assert engine.run("prepare", spec, build_dir=build_dir, out=out).returncode == 0
    info = world_readable_dir("mdi-closure-info-")  # the build user reads it
    paths = (Path(spec["closureInfo"]) / "store-paths").read_text().split()
    (info / "store-paths").write_text("\n".join(paths[:-1]) + "\n")
    (info / "store-paths").chmod(0o644)
    finished = engine.run("finish", {**spec, "closureInfo": str(info)}, build_dir=build_dir,
                          out=out)
    assert finished.returncode != 0
    assert "other store paths" in finished.stderr, finished.stderr
    assert not (out / "nixos.img").exists()
    shutil.rmtree(info)


@pytest.mark.parametrize(("overrides", "direct"), [
    ({}, True),
    ({"deduplicate": True}, False),  # its links are the tree's
    ({"diskSize": "minimal"}, False),  # it measures the tree
    ({"fsType": "erofs"}, False),  # mkfs.erofs reads a view of the tree (storeview)
    ({"onlyNixStore": False, "fsType": "ext4", "partitionTableType": "legacy"}, False),
])
def test_which_store_images_skip_the_tree(closure: Closure, overrides: dict,  # type: ignore[type-arg]
                                          direct: bool) -> None:
    from make_disk_image.spec import parse_spec
    from make_disk_image.staging import store_image_paths

    spec = parse_spec({**base_spec(closure, fsType="squashfs", partitionTableType="none",
                                   onlyNixStore=True, installBootLoader=False,
                                   copyChannel=False), **overrides})
    paths = (Path(spec.closureInfo) / "store-paths").read_text().split()
    assert store_image_paths(spec) == (tuple(sorted(paths)) if direct else ())


def test_a_symlink_store_path_takes_the_staged_tree(tmp_path: Path) -> None:
    """mksquashfs would follow a store path that is a symlink given as a source."""
    from make_disk_image.models import Spec
    from make_disk_image.staging import store_image_paths

    (tmp_path / "aaa-dir").mkdir()
    (tmp_path / "bbb-link").symlink_to("aaa-dir")
    info = tmp_path / "info"
    info.mkdir()
    (info / "store-paths").write_text(f"{tmp_path}/aaa-dir\n")
    spec = Spec(toplevel=str(tmp_path / "aaa-dir"), closureInfo=str(info), fsType="squashfs",
                onlyNixStore=True, partitionTableType="none")
    assert store_image_paths(spec) == (f"{tmp_path}/aaa-dir",)
    (info / "store-paths").write_text(f"{tmp_path}/aaa-dir\n{tmp_path}/bbb-link\n")
    assert store_image_paths(spec) == ()


def test_make_from_store_stages_the_paths_for_a_tool_that_needs_a_tree(
        closure: Closure, tmp_path: Path) -> None:
    """The base class's make_from_store (erofs has no tool-side reading of its own)
    stages the store paths as onlyNixStore's tree: the image `make` gives that tree."""
    from make_disk_image.filesystems import FILESYSTEMS
    from make_disk_image.prepare import compute_plan
    from make_disk_image.spec import parse_spec
    from make_disk_image.staging import build_tree, read_store_paths

    spec = parse_spec(base_spec(closure, fsType="erofs", partitionTableType="none",
                                onlyNixStore=True, installBootLoader=False, copyChannel=False))
    tree = build_tree(spec, {})
    plan = compute_plan(spec, tree)
    erofs = FILESYSTEMS["erofs"]
    assert not erofs.reads_store_paths
    from_store, from_tree = tmp_path / "store.img", tmp_path / "tree.img"
    erofs.make_from_store(from_store, plan, read_store_paths(Path(spec.closureInfo)),
                          uuid=ROOT_GUID.lower(), deterministic=True, step="t")
    erofs.make(from_tree, plan, tree.ordered(), uuid=ROOT_GUID.lower(), deterministic=True,
               checksums=True, step="t")
    assert from_store.read_bytes() == from_tree.read_bytes()
    proc = subprocess.run(["fsck.erofs", str(from_store)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

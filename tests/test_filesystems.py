"""The filesystem registry: every fsType's row is consistent with what its tools accept,
its module makes it, and no other module compares a filesystem's name."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import make_disk_image
from make_disk_image.filesystems import FILESYSTEMS, needed_bytes
from make_disk_image.interface import FS_TYPES
from make_disk_image.models import FS_BLOCK, MIB
from make_disk_image.process import StepError
from make_disk_image.spec import SpecError, parse_spec


@pytest.mark.parametrize("name", list(FILESYSTEMS))
def test_every_filesystem_names_its_tool_and_it_is_installed(name: str) -> None:
    fs = FILESYSTEMS[name]
    assert fs.name == name
    program = fs.tool.split()[0]
    assert shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin"), program
    assert fs.determinism


def test_read_only_filesystems_are_the_store_image_ones() -> None:
    assert {n for n, fs in FILESYSTEMS.items() if fs.read_only} == {"erofs", "squashfs"}


def test_needed_bytes_has_a_floor_and_grows_with_the_tree() -> None:
    xfs, btrfs = FILESYSTEMS["xfs"], FILESYSTEMS["btrfs"]
    assert needed_bytes(xfs, 0, 1) == 300 * MIB
    assert needed_bytes(btrfs, 0, 1) == 160 * MIB + 16 * 1024
    big = 1 << 18  # 1 GiB of file blocks
    assert needed_bytes(btrfs, big, 0) == 2 * big * FS_BLOCK + 160 * MIB
    assert needed_bytes(xfs, big, 10) > big * FS_BLOCK


def test_every_row_is_made_by_the_module_interface_json_names() -> None:
    for name, fs in FILESYSTEMS.items():
        assert type(fs).__module__ == f"make_disk_image.filesystems.{FS_TYPES[name].module}"


# Where a filesystem's name may be compared or listed: its own module, the registry,
# and the table code: interface.py (interface.json's rows) and repart's `Format=` table
# (a vocabulary of its own: swap, no ext2/ext3, repart's own least sizes).
NAME_HOMES = ("filesystems/", "interface.py", "repart/format_table.py")


def filesystem_names() -> set[str]:
    from make_disk_image.filesystems import vfat

    return {*FS_TYPES, vfat.NAME}


def name_branches(package: Path, names: set[str]) -> list[str]:
    """Every string literal of `names` in a comparison, a membership test, a match case
    or a hand-written list, tuple, set or dict of the package's modules (outside
    NAME_HOMES), as "path:line: name"."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(NAME_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Compare, ast.MatchValue)):
                consts = [n for n in ast.walk(node) if isinstance(n, ast.Constant)]
            elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                consts = [n for n in node.elts if isinstance(n, ast.Constant)]
            elif isinstance(node, ast.Dict):
                consts = [n for n in (*node.keys, *node.values) if isinstance(n, ast.Constant)]
            else:
                continue
            found += [f"{rel}:{c.lineno}: {c.value}" for c in consts if c.value in names]
    return sorted(set(found))


def test_no_filesystem_name_is_compared_outside_its_module() -> None:
    package = Path(make_disk_image.__file__).parent
    assert name_branches(package, filesystem_names()) == []


def test_the_name_scan_finds_each_kind_of_branch(tmp_path: Path) -> None:
    (tmp_path / "filesystems").mkdir()
    (tmp_path / "filesystems" / "xfs.py").write_text('x = fs == "xfs"\n')
    (tmp_path / "engine.py").write_text(
        'a = fs == "ext4"\nb = fs in ("btrfs", "other")\nc = ["erofs"]\n'
        'd = {"root": "squashfs"}\ne = part.filesystem != "vfat"\n'
        'match fs:\n    case "ext2":\n        pass\nf = fs.startswith("x")\n'
        'g = call(fsType="ext3")\n'
    )
    assert name_branches(tmp_path, filesystem_names()) == [
        "engine.py:1: ext4", "engine.py:2: btrfs", "engine.py:3: erofs",
        "engine.py:4: squashfs", "engine.py:5: vfat", "engine.py:7: ext2",
    ]


ROOT_OWNERS = [("root", "root"), ("0", "0"), ("0", "root"), ("root", "0"), ("00", "root")]


@pytest.mark.parametrize(("user", "group"), ROOT_OWNERS)
def test_btrfs_takes_root_by_name_or_number(user: str, group: str) -> None:
    entry = {"source": "/etc/hostname", "target": "/x", "user": user, "group": group}
    spec = parse_spec({"toplevel": "/nix/store/x-system", "closureInfo": "/nix/store/y-ci",
                       "channelSources": "/nix/store/z-nixos", "fsType": "btrfs",
                       "contents": [entry]})
    assert spec.contents[0].user == user


@pytest.mark.parametrize(("user", "group"), [("1000", "100"), ("0", "100"), ("nobody", "root"),
                                             ("root", "wheel")])
def test_btrfs_refuses_other_owners_only_without_its_writer(
        user: str, group: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from make_disk_image.filesystems import btrfs

    entry = {"source": "/etc/hostname", "target": "/x", "user": user, "group": group}
    raw = {"toplevel": "/nix/store/x-system", "closureInfo": "/nix/store/y-ci",
           "channelSources": "/nix/store/z-nixos", "fsType": "btrfs", "contents": [entry]}
    if btrfs.writer_crc() is not None:
        assert parse_spec(raw).contents[0].user == user  # the engine's writer keeps owners
    # mkfs.btrfs in a user namespace (no CRC-32C for the writer) gives only root's.
    monkeypatch.setattr(btrfs, "writer_crc", lambda: None)
    with pytest.raises(SpecError, match=r"contents\[0\]\.user.*user namespace"):
        parse_spec(raw)


def test_a_module_without_its_row_fails_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from make_disk_image import filesystems

    monkeypatch.setitem(filesystems.FS_TYPES, "ext9", replace(FS_TYPES["ext4"], name="ext9"))
    with pytest.raises(ImportError, match=r"filesystems/ext\.py defines .* not the fsType ext9"):
        filesystems.FILESYSTEMS["ext9"]


def test_a_row_naming_no_module_fails_at_import(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    package = Path(make_disk_image.__file__).parent
    copy = tmp_path / "make_disk_image"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    table = json.loads((copy / "interface.json").read_text())
    table["fsTypes"].append({**table["fsTypes"][-1], "name": "newfs", "module": "newfs"})
    (copy / "interface.json").write_text(json.dumps(table))
    proc = subprocess.run([sys.executable, "-c", "import make_disk_image.filesystems"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "['newfs']" in proc.stderr, proc.stderr


@pytest.mark.parametrize("table", [None, "gpt"])
def test_a_tool_that_grows_its_file_is_a_too_small_root(tmp_path: Path,
                                                        table: str | None) -> None:
    """mkfs.btrfs grows a file too small for the tree instead of failing; the copy into
    the partition must not cut the filesystem short."""
    from make_disk_image.filesystems.scratch import in_partition
    from make_disk_image.models import DiskPlan

    target = tmp_path / "disk.raw"
    target.write_bytes(bytes(8 * MIB))
    plan = DiskPlan("efi", table, 8 * MIB, "diskSize", None, 0, None, None, (), 1, MIB,
                    4 * MIB, "btrfs", "nixos", None)

    def grow(scratch: Path) -> None:
        with scratch.open("r+b") as fh:
            fh.truncate(plan.root_size + MIB)

    with pytest.raises(StepError, match=r"root filesystem \(4 MiB\) is too small "
                       r"for the closure and contents \(tool needed 5 MiB\); raise diskSize"):
        in_partition(target, plan, tool="tool", fs_type="btrfs", min_size=0, write=grow,
                     step="test")


def written_disk(tmp_path: Path, name: str, *, root_data: bool) -> tuple[Path, object]:
    """An 8 MiB disk with table-like bytes outside a 4 MiB root at 1 MiB, and a tool
    that writes data with holes between (a filesystem's scratch file)."""
    from make_disk_image.models import DiskPlan

    target = tmp_path / name
    with target.open("wb") as fh:
        fh.truncate(8 * MIB)
        fh.write(b"table" * 100)
        fh.seek(7 * MIB)
        fh.write(b"backup table")
        if root_data:
            fh.seek(2 * MIB)
            fh.write(b"stale")
    target.chmod(0o640)
    return target, DiskPlan("efi", "gpt", 8 * MIB, "diskSize", None, 0, None, None, (), 1,
                            MIB, 4 * MIB, "btrfs", "nixos", None)


def scratch_writer(scratch: Path) -> None:
    with scratch.open("r+b") as fh:
        fh.write(b"superblock")
        fh.seek(3 * MIB)
        fh.write(b"z" * 5000)


@pytest.mark.parametrize("root_data", [False, True])
def test_the_filesystem_lands_in_its_partition_moved_or_copied(
        tmp_path: Path, root_data: bool, caplog: pytest.LogCaptureFixture) -> None:
    """On ext4 or xfs the scratch file's extents are shifted into place (no copy of the
    filesystem); where the root range holds data, it is copied. The same bytes, and the
    holes stay holes."""
    import logging
    import subprocess

    from make_disk_image.filesystems.scratch import in_partition

    target, plan = written_disk(tmp_path, "disk.raw", root_data=root_data)
    expected = bytearray(target.read_bytes())
    expected[MIB:MIB + 10] = b"superblock"
    expected[4 * MIB:4 * MIB + 5000] = b"z" * 5000
    with caplog.at_level(logging.INFO):
        in_partition(target, plan, tool="tool", fs_type="btrfs", min_size=0,  # type: ignore[arg-type]
                     write=scratch_writer, step="test")
    assert target.read_bytes() == bytes(expected)
    assert target.stat().st_blocks * 512 < 2 * MIB
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert list(tmp_path.iterdir()) == [target]
    moved = "moved into the partition" in caplog.text
    host_fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert moved == (not root_data and host_fs in ("ext2/ext3", "xfs")), host_fs

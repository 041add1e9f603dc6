"""The image tree: contents semantics (the reference's rsync), and sizing against du/find."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from make_disk_image.models import MIB
from make_disk_image.process import StepError
from make_disk_image.sizing import TreeUsage, auto_disk_size
from make_disk_image.spec import parse_spec
from make_disk_image.staging import Tree, build_tree, check_sources, stage_contents
from make_disk_image.tarstream import write_tar


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "dir/sub").mkdir(parents=True)
    (root / "dir/a.txt").write_text("a")
    (root / "dir/sub/b.txt").write_text("bb")
    (root / "dir").chmod(0o750)
    (root / "file.conf").write_text("conf\n")
    (root / "file.conf").chmod(0o640)
    (root / "g1.key").write_text("1")
    (root / "g2.key").write_text("2")
    os.symlink("file.conf", root / "link.conf")
    return root


def contents_tree(src: Path, contents: list[dict[str, str]]) -> Tree:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "contents": contents})
    tree = Tree()
    stage_contents(spec, tree)
    return tree


def test_directory_source_is_copied_to_the_target_not_inside(src: Path) -> None:
    tree = contents_tree(src, [{"source": str(src / "dir"), "target": "/srv/data"}])
    assert "srv/data/a.txt" in tree and "srv/data/sub/b.txt" in tree
    assert "srv/data/dir" not in tree
    assert tree.entries["srv/data"].mode == 0o750  # rsync -a keeps the directory's mode
    assert tree.entries["srv"].mode == 0o755  # mkdir -p


def test_mode_applies_to_files_and_directories(src: Path) -> None:
    tree = contents_tree(src, [{"source": str(src / "dir"), "target": "/d", "mode": "700"},
                               {"source": str(src / "file.conf"), "target": "/etc/f",
                                "mode": "0400"}])
    assert {tree.entries[p].mode for p in ("d", "d/a.txt", "d/sub", "d/sub/b.txt")} == {0o700}
    assert tree.entries["etc/f"].mode == 0o400


def test_file_keeps_its_mode_and_owner_is_root(src: Path) -> None:
    tree = contents_tree(src, [{"source": str(src / "file.conf"), "target": "/etc/x.conf"}])
    entry = tree.entries["etc/x.conf"]
    assert (entry.mode, entry.uid, entry.gid, entry.size) == (0o640, 0, 0, 5)


def test_glob_places_matches_inside_the_target(src: Path) -> None:
    tree = contents_tree(src, [{"source": str(src / "g*.key"), "target": "/keys"}])
    assert "keys/g1.key" in tree and "keys/g2.key" in tree


def test_symlink_source_stays_a_symlink(src: Path) -> None:
    tree = contents_tree(src, [{"source": str(src / "link.conf"), "target": "/l"}])
    assert tree.entries["l"].kind == "symlink" and tree.entries["l"].link == "file.conf"


def test_target_already_staged_is_a_duplicate(src: Path) -> None:
    with pytest.raises(StepError, match="duplicate entry /srv/data/a.txt"):
        contents_tree(src, [{"source": str(src / "dir"), "target": "/srv/data"},
                            {"source": str(src / "file.conf"), "target": "/srv/data/a.txt"}])


def test_missing_sources_are_named(src: Path, tmp_path: Path) -> None:
    info = tmp_path / "ci"
    info.mkdir()
    (info / "store-paths").write_text("")
    for contents, needle in (
        ([{"source": str(src / "nope"), "target": "/x"}], "contents[0].source"),
        ([{"source": str(src / "*.none"), "target": "/x"}], "no file matches"),
    ):
        spec = parse_spec({"toplevel": str(src), "closureInfo": str(info), "copyChannel": False,
                           "contents": contents})
        with pytest.raises(StepError, match=needle.replace("[", r"\[")):
            check_sources(spec)


def seed_measure(directory: Path) -> TreeUsage:
    """The reference's own shell measurement, run on a materialised tree."""
    du = subprocess.run(
        ["bash", "-c", "find . ! -type d -print0 | du --files0-from=- --apparent-size "
         "--count-links --block-size 4096 | cut -f1"],
        cwd=directory, check=True, capture_output=True, text=True).stdout.split()
    find = subprocess.run(["bash", "-c", "find . | wc -l"], cwd=directory, check=True,
                          capture_output=True, text=True).stdout
    return TreeUsage(file_blocks=sum(int(n) for n in du), inodes=int(find))


def test_usage_matches_the_references_du_and_find(src: Path, tmp_path: Path) -> None:
    big = src / "dir/big.bin"
    big.write_bytes(b"x" * 10_000)
    os.link(big, src / "dir/hardlink.bin")  # --count-links counts it twice
    tree = contents_tree(src, [{"source": str(src / "dir"), "target": "/a"},
                               {"source": str(src / "*.key"), "target": "/k"},
                               {"source": str(src / "link.conf"), "target": "/l"}])
    tree.add_file("etc/NIXOS", b"")
    tarball = tmp_path / "tree.tar"
    with tarball.open("wb") as fh:
        write_tar(tree.ordered(), fh.fileno())
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(unpacked, filter="tar")
        else:  # Debian 12's Python 3.11.2 predates extraction filters (3.11.4)
            tar.extractall(unpacked)
    assert tree.usage() == seed_measure(unpacked)


def test_auto_size_arithmetic_is_the_references() -> None:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": "efi"})
    usage = TreeUsage(file_blocks=1000, inodes=300)
    result = auto_disk_size(spec, usage)
    disk_usage = (1000 + 600) * 4096
    fudge = disk_usage * 52 // 1000
    fs = (disk_usage + fudge) // 4096 * 4096 + 4096
    additional = 512 * MIB + 34 * 512 + 257 * MIB
    assert result.filesystem_size_needed == fs
    assert result.disk_image_size == ((fs + additional) // MIB + 1) * MIB


@pytest.mark.parametrize(("ptt", "reserved"), [
    ("legacy", MIB), ("legacy+boot", 257 * MIB), ("legacy+gpt", 34 * 512 + 2 * MIB),
    ("efi", 34 * 512 + 257 * MIB), ("efixbootldr", 34 * 512 + 257 * MIB),
    ("hybrid", 34 * 512 + 257 * MIB), ("none", 0),
])
def test_reserved_space_per_layout(ptt: str, reserved: int) -> None:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": ptt, "additionalSpace": "0"})
    assert auto_disk_size(spec, TreeUsage(0, 0)).additional_space == reserved


def test_only_nix_store_puts_the_store_at_the_root(tmp_path: Path) -> None:
    path = tmp_path / "store" / "abc-hello"
    path.mkdir(parents=True)
    (path / "bin").mkdir()
    (path / "bin/hello").write_text("#!/bin/sh\n")
    info = tmp_path / "ci"
    info.mkdir()
    (info / "store-paths").write_text(f"{path}\n")
    spec = parse_spec({"toplevel": str(path), "closureInfo": str(info), "copyChannel": False,
                       "onlyNixStore": True, "installBootLoader": False,
                       "partitionTableType": "none"})
    tree = build_tree(spec, {})
    assert sorted(tree.entries) == ["", "abc-hello", "abc-hello/bin", "abc-hello/bin/hello"]

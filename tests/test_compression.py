"""`compression` of store images: each erofs and squashfs choice the installed tools
have, made by the unprivileged engine, checked by the tools and read back through the
kernel; wrong choices refused before any work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import Closure, Engine, base_spec

from make_disk_image.compression import available
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.filesystems.erofs import compression_args as erofs_args
from make_disk_image.filesystems.squashfs import compression_args as squashfs_args
from make_disk_image.interface import FS_TYPES
from make_disk_image.spec import SpecError, parse_spec


def test_tool_options() -> None:
    assert erofs_args(None) == erofs_args("none") == []
    assert erofs_args("lz4hc") == ["-zlz4hc"]
    assert squashfs_args("xz") == ["-comp", "xz"]
    assert squashfs_args("none") == ["-noI", "-noD", "-noF", "-noX"]
    assert FS_TYPES["squashfs"].default_compression == "lz4"
    assert FS_TYPES["erofs"].default_compression == "lz4"


def test_the_installed_tools_list_their_compressors() -> None:
    assert {"none", "gzip", "xz", "zstd", "lz4", "lzo"} <= available(FILESYSTEMS["squashfs"])
    assert {"none", "lz4", "lz4hc"} <= available(FILESYSTEMS["erofs"])


@pytest.mark.parametrize(("fs_type", "compression", "words"), [
    ("ext4", "xz", "is not compressed"),
    ("squashfs", "brotli", '"gzip", "xz", "zstd", "lz4", "lzo"'),
    ("erofs", "gzip", '"none", "lz4", "lz4hc"'),
])
def test_a_wrong_compression_is_refused(fs_type: str, compression: str, words: str) -> None:
    spec = {"toplevel": "/nix/store/x", "closureInfo": "/nix/store/y", "fsType": fs_type,
            "compression": compression, "copyChannel": False,
            "onlyNixStore": fs_type != "ext4", "installBootLoader": False,
            "partitionTableType": "none"}
    with pytest.raises(SpecError, match="compression") as caught:
        parse_spec(spec)
    assert words in str(caught.value)


def _choices(fs_type: str) -> list[str]:
    return [c for c in FS_TYPES[fs_type].compressions if c in available(FILESYSTEMS[fs_type])]


@pytest.mark.parametrize(("fs_type", "compression"),
                         [("squashfs", c) for c in _choices("squashfs")]
                         + [("erofs", c) for c in _choices("erofs")])
def test_every_compression_makes_a_readable_image(
        closure: Closure, engine: Engine, fs_type: str, compression: str) -> None:
    from test_other_filesystems import mounted

    spec = base_spec(closure, fsType=fs_type, partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False, compression=compression)
    result = engine.build_without_vm(spec, name=f"{fs_type}-{compression}")
    assert result.returncode == 0, result.stderr
    image = result.out / "nixos.img"
    if fs_type == "squashfs":
        info = subprocess.run(["unsquashfs", "-s", str(image)], check=True,
                              capture_output=True, text=True).stdout
        if compression == "none":
            assert "Data is uncompressed" in info, info
        else:
            assert f"Compression {compression}" in info, info
    else:
        subprocess.run(["fsck.erofs", str(image)], check=True, capture_output=True)
    with mounted(image, fs_type) as root:
        big = root / os.path.basename(closure.lib) / "lib/big.dat"
        assert big.read_bytes() == b"x" * 70000


def test_a_compressor_the_tool_lacks_is_refused_before_work(closure: Closure,
                                                            engine: Engine) -> None:
    have = available(FILESYSTEMS["erofs"])
    missing = [c for c in FS_TYPES["erofs"].compressions if c not in have]
    if not missing:
        pytest.skip("this mkfs.erofs has every compressor interface.json lists")
    spec = base_spec(closure, fsType="erofs", partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False, compression=missing[0])
    result = engine.run("prepare", spec)
    assert result.returncode != 0
    assert "argument `compression`" in result.stderr, result.stderr
    assert not (result.build_dir / "nixos.raw").exists()


def test_erofs_from_a_tar_stream_is_the_materialized_trees_image(
        closure: Closure, tmp_path: Path) -> None:
    """erofs-utils >= 1.7 reads the engine's tar stream: no copy of the tree, and the
    same bytes as from the materialized tree (with a fixed UUID and time)."""
    from make_disk_image.dedup import link_identical
    from make_disk_image.filesystems.erofs import erofs_command, make_erofs, takes_tar
    from make_disk_image.filesystems.scratch import materialized
    from make_disk_image.staging import Tree
    from make_disk_image.tarstream import run_fed

    if not takes_tar():
        pytest.skip("this mkfs.erofs (erofs-utils < 1.7) reads no tar stream")
    tree = Tree()
    for path in (closure.lib, closure.app, closure.lib):
        tree.add_host(Path(path), os.path.basename(path))
    tree.add_host(Path(closure.lib), "lib-again")
    link_identical(tree.entries, [os.path.basename(closure.lib), "lib-again"])
    entries = tree.ordered()
    uuid = "f222513b-ded1-49fa-b591-20ce86a2fe7f"
    for compression in ("none", "lz4"):
        streamed, copied = tmp_path / f"s-{compression}", tmp_path / f"c-{compression}"
        run_fed([*erofs_command(streamed, uuid=uuid, deterministic=True,
                                compression=compression), "--tar=f"], entries, step="t")
        with materialized(entries, tmp_path, step="t", fs_type="erofs") as root:
            make_erofs(copied, root, uuid=uuid, deterministic=True, step="t",
                       compression=compression)
        assert streamed.read_bytes() == copied.read_bytes()

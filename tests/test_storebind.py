"""storebind: store paths bound read-only over their mount points, and unbound again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from make_disk_image import storebind
from make_disk_image.process import StepError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def mounted_under(path: Path) -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True,
                         check=True).stdout.split()
    return [t for t in out if t.startswith(str(path))]


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    store, root = tmp_path / "store", tmp_path / "root"
    (store / "aaaa-dir/bin").mkdir(parents=True)
    (store / "aaaa-dir/bin/tool").write_text("tool\n")
    (store / "bbbb-file").write_text("a store path that is a file\n")
    (store / "cccc-link").symlink_to("aaaa-dir")
    mounts = root / "nix/store"
    (mounts / "aaaa-dir").mkdir(parents=True)
    (mounts / "bbbb-file").write_text("")
    (mounts / "cccc-link").symlink_to("aaaa-dir")
    yield store, root
    # Never leave a binding behind, whatever failed.
    for target in reversed(mounted_under(tmp_path)):
        subprocess.run(["umount", "-l", target], check=False)


def test_binds_read_only_and_unbinds(layout: tuple[Path, Path]) -> None:
    store, root = layout
    names = ("aaaa-dir", "bbbb-file", "cccc-link")
    bound = storebind.bind_store_paths(names, root, store)
    # The symlink is prepare's own link: nothing to bind.
    assert [p.name for p in bound] == ["aaaa-dir", "bbbb-file"]
    mounts = root / "nix/store"
    assert (mounts / "aaaa-dir/bin/tool").read_text() == "tool\n"
    assert (mounts / "cccc-link/bin/tool").read_text() == "tool\n"
    assert (mounts / "bbbb-file").read_text().startswith("a store path")
    with pytest.raises(OSError) as excinfo:
        (mounts / "aaaa-dir/new").write_text("x")
    assert excinfo.value.errno == 30  # EROFS: the builder's store stays untouched
    assert not (store / "aaaa-dir/new").exists()
    storebind.unbind(bound)
    assert mounted_under(root) == []
    assert list((mounts / "aaaa-dir").iterdir()) == []
    assert (mounts / "bbbb-file").read_text() == ""


def test_missing_store_path_names_it_and_binds_nothing(layout: tuple[Path, Path]) -> None:
    store, root = layout
    (root / "nix/store/dddd-gone").mkdir()
    with pytest.raises(StepError, match="dddd-gone is not in the build VM's store"):
        storebind.bind_store_paths(("aaaa-dir", "dddd-gone"), root, store)
    assert mounted_under(root) == []


def test_missing_mount_point_fails_with_the_call(layout: tuple[Path, Path]) -> None:
    store, root = layout
    (store / "eeee-new").mkdir()
    with pytest.raises(StepError, match=r"bind .*eeee-new: No such file or directory"):
        storebind.bind_store_paths(("aaaa-dir", "eeee-new"), root, store)
    assert mounted_under(root) == []

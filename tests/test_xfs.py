"""make_disk_image/filesystems/xfs.py: which maker makes an xfs, and that a tree's hard
links are never lost on the way.

The engine's writer (xfs_fill) keeps hard links, so `deduplicate` takes fsType xfs. Its
fallback, mkfs.xfs -p, is used where no CRC-32C is at hand or where mkfs.xfs makes a
filesystem the writer does not know; a protofile has no hard links, so a build that
asks for links is refused there: `deduplicate` at the start of prepare (before the
store is read), any other link where the fallback would write it.
(The images themselves, with and without deduplication: tests/test_dedup.py.)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import world_readable_dir

from make_disk_image import staging
from make_disk_image.dedup import check_links_kept
from make_disk_image.filesystems import xfs
from make_disk_image.models import MIB, Entry
from make_disk_image.prepare import prepare
from make_disk_image.process import StepError
from make_disk_image.spec import parse_spec


@pytest.fixture
def store_spec() -> Iterator[dict[str, object]]:
    """A store image spec of two store paths holding the same file: `deduplicate`
    would link them."""
    base = world_readable_dir("mdi-xfs-store-")
    paths = [base / "aaaa-one", base / "bbbb-two"]
    for path in paths:
        path.mkdir()
        (path / "same").write_bytes(b"the same bytes\n")
    (base / "store-paths").write_text("".join(f"{p}\n" for p in paths))
    yield {"toplevel": str(paths[0]), "closureInfo": str(base), "onlyNixStore": True,
           "installBootLoader": False, "copyChannel": False, "fsType": "xfs",
           "partitionTableType": "none", "deduplicate": True}
    shutil.rmtree(base)


def test_xfs_takes_deduplication_where_its_writer_runs() -> None:
    assert xfs.writer_crc() is not None, "this host has a CRC-32C (e2fsprogs' libext2fs)"
    check_links_kept("xfs", True)


def test_without_its_writer_deduplication_is_refused_before_the_store_is_read(
        store_spec: dict[str, object], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xfs, "writer_crc", lambda: None)
    check_links_kept("xfs", False)  # no links asked for: mkfs.xfs -p may make it
    check_links_kept("ext4", True)

    def read(*_: object) -> None:
        raise AssertionError("the store was read")

    monkeypatch.setattr(staging, "link_identical", read)
    with pytest.raises(StepError, match=r"argument `deduplicate`: fsType xfs would be made "
                       r"by mkfs\.xfs -p here.*MDI_LIBEXT2FS.*set deduplicate = false"):
        prepare(parse_spec(store_spec), tmp_path / "build", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_deduplication_is_refused_where_mkfs_makes_what_the_writer_does_not_know(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer mkfs.xfs whose defaults the writer does not know (seen on an empty
    filesystem made once) would fall back to mkfs.xfs -p as well."""
    monkeypatch.setattr(xfs.xfs_fill, "unsupported", lambda _: "reverse mapping btrees")
    with pytest.raises(StepError, match=r"does not know reverse mapping btrees \(this "
                       r"mkfs\.xfs' defaults\)"):
        check_links_kept("xfs", True)


LINKED = [Entry("", "dir", 0o755), Entry("a", "file", 0o444, data=b"same\n"),
          Entry("b", "hardlink", 0o444, link="a")]


@pytest.mark.parametrize(("extra", "without_crc", "reason"), [
    ((), True, "MDI_LIBEXT2FS"), (("-m", "rmapbt=1"), False, "rmapbt")])
def test_the_protofile_fallback_refuses_hard_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...],
        without_crc: bool, reason: str) -> None:
    """Whatever made the links (deduplicate, the guest), mkfs.xfs -p would write copies:
    the fallback refuses them, naming the cause, and makes nothing."""
    if without_crc:
        monkeypatch.setattr(xfs, "writer_crc", lambda: None)
    image = tmp_path / "xfs.img"
    with image.open("wb") as fh:
        fh.truncate(400 * MIB)
    ran = []
    monkeypatch.setattr(xfs, "_protofile_xfs", lambda *a, **_: ran.append(a))
    with pytest.raises(StepError, match=rf"/b is a hard link to /a .*mkfs\.xfs -p.*{reason}"):
        xfs.make_xfs(image, LINKED, label="t", uuid=None, deterministic=True, step="t",
                     extra=extra)
    assert not ran
    # Without the link, the same fallback makes it.
    xfs.make_xfs(image, LINKED[:2], label="t", uuid=None, deterministic=True, step="t",
                 extra=extra)
    assert len(ran) == 1

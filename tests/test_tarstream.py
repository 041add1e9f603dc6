"""The tar stream into mke2fs: what tar readers see, sendfile bodies, progress."""

from __future__ import annotations

import logging
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from make_disk_image import tarstream
from make_disk_image.models import Entry


def entries(tmp_path: Path) -> list[Entry]:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return [
        Entry("", "dir", 0o755),
        Entry("bin", "dir", 0o755),
        Entry("bin/big", "file", 0o555, source=str(big), size=big.stat().st_size),
        Entry("bin/empty", "file", 0o644, data=b""),
        Entry("etc", "dir", 0o755, 1000, 100, mtime=1234),
        Entry("etc/data", "file", 0o600, 1000, 100, data=b"abc", size=3),
        Entry("etc/link", "symlink", 0o777, link="../bin/big", size=10),
        Entry("etc/hard", "hardlink", 0o600, 1000, 100, link="etc/data"),
        Entry("etc/fifo", "fifo", 0o644),
        Entry("etc/null", "chardev", 0o666, device=(1, 3)),
        Entry("x" * 120 + "/long-name-that-needs-pax-headers", "file", 0o644, data=b"p", size=1),
    ]


def stream_through_pipe(items: list[Entry], dest: Path) -> tarstream.Progress:
    """Through a real pipe, as rootfs feeds mke2fs: sendfile splices into it."""
    read_fd, write_fd = os.pipe()
    result: list[tarstream.Progress] = []

    def feed() -> None:
        try:
            result.append(tarstream.write_tar(items, write_fd))
        finally:
            os.close(write_fd)

    thread = threading.Thread(target=feed)
    thread.start()
    with os.fdopen(read_fd, "rb") as src, dest.open("wb") as out:
        out.write(src.read())
    thread.join()
    return result[0]


def test_tar_readers_see_every_entry_as_written(tmp_path: Path) -> None:
    items = entries(tmp_path)
    archive = tmp_path / "tree.tar"
    progress = stream_through_pipe(items, archive)
    assert progress.entries == len(items)
    assert progress.bytes == 3 * 1024 * 1024 + 17 + 3 + 1
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        big = tar.extractfile("bin/big")
        assert big is not None and big.read() == (tmp_path / "big.bin").read_bytes()
        data = tar.extractfile("etc/data")
        assert data is not None and data.read() == b"abc"
    assert members["etc"].mtime == 1234 and members["bin"].mtime == tarstream.STORE_MTIME
    assert (members["etc/data"].uid, members["etc/data"].gid) == (1000, 100)
    assert members["etc/link"].issym() and members["etc/link"].linkname == "../bin/big"
    assert members["etc/hard"].islnk() and members["etc/hard"].linkname == "etc/data"
    assert members["etc/fifo"].isfifo()
    assert members["etc/null"].ischr() and (members["etc/null"].devmajor, 1) == (1, 1)
    assert "x" * 120 + "/long-name-that-needs-pax-headers" in members
    # GNU tar agrees.
    listing = subprocess.run(["tar", "-tvf", str(archive)], check=True, capture_output=True,
                             text=True).stdout
    assert "1000/100" in listing and "bin/big" in listing


def test_a_source_that_shrinks_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"12345")
    item = Entry("f", "file", 0o644, source=str(src), size=5)
    read_fd, write_fd = os.pipe()
    # The header says 5 bytes; the file is empty by the time its body is sent.
    src.write_bytes(b"")
    with pytest.raises(OSError, match="shrank"):
        try:
            tarstream._send_file(write_fd, os.open(src, os.O_RDONLY), 5)
        finally:
            os.close(write_fd)
            os.close(read_fd)
    assert item.size == 5


def test_progress_names_entries_bytes_and_rate(caplog: pytest.LogCaptureFixture) -> None:
    progress = tarstream.Progress("root filesystem: streamed", 10, 20 * 1024 * 1024)
    progress.entries, progress.bytes = 5, 10 * 1024 * 1024
    with caplog.at_level(logging.INFO, logger="make_disk_image"):
        progress.log()
    assert "root filesystem: streamed: 5/10 entries, 10.0/20.0 MiB" in caplog.text
    assert "MiB/s" in caplog.text

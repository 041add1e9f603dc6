"""The image tree as a tar stream on a file descriptor: the input of mksquashfs -tar and
mkfs.erofs --tar (ext2/3/4 are filled by the engine's writer, filesystems/ext4_fill).

Headers come from Python's tarfile (PAX format, explicit owners, no lookup of names);
file bodies go from the source file to the pipe with os.sendfile, which the kernel
does by splicing page-cache pages: the bytes are never copied through Python. This is
what closed most of the gap to `mke2fs -d DIR` when ext4 took it (README, Measurements). Progress is
logged at most every PROGRESS_SECONDS, with entries and bytes against the totals.
"""

from __future__ import annotations

import errno
import logging
import os
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import Entry
from make_disk_image.process import StepError

logger = logging.getLogger("make_disk_image")

BLOCK = tarfile.BLOCKSIZE
STORE_MTIME = 1  # Nix's canonical store time; None in an entry means this
PROGRESS_SECONDS = 5.0
# Headers are gathered up to this size before one write; bodies bypass the buffer.
HEADER_BUFFER = 1 << 20
SENDFILE_CHUNK = 1 << 30

_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "file": tarfile.REGTYPE,
}


@dataclass
class Progress:
    """Entries and bytes streamed so far, logged now and then."""

    what: str
    total_entries: int
    total_bytes: int
    entries: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    last_log: float = field(default_factory=time.monotonic)

    def step(self, size: int) -> None:
        self.entries += 1
        self.bytes += size
        now = time.monotonic()
        if now - self.last_log >= PROGRESS_SECONDS:
            self.last_log = now
            self.log(now)

    def log(self, now: float | None = None) -> None:
        elapsed = max((now or time.monotonic()) - self.started, 1e-6)
        logger.info(
            "%s: %d/%d entries, %.1f/%.1f MiB, %.1f MiB/s, %.1f s",
            self.what,
            self.entries,
            self.total_entries,
            self.bytes / (1 << 20),
            self.total_bytes / (1 << 20),
            self.bytes / (1 << 20) / elapsed,
            elapsed,
        )


def header(entry: Entry, size: int) -> bytes:
    info = tarfile.TarInfo(entry.path or ".")
    info.type = _TYPES[entry.kind]
    info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
    info.uname = info.gname = "root" if entry.uid == 0 else ""
    info.mtime = STORE_MTIME if entry.mtime is None else entry.mtime
    if entry.kind in ("symlink", "hardlink"):
        # mke2fs applies a hard link's header to the shared inode too, so a hardlink
        # entry carries the same owner and mode as the first name.
        info.linkname = entry.link or ""
    if entry.kind in ("chardev", "blockdev"):
        assert entry.device is not None
        info.devmajor, info.devminor = entry.device
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _send_file(out_fd: int, in_fd: int, size: int) -> None:
    """`size` bytes of in_fd to out_fd; sendfile (splice into the pipe), else read/write."""
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(out_fd, in_fd, offset, min(size - offset, SENDFILE_CHUNK))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
                raise
            os.lseek(in_fd, 0, os.SEEK_SET)
            while offset < size:
                chunk = os.read(in_fd, min(size - offset, 1 << 20))
                if not chunk:
                    break
                _write_all(out_fd, chunk)
                offset += len(chunk)
            break
        if sent == 0:
            break
        offset += sent
    if offset != size:
        raise OSError(errno.EIO, f"file shrank while being read ({offset} of {size} bytes)")


def write_tar(entries: Sequence[Entry], fd: int, *, what: str = "tar stream") -> Progress:
    """Write `entries` (in order) as a tar archive to `fd`; return the final progress."""
    progress = Progress(
        what,
        len(entries),
        sum(e.size for e in entries if e.kind == "file"),
    )
    pending = bytearray()
    for entry in entries:
        if entry.kind != "file":
            pending += header(entry, 0)
        elif entry.data is not None:
            pending += header(entry, len(entry.data))
            pending += entry.data
            pending += bytes(-len(entry.data) % BLOCK)
        else:
            assert entry.source is not None
            in_fd = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(in_fd).st_size
                pending += header(entry, size)
                _write_all(fd, pending)
                pending.clear()
                _send_file(fd, in_fd, size)
            finally:
                os.close(in_fd)
            pending += bytes(-size % BLOCK)
        if len(pending) >= HEADER_BUFFER:
            _write_all(fd, pending)
            pending.clear()
        progress.step(entry.size if entry.kind == "file" else 0)
    pending += bytes(2 * BLOCK)  # end of archive
    _write_all(fd, pending)
    progress.log()
    return progress


def run_fed(argv: Sequence[str | Path], entries: Sequence[Entry], *, step: str,
            env: dict[str, str] | None = None) -> None:
    """Run `argv` with `entries` as a tar stream on its stdin, written by a thread: the
    tree goes from its sources into the tool, no copy between."""
    errors: list[BaseException] = []
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        try:
            write_tar(entries, write_fd, what=f"{step}: streamed")
        except BrokenPipeError:
            pass  # the tool stopped reading; its own error says why
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            os.close(write_fd)

    feeder = threading.Thread(target=feed, name="tar-feeder", daemon=True)
    feeder.start()
    try:
        with os.fdopen(read_fd, "rb") as stdin:
            process.run(argv, step=step, env=env or {}, stdin=stdin)
    finally:
        feeder.join()
    if errors:
        raise StepError(step, f"could not read the tree: {errors[0]}") from errors[0]

"""Small helpers: size parsing, the reference's rounding, allocating the image file."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path

from make_disk_image.interface import ARGUMENT_TYPES
from make_disk_image.process import StepError

# interface.json's, which nix/arguments.nix matches too: groups 1 (number) and 3 (suffix).
_IEC_RE = re.compile(ARGUMENT_TYPES["size"].pattern or "")
# "k" as "K": numfmt of coreutils 9.7 (nixpkgs', Debian 13's) reads it; 9.1 (Debian 12) does not.
_IEC_POWER = {"": 0, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6, "Z": 7, "Y": 8}
# The largest size any argument may have: ext4's limit with 4 KiB blocks (2^48 blocks),
# and far below what a file offset (2^63) can hold, so sums of sizes cannot overflow.
MAX_SIZE = 1 << 60


def parse_iec(value: str | int) -> int:
    """Bytes for a size as `numfmt --from=iec` reads it ("512M", "1.5K", "100").

    Like numfmt: one upper-case suffix (or "k"), powers of 1024, fractions rounded away from zero.
    """
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; give a size of 0 or more")
        if value > MAX_SIZE:
            raise ValueError(f"{value} bytes is more than the 1E (2^60 bytes) a disk image can be")
        return value
    match = _IEC_RE.fullmatch(value)
    if not match:
        raise ValueError(
            f'"{value}" is not a size numfmt --from=iec reads; write it like "512M" or "2G" '
            "(suffixes K, M, G, T; no 'i', no lower case but k)"
        )
    scaled = _scaled(match[1], match[3])
    if scaled > MAX_SIZE:
        raise ValueError(
            f'"{value.strip()}" is {scaled} bytes, more than the 1E (2^60 bytes) an ext4 '
            'filesystem or a disk image can be; write a smaller size such as "512M"'
        )
    return scaled


def _scaled(number: str, suffix: str) -> int:
    factor: int = 1024 ** _IEC_POWER[suffix]
    if "." not in number:
        return int(number) * factor
    whole, _, fraction = number.partition(".")
    # Exact arithmetic: a float loses digits (and overflows) for long inputs.
    scaled: int = int(whole or "0") * factor - (-int(fraction) * factor // 10 ** len(fraction))
    return scaled


def iec_bytes(value: str | int) -> int | None:
    """Bytes for a size numfmt reads, however large; None for what it does not read."""
    if isinstance(value, int):
        return value
    match = _IEC_RE.fullmatch(value)
    return _scaled(match[1], match[3]) if match else None


def round_up_one_unit(value: int, unit: int) -> int:
    """The reference's round_to_nearest: (x / m + 1) * m, one unit up even when aligned."""
    return (value // unit + 1) * unit


def allocate_file(path: Path, size: int, *, step: str) -> None:
    """Create `path` as a sparse file of `size` bytes, or fail naming the size to change.

    The build directory's filesystem limits a file's size (16 TiB on ext4): truncate
    fails there with EFBIG, before any slow work.
    """
    try:
        with path.open("wb") as fh:
            fh.truncate(size)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StepError(
            step,
            f"cannot make {path} {size} bytes ({size // (1024 * 1024)} MiB) long: "
            f"{exc.strerror}; the build directory's filesystem cannot hold a disk image "
            'this large: lower `diskSize` (or `additionalSpace` with diskSize = "auto")',
        ) from exc


COPY_CHUNK = 1 << 20
# copy_file_range's errors that mean "not between these files": copy through memory.
_NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


def copy_range(in_fd: int, out_fd: int, start: int, end: int, dest: int) -> int:
    """Bytes [start, end) of in_fd to out_fd at `dest`; return how many there were (fewer
    when in_fd ends first). copy_file_range copies in the kernel, and shares the blocks
    instead (a reflink) where both files are on one btrfs or xfs; else read/write."""
    done = 0
    while start + done < end:
        want = min(end - start - done, 1 << 30)
        try:
            n = os.copy_file_range(in_fd, out_fd, want, start + done, dest + done)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            return done + _copy_through_memory(in_fd, out_fd, start + done, end, dest + done)
        if n == 0:
            break
        done += n
    return done


def _copy_through_memory(in_fd: int, out_fd: int, start: int, end: int, dest: int) -> int:
    """sendfile (still in the kernel) where it works, else pread/pwrite."""
    done = 0
    try:
        os.lseek(out_fd, dest, os.SEEK_SET)
        while start + done < end:
            n = os.sendfile(out_fd, in_fd, start + done, min(end - start - done, 1 << 30))
            if n == 0:
                return done
            done += n
        return done
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    while start + done < end:
        chunk = os.pread(in_fd, min(end - start - done, COPY_CHUNK), start + done)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            written = os.pwrite(out_fd, view, dest + done)
            view = view[written:]
            done += written
    return done


def copy_file(source: str | Path, dest: Path) -> None:
    """`source`'s bytes into a new file `dest` (mode 0600 until the caller sets it)."""
    with open(source, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if copy_range(fin.fileno(), fd, 0, size, 0) != size:
                raise OSError(errno.EIO, f"{source} shrank while being copied")
        finally:
            os.close(fd)


def copy_data_ranges(src: Path, dst: Path, ranges: Iterable[tuple[int, int]], *, step: str,
                     dest_offset: int = 0) -> int:
    """Copy the data (not the holes) of `src` within each byte range [start, end) to the
    same place plus `dest_offset` in `dst`, which exists; return the bytes copied.

    Only ENXIO from SEEK_DATA means "nothing but a hole from here to the end"; any other
    error, a `src` shorter than a range, or a read that comes back short fails `step`:
    what lies outside the filesystems (partition tables, boot code) must not be lost
    without a word.
    """
    ranges = list(ranges)
    copied = 0
    try:
        with src.open("rb") as fin, dst.open("r+b") as fout:
            in_fd = fin.fileno()
            size = os.fstat(in_fd).st_size
            needed = max((end for _, end in ranges), default=0)
            if size < needed:
                raise StepError(
                    step,
                    f"{src} is {size} bytes, shorter than the {needed} bytes to copy from it; "
                    "it was cut short (a full disk, or a step that failed before); build again",
                )
            for start, end in ranges:
                offset = start
                while offset < end:
                    try:
                        data_start = os.lseek(in_fd, offset, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:
                            break  # a hole from offset to the end of the file
                        raise
                    if data_start >= end:
                        break
                    data_end = min(os.lseek(in_fd, data_start, os.SEEK_HOLE), end)
                    done = copy_range(in_fd, fout.fileno(), data_start, data_end,
                                      data_start + dest_offset)
                    if done < data_end - data_start:
                        raise StepError(
                            step,
                            f"reading {src}: it ended at byte {data_start + done}, "
                            f"before the {data_end} bytes it had when the copy began "
                            "(something truncated it); build again",
                        )
                    copied += done
                    offset = data_end
    except OSError as exc:
        raise StepError(
            step, f"copying {src} to {dst}: {exc.strerror or exc} (errno {exc.errno})"
        ) from exc
    return copied

"""Size parsing against the real numfmt, and the reference's rounding."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from make_disk_image.process import StepError
from make_disk_image.utils import copy_data_ranges, parse_iec, round_up_one_unit

MIB = 1024 * 1024


@pytest.mark.parametrize("text", ["512M", "256M", "1G", "100", "0", "1.5K", " 5M", "3T", "7.25M"])
def test_parse_iec_matches_numfmt(text: str) -> None:
    expected = int(subprocess.run(["numfmt", "--from=iec", text], check=True,
                                  capture_output=True, text=True).stdout)
    assert parse_iec(text) == expected


def numfmt_reads(text: str) -> bool:
    return subprocess.run(["numfmt", "--from=iec", "--", text],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("text", ["1k", "1.5k"])
def test_parse_iec_reads_lower_case_k_as_nixpkgs_numfmt_does(text: str) -> None:
    """numfmt of coreutils 9.7 (nixpkgs', Debian 13's, which the reference runs) reads "k"
    as "K"; Debian 12's 9.1 refuses it. The engine reads what the reference's numfmt reads."""
    expected = int(float(text[:-1]) * 1024)
    assert parse_iec(text) == expected
    if numfmt_reads(text):
        assert int(subprocess.run(["numfmt", "--from=iec", text], check=True,
                                  capture_output=True, text=True).stdout) == expected


@pytest.mark.parametrize("text", ["1m", "1Ki", "1M2", "", "M", "k"])
def test_parse_iec_rejects_what_numfmt_rejects(text: str) -> None:
    assert subprocess.run(["numfmt", "--from=iec", "--", text], capture_output=True).returncode
    with pytest.raises(ValueError, match="numfmt"):
        parse_iec(text)


def test_round_up_one_unit_always_moves_up() -> None:
    mib = 1024 * 1024
    assert round_up_one_unit(256 * mib, mib) == 257 * mib  # already aligned: still one up
    assert round_up_one_unit(256 * mib - 1, mib) == 256 * mib
    assert round_up_one_unit(0, 4096) == 4096


# --- copy_data_ranges: data copied, holes kept, faults not taken for holes ---------------


def sparse_source(path: Path) -> Path:
    """4 MiB: data in the first and the last MiB, a hole between."""
    with path.open("wb") as f:
        f.write(b"A" * MIB)
        f.seek(3 * MIB)
        f.write(b"Z" * MIB)
    return path


def empty_like(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_copy_data_ranges_copies_data_and_keeps_holes(tmp_path: Path) -> None:
    src = sparse_source(tmp_path / "src")
    dst = empty_like(tmp_path / "dst", 4 * MIB)
    copied = copy_data_ranges(src, dst, [(0, 4 * MIB)], step="test")
    assert copied == 2 * MIB
    assert dst.read_bytes() == src.read_bytes()
    # A range wholly in a hole copies nothing.
    assert copy_data_ranges(src, dst, [(MIB, 3 * MIB)], step="test") == 0


def test_copy_data_ranges_fails_on_a_read_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error from SEEK_DATA is not "only a hole to the end" (only ENXIO is)."""
    src = sparse_source(tmp_path / "src")
    dst = empty_like(tmp_path / "dst", 4 * MIB)
    real_lseek = os.lseek

    def failing_lseek(fd: int, pos: int, how: int) -> int:
        if how == os.SEEK_DATA and pos >= 2 * MIB:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", failing_lseek)
    with pytest.raises(StepError) as err:
        copy_data_ranges(src, dst, [(0, MIB), (2 * MIB, 4 * MIB)], step="finish: keep")
    assert err.value.step == "finish: keep"
    assert "Input/output error" in str(err.value)


def test_copy_data_ranges_fails_on_a_short_read(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The source truncated while it is copied: the read comes back short."""
    src = sparse_source(tmp_path / "src")
    dst = empty_like(tmp_path / "dst", 4 * MIB)
    real_lseek = os.lseek

    def truncating_lseek(fd: int, pos: int, how: int) -> int:
        found = real_lseek(fd, pos, how)
        if how == os.SEEK_HOLE and found == 4 * MIB:
            os.truncate(src, 3 * MIB + 4096)  # the last data run is cut after lseek saw it
        return found

    monkeypatch.setattr(os, "lseek", truncating_lseek)
    with pytest.raises(StepError) as err:
        copy_data_ranges(src, dst, [(0, 4 * MIB)], step="test")
    assert "something truncated it" in str(err.value)


def test_copy_data_ranges_refuses_a_source_shorter_than_the_ranges(tmp_path: Path) -> None:
    src = sparse_source(tmp_path / "src")
    dst = empty_like(tmp_path / "dst", 8 * MIB)
    with pytest.raises(StepError) as err:
        copy_data_ranges(src, dst, [(0, MIB), (7 * MIB, 8 * MIB)], step="test")
    assert "shorter than the 8388608 bytes" in str(err.value)


@pytest.mark.parametrize("without", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_file_and_ranges_without_kernel_copies(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    without: tuple[str, ...]) -> None:
    """copy_file_range where the kernel has it between the files, else sendfile, else
    pread/pwrite: the same bytes and holes each way."""
    from make_disk_image.utils import copy_file

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    for name in without:
        monkeypatch.setattr(os, name, refuse)
    data = os.urandom(3 * MIB + 123)
    (tmp_path / "src").write_bytes(data)
    copy_file(tmp_path / "src", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    src = sparse_source(tmp_path / "sparse")
    dst = empty_like(tmp_path / "dst", 6 * MIB)
    copied = copy_data_ranges(src, dst, [(0, 4 * MIB)], step="t", dest_offset=2 * MIB)
    assert dst.read_bytes()[2 * MIB:] == src.read_bytes()[:4 * MIB]
    assert copied < 4 * MIB  # the hole stayed one

"""Size parsing against the real numfmt, and the reference's rounding."""

from __future__ import annotations

import subprocess

import pytest

from make_disk_image.utils import parse_iec, round_up_one_unit


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

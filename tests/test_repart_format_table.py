"""repart's `Format=` table: every value repart 254 takes has a row, and the rows agree
with the filesystem registry where the two vocabularies meet."""

from __future__ import annotations

from dataclasses import replace

import pytest

from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.process import StepError
from make_disk_image.repart import build, definitions, format_table
from make_disk_image.repart.format_table import FORMATS

# repart.d(5) 254's Format= values (mkfs-util.c), as a set of facts.
REPART_254_FORMATS = {"ext4", "btrfs", "xfs", "vfat", "erofs", "squashfs", "swap"}


def test_every_repart_format_has_a_row() -> None:
    assert set(FORMATS) == REPART_254_FORMATS
    assert all(name == row.name for name, row in FORMATS.items())


def test_read_only_rows_are_the_registry_read_only_filesystems() -> None:
    shared = set(FORMATS) & set(FILESYSTEMS)
    assert {n for n in shared if FORMATS[n].read_only} == \
        {n for n in shared if FILESYSTEMS[n].read_only}


def test_in_place_and_guess_need_a_maker() -> None:
    for row in FORMATS.values():
        assert row.make is not None or not (row.in_place or row.guess or row.read_only)
        assert not (row.read_only and row.in_place), row.name
    assert set(format_table.guessed()) <= set(format_table.built())


def test_only_swap_holds_no_files() -> None:
    assert [n for n, row in FORMATS.items() if not row.holds_files] == ["swap"]


def test_every_format_is_built() -> None:
    assert format_table.built() == list(FORMATS)


def test_a_format_without_maker_is_refused_before_any_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = dict(FORMATS)
    rows["xfs"] = replace(rows["xfs"], make=None)
    monkeypatch.setattr(format_table, "FORMATS", rows)
    monkeypatch.setattr(definitions, "FORMATS", rows)
    d = definitions.parse("20-home", {"Type": "home", "Format": "xfs"}, "x86-64")
    with pytest.raises(StepError, match=r"Format: xfs is not built by this engine yet; "
                       r"use ext4, btrfs, vfat"):
        build._check_buildable([d], {})


@pytest.mark.parametrize("name", [n for n, row in FORMATS.items()
                                  if row.make is not None and row.guess is None
                                  and not row.read_only and row.holds_files])
def test_minimize_guess_without_a_guess_is_refused(name: str) -> None:
    d = definitions.parse("20-x", {"Type": "linux-generic", "Format": name,
                                   "Minimize": "guess"}, "x86-64")
    with pytest.raises(StepError, match=r"Minimize: guess is built for ext4, btrfs here"):
        build._check_buildable([d], {})

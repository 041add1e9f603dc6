"""make-disk-image-repart: one error line naming the option, exit 2 for bad definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from make_disk_image.repart import cli


def test_verity_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "x", "partitions": {
        "10-store": {"repartConfig": {"Type": "usr", "Format": "erofs", "Verity": "data"}}}}))
    assert cli.main([str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image.repart.partitions.10-store.repartConfig.Verity:")
    assert not (tmp_path / "out").exists()


def test_needs_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("out", raising=False)
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    assert cli.main([str(spec)]) == 2
    assert "--out" in capsys.readouterr().err


def test_what_is_not_built_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "x", "partitions": {
        "10-esp": {"repartConfig": {"Type": "esp", "Format": "vfat"}},
        "20-home": {"repartConfig": {"Type": "home", "Format": "xfs",
                                     "Minimize": "guess"}}}}))
    assert cli.main([str(spec), "--out", str(tmp_path / "out"), "--work",
                     str(tmp_path / "work")]) == 1
    assert "repartConfig.Minimize: guess is built for ext4, btrfs here" in \
        capsys.readouterr().err
    assert list((tmp_path / "work").iterdir()) == []

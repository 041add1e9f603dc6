"""Building image.repart definitions: the appliance layout from small sources, checked
with real tools (sfdisk, blkid, e2fsck, fsck.vfat, mtools, debugfs, fsck.erofs)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_btrfs_write import check_clean, needs_crc

from make_disk_image.repart import build, spec

SEED = "0867da16-f251-457d-a9e8-c31f9a3c220b"


def _sources(tmp: Path) -> dict[str, Path]:
    store = tmp / "store"
    (store / "aaaa-app/bin").mkdir(parents=True)
    (store / "aaaa-app/bin/app").write_bytes(b"#!/bin/sh\necho app\n" * 100)
    (store / "aaaa-app/bin/app").chmod(0o555)
    (store / "aaaa-app/bin/alias").symlink_to("app")
    (store / "bbbb-lib/lib").mkdir(parents=True)
    (store / "bbbb-lib/lib/libx.so").write_bytes(bytes(range(256)) * 400)
    closure = tmp / "closure"
    closure.mkdir()
    (closure / "store-paths").write_text(f"{store}/aaaa-app\n{store}/bbbb-lib\n")
    loader = tmp / "nixos.conf"
    loader.write_text("title NixOS\nlinux /EFI/nixos/kernel.efi\n")
    return {"closure": closure, "loader": loader, "store": store}


def appliance(tmp: Path, **extra: Any) -> dict[str, Any]:
    src = _sources(tmp)
    return {
        "name": "appliance", "architecture": "x86-64", "seed": SEED, "sectorSize": 512,
        "nixDatabase": False,
        "partitions": {
            "10-esp": {"repartConfig": {"Type": "esp", "Format": "vfat", "SizeMinBytes": "64M"},
                       "contents": {"/loader/entries/nixos.conf": {"source": str(src["loader"])}}},
            "20-xbootldr": {"repartConfig": {"Type": "xbootldr", "Format": "vfat",
                                             "SizeMinBytes": "32M"}},
            "30-swap": {"repartConfig": {"Type": "swap", "Format": "swap",
                                         "SizeMinBytes": "16M", "SizeMaxBytes": "16M"}},
            "40-root": {"repartConfig": {"Type": "root", "Format": "ext4", "Label": "root",
                                         "Minimize": "guess", "MakeDirectories": "/var /srv"},
                        "closureInfo": str(src["closure"])},
        },
        **extra,
    }


def _build(tmp: Path, data: dict[str, Any], name: str = "out") -> Path:
    work = tmp / f"work-{name}"
    work.mkdir()
    build.build_to(spec.from_json(data), tmp / name, work)
    return tmp / name


def _blkid(image: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(offset), image],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_appliance_tables_filesystems_and_files(tmp_path: Path) -> None:
    out = _build(tmp_path, appliance(tmp_path))
    image = out / "appliance.raw"
    records = json.loads((out / "repart-output.json").read_text())
    assert [(r["type"], r["label"], r["offset"]) for r in records] == [
        ("esp", "esp", 1048576), ("xbootldr", "xbootldr", 68157440), ("swap", "swap", 101711872),
        ("root-x86-64", "root", 118489088)]
    table = json.loads(subprocess.run(["sfdisk", "--json", image], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["id"] == "B581FEF7-24ED-4F31-990B-099EC86BBA03"
    fs = [_blkid(image, r["offset"]) for r in records]
    assert [(f["TYPE"], f.get("UUID")) for f in fs] == [
        ("vfat", "793A-442B"), ("vfat", "F777-6E70"),
        ("swap", "e8190672-b40d-45e4-a7cb-198532386075"),
        ("ext4", "7981aaf4-2a9a-4f86-9f1f-5b42c8f28bbf")]
    root = f"{image}?offset={records[3]['offset']}"
    subprocess.run(["e2fsck", "-fn", root], check=True, capture_output=True)
    listing = subprocess.run(["debugfs", "-R", "ls -p /", root], capture_output=True,
                             text=True, check=True).stdout
    assert all(f"/{name}/" in listing for name in ("nix", "var", "srv"))
    stat = subprocess.run(["debugfs", "-R", "stat /nix/store/aaaa-app/bin/app", root],
                          capture_output=True, text=True, check=True).stdout
    assert "User:     0   Group:     0" in stat and "Mode:  0555" in stat
    esp = subprocess.run(["mtype", "-i", f"{image}@@1048576", "::/loader/entries/nixos.conf"],
                         capture_output=True, text=True, check=True,
                         env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout
    assert esp.startswith("title NixOS")
    assert (out / "nix-support/hydra-build-products").read_text() == \
        f"file raw-image {image}\n"


def test_bit_identical_across_builds(tmp_path: Path) -> None:
    data = appliance(tmp_path)
    first = _build(tmp_path, data, "one") / "appliance.raw"
    second = _build(tmp_path, data, "two") / "appliance.raw"
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert digest[0] == digest[1]


def test_split_and_compression(tmp_path: Path) -> None:
    data = appliance(tmp_path, split=True, version="1.0",
                     compression={"enable": True, "algorithm": "zstd", "level": 3})
    out = _build(tmp_path, data)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["appliance_1.0.esp.raw.zst", "appliance_1.0.raw.zst",
                     "appliance_1.0.root-x86-64.raw.zst", "appliance_1.0.swap.raw.zst",
                     "appliance_1.0.xbootldr.raw.zst", "nix-support", "repart-output.json"]
    records = json.loads((out / "repart-output.json").read_text())
    assert records[0]["split_path"] == "appliance_1.0.esp.raw.zst"
    swap = subprocess.run(["zstd", "-dc", out / "appliance_1.0.swap.raw.zst"],
                          capture_output=True, check=True).stdout
    assert len(swap) == 16 << 20 and b"SWAPSPACE2" in swap[:4096]


@pytest.mark.parametrize("fmt", ["erofs", "squashfs"])
def test_read_only_store_partition(tmp_path: Path, fmt: str) -> None:
    src = _sources(tmp_path)
    data = {"name": "store", "seed": SEED, "partitions": {
        "20-store": {"repartConfig": {"Type": "usr", "Format": fmt, "Label": "store",
                                      "Minimize": "best"},
                     "closureInfo": str(src["closure"]), "nixStorePrefix": "/"}}}
    out = _build(tmp_path, data)
    again = _build(tmp_path, data, "again")
    assert (out / "store.raw").read_bytes() == (again / "store.raw").read_bytes()
    record = json.loads((out / "repart-output.json").read_text())[0]
    assert record["raw_size"] == 10 << 20  # repart's default least size
    found = _blkid(out / "store.raw", record["offset"])
    assert found["TYPE"] == fmt
    if fmt == "erofs":
        assert found["UUID"] == "59e4de3a-8bf2-4374-8479-09e750cd279b"


@pytest.mark.parametrize(("fmt", "check", "label"), [
    ("btrfs", ["btrfs", "check", "--readonly", "--check-data-csum"], "a-long-home-label"),
    ("xfs", ["xfs_repair", "-n", "-f"], "a-long-home-"),  # xfs keeps 12 bytes, as repart
])
def test_btrfs_and_xfs_through_the_filesystem_modules(tmp_path: Path, fmt: str,
                                                      check: list[str], label: str) -> None:
    """The registry's makers fill a writable partition: label, UUID from the seed, the
    closure and MakeDirectories, owned by root."""
    from test_other_filesystems import mounted

    src = _sources(tmp_path)
    data = {"name": "home", "seed": SEED, "partitions": {
        "30-home": {"repartConfig": {"Type": "home", "Format": fmt, "Label": "a-long-home-label",
                                     "MakeDirectories": "/srv"},
                    "closureInfo": str(src["closure"])}}}
    out = _build(tmp_path, data)
    record = json.loads((out / "repart-output.json").read_text())[0]
    assert record["raw_size"] == {"btrfs": 256 << 20, "xfs": 300 << 20}[fmt]
    found = _blkid(out / "home.raw", record["offset"])
    assert (found["TYPE"], found["LABEL"], found["UUID"]) == \
        (fmt, label, "525dc770-6d1d-4630-8c89-6de20b907469")
    part = tmp_path / "part"
    subprocess.run(["dd", f"if={out / 'home.raw'}", f"of={part}", "bs=4096",
                    f"skip={record['offset'] // 4096}", f"count={record['raw_size'] // 4096}",
                    "conv=sparse", "status=none"], check=True)
    subprocess.run([*check, part], check=True, capture_output=True)
    with mounted(part, fmt) as root:
        app = root / "nix/store/aaaa-app/bin/app"
        assert app.read_bytes() == (src["store"] / "aaaa-app/bin/app").read_bytes()
        assert (app.stat().st_uid, app.stat().st_mode & 0o7777) == (0, 0o555)
        assert (root / "srv").is_dir()


def _home(src: dict[str, Path], fmt: str, **extra: Any) -> dict[str, Any]:
    return {"name": "home", "seed": SEED, "partitions": {
        "30-home": {"repartConfig": {"Type": "home", "Format": fmt, "Label": "home",
                                     "MakeDirectories": "/srv"},
                    "closureInfo": str(src["closure"])}}, **extra}


def _partition(out: Path) -> bytes:
    record = json.loads((out / "repart-output.json").read_text())[0]
    with (out / "home.raw").open("rb") as f:
        f.seek(record["offset"])
        return f.read(record["raw_size"])


def test_btrfs_partition_is_the_same_bytes_twice(tmp_path: Path) -> None:
    """Two builds of one btrfs definition: the same partition, byte for byte (the
    engine's writer; mkfs.btrfs' chunk tree UUIDs and times would differ)."""
    data = _home(_sources(tmp_path), "btrfs")
    first, second = _partition(_build(tmp_path, data)), _partition(_build(tmp_path, data, "b"))
    assert len(first) == 256 << 20
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


def test_btrfs_mkfs_options_are_mkfs_btrfs_options(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """`mkfsOptions.btrfs` reach mkfs.btrfs, which then makes the partition."""
    caplog.set_level(logging.INFO, logger="make_disk_image")
    data = _home(_sources(tmp_path), "btrfs", mkfsOptions={"btrfs": ["--nodesize 32768"]})
    part = tmp_path / "part.btrfs"
    part.write_bytes(_partition(_build(tmp_path, data)))
    shown = subprocess.run(["btrfs", "inspect-internal", "dump-super", str(part)],
                           capture_output=True, text=True, check=True).stdout
    assert "nodesize\t\t32768" in shown
    assert any("mkfs.btrfs" in r.getMessage() for r in caplog.records)
    subprocess.run(["btrfs", "check", "--readonly", part], check=True, capture_output=True)


@needs_crc
def test_btrfs_minimize_guess(tmp_path: Path) -> None:
    """Format=btrfs with Minimize=guess is built (no SizeMinBytes needed): the guess
    (filesystems.guess_btrfs_size), at least repart's 256 MiB for btrfs, and not grown
    to its SizeMaxBytes; the filesystem checks clean and holds the closure."""
    data = appliance(tmp_path)
    data["partitions"]["40-root"]["repartConfig"].update(Format="btrfs", SizeMaxBytes="1G")
    out = _build(tmp_path, data)
    records = json.loads((out / "repart-output.json").read_text())
    root = records[3]
    assert root["raw_size"] == 256 << 20
    part = tmp_path / "root.btrfs"
    with (out / "appliance.raw").open("rb") as src:
        src.seek(root["offset"])
        part.write_bytes(src.read(root["raw_size"]))
    check_clean(part)
    names = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", str(part)],
                           capture_output=True, text=True, check=True).stdout
    assert all(f"name: {n}\n" in names for n in ("aaaa-app", "app", "libx.so", "srv"))

"""The GPT written for repart definitions: byte for byte the table systemd-repart 254
wrote for the appliance layout (its SHA-256s recorded 2026-12-07), read back by sfdisk."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from make_disk_image.repart import definitions, gpt, placement, uuids

# sha256 of repart 254's image: MBR + primary header + entries, and the backup (entries
# and header), for the appliance definitions below with nixpkgs' seed.
REPART_254_PRIMARY = "536719c29ba44008d04f7060d8a45b09018593cf6d168af9bee787882ac73455"
REPART_254_BACKUP = "06903e6c1619324c0906a89a373e43ed32e56ced17f605908c59ba207b1030b9"


def _appliance(image: Path, sector_size: int = 512) -> None:
    config = {
        "10-esp": {"Type": "esp", "Format": "vfat", "SizeMinBytes": "64M"},
        "20-xbootldr": {"Type": "xbootldr", "Format": "vfat", "SizeMinBytes": "32M"},
        "30-swap": {"Type": "swap", "Format": "swap", "SizeMinBytes": "16M",
                    "SizeMaxBytes": "16M"},
        "40-root": {"Type": "root", "Format": "ext4", "Label": "root", "Minimize": "guess"},
    }
    defs = definitions.parse_all(config, "x86-64")
    layout = placement.place(defs, [None, None, None, 27906048], sector_size=sector_size,
                             disk_size=None)
    with image.open("wb") as f:
        f.truncate(layout.size)
    parts = [
        gpt.GptPartition(d.type.uuid, u, p.offset // sector_size,
                         (p.offset + p.size) // sector_size - 1, d.type.attribute_bits, label)
        for d, u, p, label in zip(defs, uuids.partition_uuids(uuids.NIXPKGS_SEED, defs),
                                  layout.partitions, uuids.labels(defs), strict=True)]
    gpt.write(image, disk_uuid=uuids.disk_uuid(uuids.NIXPKGS_SEED), sector_size=sector_size,
              partitions=parts)


def test_bytes_as_repart_254(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    _appliance(image)
    data = image.read_bytes()
    assert hashlib.sha256(data[:1024 + 16384]).hexdigest() == REPART_254_PRIMARY
    assert hashlib.sha256(data[-16896:]).hexdigest() == REPART_254_BACKUP


def test_sfdisk_reads_it(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    _appliance(image)
    table = json.loads(subprocess.run(["sfdisk", "--json", image], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["firstlba"] == 2048 and table["lastlba"] == 285934
    assert [p["name"] for p in table["partitions"]] == ["esp", "xbootldr", "swap", "root"]
    verify = subprocess.run(["sgdisk", "--verify", image], capture_output=True, text=True)
    assert "No problems found" in verify.stdout


def test_4096_byte_sectors(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    _appliance(image, sector_size=4096)
    data = image.read_bytes()
    assert data[4096:4104] == b"EFI PART" and data[-4096:-4088] == b"EFI PART"
    assert gpt.usable_range(len(data), 4096) == (256, len(data) // 4096 - 6)

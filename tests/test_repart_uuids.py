"""UUIDs and labels derived from the seed: facts recorded from systemd-repart 254
(`--seed=` nixpkgs' default, sfdisk -d and blkid of its images, 2026-12-07)."""

from __future__ import annotations

import uuid

from make_disk_image.repart import definitions, uuids

SEED = uuids.NIXPKGS_SEED


def _defs(types_in_order: list[str]) -> list[definitions.Definition]:
    return [definitions.parse(f"{10 + i}-p", {"Type": t}, "x86-64")
            for i, t in enumerate(types_in_order)]


def test_disk_uuid() -> None:
    assert str(uuids.disk_uuid(SEED)).upper() == "B581FEF7-24ED-4F31-990B-099EC86BBA03"


def test_partition_uuids_counted_per_type() -> None:
    defs = _defs(["esp", "xbootldr", "swap", "root", "root", "linux-generic", "linux-generic"])
    got = [str(u) for u in uuids.partition_uuids(SEED, defs)]
    assert got == [
        "dac4058a-2fc0-4808-a7ef-b8b4501c00ce",
        "49daa67c-29c5-4961-827e-0cb0c6f00a19",
        "9f77b6a6-6333-4b04-ba32-24ec36c178ed",
        "57bd1ad1-c688-450a-ba37-d1792ec72fbb",
        "b61515ed-6e9f-4302-973e-25303565d610",
        "be6595b1-70b2-4c1e-a455-2693510a426f",
        "8e96213d-8e49-4402-819d-bf44af665035",
    ]
    assert uuids.labels(defs) == [
        "esp", "xbootldr", "swap", "root-x86-64", "root-x86-64-2", "linux-generic",
        "linux-generic-2"]


def test_fixed_uuid_wins() -> None:
    fixed = "11111111-2222-4333-8444-555555555555"
    d = definitions.parse("10-a", {"Type": "esp", "UUID": fixed}, "x86-64")
    assert uuids.partition_uuids(SEED, [d]) == [uuid.UUID(fixed)]


def test_filesystem_uuids() -> None:
    # ESP vfat volume id 793A-442B, XBOOTLDR F777-6E70, swap and ext4 root as blkid read them.
    cases = {
        "dac4058a-2fc0-4808-a7ef-b8b4501c00ce": "793a442b",
        "49daa67c-29c5-4961-827e-0cb0c6f00a19": "f7776e70",
    }
    for part, volume in cases.items():
        assert uuids.vfat_volume_id(uuids.filesystem_uuid(uuid.UUID(part))) == volume
    swap = uuids.filesystem_uuid(uuid.UUID("9f77b6a6-6333-4b04-ba32-24ec36c178ed"))
    assert str(swap) == "e8190672-b40d-45e4-a7cb-198532386075"
    root = uuids.filesystem_uuid(uuid.UUID("57bd1ad1-c688-450a-ba37-d1792ec72fbb"))
    assert str(root) == "7981aaf4-2a9a-4f86-9f1f-5b42c8f28bbf"
    store = uuids.filesystem_uuid(uuid.UUID("59625be4-083f-48ee-a96e-c3f4a409474e"))
    assert str(store) == "59e4de3a-8bf2-4374-8479-09e750cd279b"


def test_labels_explicit_and_unnamed_type() -> None:
    defs = [definitions.parse("1", {"Type": "esp", "Label": "boot"}, "x86-64"),
            definitions.parse("2", {"Type": "11111111-2222-4333-8444-555555555555"}, "x86-64"),
            definitions.parse("3", {"Type": "11111111-2222-4333-8444-555555555555"}, "x86-64")]
    assert uuids.labels(defs) == ["boot", "linux", "linux-2"]

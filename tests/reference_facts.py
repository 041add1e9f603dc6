"""The reference's partition tables, disk sizes and root filesystems, as recorded facts.

tests/reference_facts.json holds what nixpkgs' nixos/lib/make-disk-image.nix makes of
given arguments: its disk size and auto-size figures, its partition table (`sfdisk
--json` and a hash of the table's sectors), its root ext4's geometry. Its `note` says how
and when they were measured. The tests compare the engine's output with these facts;
nothing here computes what the reference would do.

Two differences are the engine's on purpose, and the comparisons apply them to the facts:
  1. legacy+gpt: the root partition's GUID is rootGPUID (the reference's sgdisk names
     a partition 3 that does not exist, so its partition 2 keeps 970C694F-...);
  2. MBR tables (legacy, legacy+boot) get a fixed disk signature (the reference's is
     random). The recorded table hashes already have the root GUID of fix 1 and hash
     an MBR with its 4 signature bytes zeroed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

FACTS_FILE = Path(__file__).resolve().parent / "reference_facts.json"
FACTS: dict[str, Any] = json.loads(FACTS_FILE.read_text())

SECTOR = 512
GPT_HEADER_SECTORS = 34  # protective MBR, header, 32 sectors of entries
GPT_BACKUP_SECTORS = 33  # entries and backup header at the end of the disk
MBR_SIGNATURE = slice(440, 444)
# What the reference's legacy+gpt root partition keeps (difference 1).
REFERENCE_LEGACY_GPT_ROOT_GUID = "970C694F-AFD0-4B99-B750-CDB7A329AB6F"
# What sgdisk makes of the reference's 31-digit disk GUID literal.
REFERENCE_DISK_GUID = "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
# Fields of `sfdisk --json` compared; others vary with util-linux's version.
TABLE_FIELDS = ("label", "id", "firstlba", "lastlba")
PARTITION_FIELDS = ("start", "size", "type", "uuid", "name", "bootable", "attrs")
# ext4 fields that follow from the reference's arguments whatever mke2fs's version;
# the others (inode count, features, ...) are compared under the recorded mke2fs only.
EXT4_ARGUMENT_FIELDS = ("Filesystem volume name", "Block count", "Block size")


def table_key(layout: str, boot_size: str, disk_mib: int) -> str:
    return f"{layout}/{boot_size}/{disk_mib}"


def partition_tables() -> dict[str, dict[str, Any]]:
    """The reference's tables at fixed disk sizes, keyed by table_key."""
    tables: dict[str, dict[str, Any]] = FACTS["partition_tables"]
    return tables


def table_cases() -> list[tuple[str, str, int]]:
    cases = []
    for key in partition_tables():
        layout, boot_size, disk_mib = key.split("/")
        cases.append((layout, boot_size, int(disk_mib)))
    return cases


def sfdisk_json(image: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                         check=True).stdout
    table: dict[str, Any] = json.loads(out)["partitiontable"]
    return table


def compared(table: dict[str, Any], *, identities: bool = True) -> dict[str, Any]:
    """The fields of an `sfdisk --json` table the comparisons look at; without the disk
    and partition identities when they are random."""
    skip = () if identities else ("id", "uuid")
    result = {k: table.get(k) for k in TABLE_FIELDS if k not in skip}
    result["partitions"] = [{k: p.get(k) for k in PARTITION_FIELDS if k not in skip}
                            for p in table["partitions"]]
    return result


def table_differences(got: dict[str, Any], expected: dict[str, Any], *,
                      identities: bool = True) -> list[str]:
    """Each compared field where the engine's table is not the reference's, named."""
    ours, theirs = compared(got, identities=identities), compared(expected, identities=identities)
    ours_parts, their_parts = ours.pop("partitions"), theirs.pop("partitions")
    differences = [f"{key}: engine {ours[key]!r}, reference {theirs[key]!r}"
                   for key in ours if ours[key] != theirs[key]]
    if len(ours_parts) != len(their_parts):
        differences.append(f"partitions: engine {len(ours_parts)}, reference {len(their_parts)}")
    # Partitions both have; a missing or extra one is the count above.
    pairs = zip(ours_parts, their_parts, strict=False)
    for number, (mine, reference) in enumerate(pairs, start=1):
        differences += [f"partition {number} {key}: engine {mine[key]!r}, reference "
                        f"{reference[key]!r}" for key in mine if mine[key] != reference[key]]
    return differences


def expected_table(fact: dict[str, Any], layout: str, root_guid: str | None,
                   mbr_disk_id: str | None) -> dict[str, Any]:
    """The reference's table with the engine's two deliberate differences applied."""
    table = json.loads(json.dumps(fact["table"]))
    if layout == "legacy+gpt" and root_guid is not None:
        assert table["partitions"][1]["uuid"] == REFERENCE_LEGACY_GPT_ROOT_GUID
        table["partitions"][1]["uuid"] = root_guid.upper()
    if table["label"] == "dos" and mbr_disk_id is not None:
        table["id"] = mbr_disk_id
    return table


def table_sha256(image: Path, table: str) -> str:
    """sha256 of the sectors a table occupies (MBR sector 0, or both GPT copies), with
    an MBR's disk signature zeroed."""
    with image.open("rb") as f:
        if table == "msdos":
            data = bytearray(f.read(SECTOR))
            data[MBR_SIGNATURE] = bytes(4)
        else:
            data = bytearray(f.read(GPT_HEADER_SECTORS * SECTOR))
            f.seek(-GPT_BACKUP_SECTORS * SECTOR, 2)
            data += f.read()
    return hashlib.sha256(bytes(data)).hexdigest()


def mke2fs_version() -> str:
    proc = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip().splitlines()[0]


def recorded_mke2fs() -> str:
    return next(t for t in FACTS["measured"]["tools"] if t.startswith("mke2fs"))


def ext4_expected(fact: dict[str, Any]) -> dict[str, str]:
    """The reference's root ext4 fields that this host's mke2fs must reproduce."""
    ext4: dict[str, str] = fact["ext4"]
    if mke2fs_version() == recorded_mke2fs():
        return dict(ext4)
    return {k: ext4[k] for k in EXT4_ARGUMENT_FIELDS}

"""Geometry and partition tables against the reference's, as recorded facts.

tests/reference_facts.json records what the reference's parted and sgdisk made of each
layout, bootSize and diskSize, including where parted refused (a boot partition that
does not fit, a root partition parted cannot place); tests/reference_facts.py says how
the engine's two deliberate differences are applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import reference_facts as facts

from make_disk_image.layouts import check_fits, plan_disk, rounded_boot_size
from make_disk_image.models import MIB, SECTOR
from make_disk_image.partitioning import write_partition_table
from make_disk_image.spec import SpecError, parse_spec

ROOT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


def layout_spec(ptt: str, boot_size: str, **more: Any) -> Any:
    return parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": ptt, "bootSize": boot_size,
                       "rootGPUID": ROOT_GUID, **more})


@pytest.mark.parametrize(("ptt", "boot_size", "disk_mib"), facts.table_cases(),
                         ids=lambda value: str(value))
def test_geometry_matches_the_reference(tmp_path: Path, ptt: str, boot_size: str,
                                        disk_mib: int) -> None:
    fact = facts.partition_tables()[facts.table_key(ptt, boot_size, disk_mib)]
    try:
        spec = layout_spec(ptt, boot_size)
    except SpecError as error:
        # The engine refuses such a bootSize for every diskSize: so must the reference.
        assert fact.get("refused"), f"the reference partitions this disk; the engine: {error}"
        return
    plan = plan_disk(spec, disk_mib * MIB, None)
    if fact.get("refused"):
        # The reference's parted gives up ("reference_error"); the engine refuses too.
        assert check_fits(plan), f"the reference fails: {fact['reference_error']}"
        return
    assert check_fits(plan) == []
    assert (plan.disk_size, rounded_boot_size(spec)) == (fact["disk_size"], fact["boot_size"])
    if ptt == "none":
        assert plan.table is None and plan.partitions == ()
        return
    root = plan.partitions[(plan.root_number or 0) - 1]
    assert (plan.root_number, root.start, root.end - root.start + 1) == (
        fact["root"]["number"], fact["root"]["start"], fact["root"]["sectors"])
    assert (plan.root_offset, plan.root_size) == (
        fact["root"]["start"] * SECTOR, fact["root"]["sectors"] * SECTOR)
    image = tmp_path / "disk.img"
    with image.open("wb") as fh:
        fh.truncate(plan.disk_size)
    assert plan.table is not None
    write_partition_table(image, plan)
    expected = facts.expected_table(fact, ptt, ROOT_GUID, plan.mbr_disk_id)
    differences = facts.table_differences(facts.sfdisk_json(image), expected)
    assert not differences, "\n".join(differences)
    if plan.table == "gpt":
        assert plan.disk_guid == facts.REFERENCE_DISK_GUID
    else:
        assert plan.mbr_disk_id == "0x" + ROOT_GUID[:8].lower()
    assert facts.table_sha256(image, plan.table) == fact["table_sha256"]


def test_not_deterministic_leaves_guids_random(tmp_path: Path) -> None:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": "efi", "deterministic": False, "rootFSUID": None})
    plan = plan_disk(spec, 600 * MIB, None)
    ids = []
    for name in ("a.img", "b.img"):
        path = tmp_path / name
        with path.open("wb") as fh:
            fh.truncate(plan.disk_size)
        write_partition_table(path, plan)
        ids.append(facts.sfdisk_json(path)["id"])
    assert ids[0] != ids[1]


def test_none_layout_has_no_table() -> None:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": "none"})
    plan = plan_disk(spec, 100 * MIB, None)
    assert plan.table is None and plan.partitions == () and plan.root_offset == 0
    assert plan.root_size == 100 * MIB

"""The partition table: libparted's geometry, and the GPT identities written directly
(the same bytes as the reference's sgdisk, which sleeps a second per call)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from make_disk_image.models import MIB
from make_disk_image.partitioning import set_gpt_guids, write_partition_table
from make_disk_image.process import StepError
from make_disk_image.spec import parse_spec

GPT_LAYOUTS = ("efi", "hybrid", "legacy+gpt", "efixbootldr")


def plan_for(ptt: str, disk_mib: int = 600):  # type: ignore[no-untyped-def]
    from make_disk_image.layouts import plan_disk

    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": ptt, "deterministic": True})
    return plan_disk(spec, disk_mib * MIB, None)


@pytest.mark.parametrize("ptt", GPT_LAYOUTS)
def test_guids_are_sgdisks_bytes(tmp_path: Path, ptt: str) -> None:
    plan = plan_for(ptt)
    assert plan.disk_guid is not None
    ours = tmp_path / "ours.raw"
    with ours.open("wb") as fh:
        fh.truncate(plan.disk_size)
    write_partition_table(ours, plan)
    # The same table through sgdisk, as the reference sets the GUIDs.
    bare = dataclasses.replace(plan, disk_guid=None)
    theirs = tmp_path / "theirs.raw"
    with theirs.open("wb") as fh:
        fh.truncate(plan.disk_size)
    write_partition_table(theirs, bare)
    args = [f"--disk-guid={plan.disk_guid}"]
    args += [f"--partition-guid={p.number}:{p.guid}" for p in plan.partitions if p.guid]
    subprocess.run(["sgdisk", *args, str(theirs)], check=True, capture_output=True)
    assert ours.read_bytes() == theirs.read_bytes()
    table = subprocess.run(["sgdisk", "--verify", str(ours)], check=True,
                           capture_output=True, text=True).stdout
    assert "No problems found" in table, table


def test_a_changed_guid_changes_both_headers(tmp_path: Path) -> None:
    plan = plan_for("efi")
    image = tmp_path / "disk.raw"
    with image.open("wb") as fh:
        fh.truncate(plan.disk_size)
    write_partition_table(image, plan)
    again = tmp_path / "again.raw"
    shutil.copyfile(image, again)
    other = str(uuid.UUID(int=1))
    set_gpt_guids(again, other, {1: other})
    info = subprocess.run(["sfdisk", "--json", str(again)], check=True, capture_output=True,
                          text=True).stdout
    assert other.upper() in info and info.count(other.upper()) == 2
    verify = subprocess.run(["sgdisk", "--verify", str(again)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout


def test_no_gpt_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "empty.raw"
    with image.open("wb") as fh:
        fh.truncate(MIB)
    with pytest.raises(StepError, match="no GPT header"):
        set_gpt_guids(image, str(uuid.UUID(int=1)), {})

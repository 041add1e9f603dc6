"""diskSize = "minimal", apparent sizes for "auto", and growing a minimal image.

Everything runs against the real tools: prepare as the unprivileged build user, then
dumpe2fs/tune2fs for the free space and features, `truncate` + `growpart`
(cloud-guest-utils) + `resize2fs` to grow an image without booting it, `sgdisk -v` for
the moved backup GPT and `e2fsck -fn` after.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Closure, Engine, base_spec, world_readable_dir
from imagecheck import dumpe2fs, e2fsck_clean, sfdisk_json, stat
from test_prepare import LAYOUT_TABLES, handoff

from make_disk_image import rootfs
from make_disk_image.layouts import LAYOUTS, plan_disk
from make_disk_image.minimal import SLACK, free_bound
from make_disk_image.models import FS_BLOCK, MIB
from make_disk_image.process import StepError
from make_disk_image.spec import parse_spec
from make_disk_image.staging import Tree

GROW = 200 * MIB


def minimal_spec(closure: Closure, ptt: str, **extra: object) -> dict[str, object]:
    return base_spec(
        closure, partitionTableType=ptt, diskSize="minimal", additionalSpace="0M",
        installBootLoader=False, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("ptt", list(LAYOUTS))
def test_root_partition_is_last(ptt: str) -> None:
    """growpart can only grow the last partition, up to the disk's end."""
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": ptt})
    plan = plan_disk(spec, 1024 * MIB, None)
    if plan.root_number is None:
        assert ptt == "none" and plan.root_size == plan.disk_size
        return
    assert plan.root_number == len(plan.partitions)
    root = plan.partitions[-1]
    assert all(p.end < root.start for p in plan.partitions[:-1])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="growing needs a loop device (root)")


def grow_root(image: Path, root_number: int | None, grow: int = GROW) -> tuple[int, int]:
    """Enlarge a raw image by `grow` bytes, then grow its root partition (growpart) and
    filesystem (resize2fs) as a first boot would; the root's new (offset, size)."""
    subprocess.run(["truncate", "-s", f"+{grow}", str(image)], check=True)
    if root_number is None:
        resized = subprocess.run(["resize2fs", str(image)], capture_output=True, text=True)
        assert resized.returncode == 0, resized.stdout + resized.stderr
        return 0, image.stat().st_size
    grown = subprocess.run(["growpart", str(image), str(root_number)], capture_output=True,
                           text=True)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    root = sfdisk_json(image)["partitions"][root_number - 1]
    offset, size = int(root["start"]) * 512, int(root["size"]) * 512
    # Not `resize2fs IMG?offset=`: on a regular file resize2fs truncates the file to the
    # new filesystem size, ignoring the offset, which cuts off the end of the disk.
    loop = subprocess.run(["losetup", "-f", "--show", f"--offset={offset}",
                           f"--sizelimit={size}", str(image)],
                          check=True, capture_output=True, text=True).stdout.strip()
    try:
        resized = subprocess.run(["resize2fs", loop], capture_output=True, text=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    assert resized.returncode == 0, resized.stdout + resized.stderr
    return offset, size


@needs_root
@pytest.mark.parametrize("ptt", list(LAYOUT_TABLES))
def test_minimal_image_is_tight_and_grows(closure: Closure, engine: Engine, ptt: str) -> None:
    result = engine.build_without_vm(minimal_spec(closure, ptt), name=f"minimal-{ptt}")
    assert result.returncode == 0, result.stderr
    image = result.out / "nixos.img"
    plan = handoff(result.build_dir)
    minimal = plan["minimal"]
    assert plan["size_source"] == "minimal" and plan["auto"] is None
    assert image.stat().st_size == plan["disk_size"] == minimal["disk_image_size"]
    offset = plan["root_offset"]
    assert e2fsck_clean(image, offset).returncode == 0
    sb = dumpe2fs(image, offset)
    blocks, free = int(sb["Block count"]), int(sb["Free blocks"]) * FS_BLOCK
    assert blocks == plan["root_size"] // FS_BLOCK
    assert plan["root_size"] == minimal["filesystem_size"]
    assert int(sb["Inode count"]) >= plan["root_inodes"] >= minimal["entries"]
    # Tight: the slack is kept, and no more than the bound is free.
    assert SLACK <= free <= free_bound(0, blocks * FS_BLOCK), free / MIB
    assert abs(free - minimal["free_blocks"] * FS_BLOCK) <= minimal["margin_blocks"] * FS_BLOCK
    # Room to grow online: resize_inode and its reserved descriptor blocks.
    assert "resize_inode" in sb["Filesystem features"].split()
    assert int(sb["Reserved GDT blocks"]) > 0

    new_offset, new_size = grow_root(image, plan["root_number"])
    assert new_offset == offset
    assert new_size >= plan["root_size"] + GROW - MIB
    fsck = e2fsck_clean(image, offset)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert int(dumpe2fs(image, offset)["Block count"]) == new_size // FS_BLOCK
    if plan["table"] == "gpt":
        # The backup GPT moved to the new end of the disk.
        verify = subprocess.run(["sgdisk", "-v", str(image)], capture_output=True, text=True)
        assert "No problems found" in verify.stdout, verify.stdout
        table = sfdisk_json(image)
        assert table["lastlba"] == image.stat().st_size // 512 - 34


def test_plan_shows_how_the_minimal_size_was_computed(closure: Closure,
                                                      engine: Engine) -> None:
    result = engine.run("plan", minimal_spec(closure, "efi"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["size_source"] == "minimal"
    assert plan["minimal"]["method"].startswith("trial fill (mke2fs, then the writer)")
    assert plan["minimal"]["content_blocks"] > 0
    assert plan["root_inodes"] == plan["minimal"]["inodes"]
    assert not (result.out / "nixos.img").exists()


def test_auto_size_counts_apparent_sizes(closure: Closure, engine: Engine) -> None:
    """A sparse source and a dense one of the same length give the same auto size.

    The build machine's filesystem stores the sparse one in almost no blocks (st_blocks,
    what du counts without --apparent-size); the reference's du --apparent-size does not
    see that, and neither may the engine. Both images hold the file at its full length.
    """
    plans = {}
    for kind in ("sparse", "dense"):
        src = world_readable_dir(f"mdi-{kind}-")
        path = src / "blob"
        with path.open("wb") as fh:
            if kind == "sparse":
                fh.truncate(40 * MIB)
            else:
                fh.write(b"\1" * (40 * MIB))
        path.chmod(0o644)
        allocated = os.stat(path).st_blocks * 512
        assert (allocated < MIB) if kind == "sparse" else (allocated >= 40 * MIB)
        # 0M would not do: the reference's formula has no room for the journal when one
        # large file is most of the image.
        spec = base_spec(closure, additionalSpace="8M", installBootLoader=False,
                         contents=[{"source": str(path), "target": "/blob"}])
        result = engine.build_without_vm(spec, name=kind)
        assert result.returncode == 0, result.stderr
        plans[kind] = handoff(result.build_dir)
        image = result.out / "nixos.img"
        assert image.stat().st_size == plans[kind]["disk_size"]
        blob = stat(image, plans[kind]["root_offset"], "/blob")
        assert blob is not None and blob.size == 40 * MIB
    assert plans["sparse"]["auto"] == plans["dense"]["auto"]
    assert plans["sparse"]["auto"]["files_blocks"] >= 40 * MIB // FS_BLOCK


def test_minimal_is_a_disk_size_value() -> None:
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "diskSize": "minimal"})
    assert spec.diskSize is None and spec.diskSizeMinimal
    auto = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False})
    assert auto.diskSize is None and not auto.diskSizeMinimal


def test_guest_writes_over_the_slack_name_additional_space(tmp_path: Path) -> None:
    """When what the build VM wrote does not fit, the error names the fix for "minimal"."""
    spec = parse_spec({"toplevel": "/t", "closureInfo": "/c", "copyChannel": False,
                       "partitionTableType": "none", "diskSize": "minimal"})
    plan = replace(plan_disk(spec, 8 * MIB, None), size_source="minimal", root_inodes=64)
    tree = Tree()
    tree.add_file("big", os.urandom(12 * MIB))
    with pytest.raises(StepError, match="raise additionalSpace"):
        rootfs.make_root_filesystem(tmp_path / "fs.img", plan, tree.ordered(), uuid=None,
                                    deterministic=True)


def test_minimal_size_and_image_are_deterministic(closure: Closure, engine: Engine) -> None:
    runs = [engine.build_without_vm(minimal_spec(closure, "efi"), name=f"det-{i}") for i in (1, 2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    images = [str(r.out / "nixos.img") for r in runs]
    assert subprocess.run(["cmp", *images], capture_output=True).returncode == 0
    assert handoff(runs[0].build_dir)["minimal"] == handoff(runs[1].build_dir)["minimal"]

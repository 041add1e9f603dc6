"""btrfs and xfs roots with the bootloader installed, booted: GRUB (legacy, SeaBIOS)
and systemd-boot (efi, OVMF), four boots in all; the legacy btrfs root is
`diskSize = "minimal"`.

The images come from test_boot's builder (the test system's switch-to-configuration in
the build VM's guest phase, then finish on the host). The legacy images are first grown
as a first boot would (truncate, growpart, then `btrfs filesystem resize max` or
`xfs_growfs` on the mounted filesystem): GRUB must still find its files, and the booted
kernel sees the grown partition and filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import boot_work_dir
from imagecheck import sfdisk_json
from test_boot import CASES, Images, boot_built

from testsys import report_check

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nix-build") is None,
        reason="boot tests need root (the engine's build, single-user Nix) and nix-build",
    ),
]

GROW = 64 * 1024 * 1024
BOOTS = [(fs, layout) for fs in ("btrfs", "xfs") for layout in ("legacy", "efi")]
# The legacy btrfs root is diskSize = "minimal" (the writer's measure, additionalSpace 0):
# finish writes the guest's files (GRUB's, 13.5 MiB) in the room it left. Grown by
# 256 MiB: the kernel resizes btrfs to no less than 256 MiB (EINVAL below). A boot of
# its own would cost 36-42 s more; the auto size is the efi root's.
MINIMAL = {("btrfs", "legacy"): {"diskSize": "minimal", "additionalSpace": "0M"}}
MINIMAL_GROW = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-boot-fs-")


@pytest.fixture(scope="module")
def images(work_dir: Path) -> Images:
    sources = work_dir / "sources"
    (sources / "data").mkdir(parents=True)
    (sources / "motd").write_text("built by make-disk-image\n")
    (sources / "data" / "a.txt").write_text("a\n")
    return Images(work_dir, sources)


def contents_for(fs_type: str, sources: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"source": str(sources / "motd"), "target": "/etc/motd", "mode": "644"},
    ]
    if fs_type == "xfs":
        # Owners by name: the guest chowns, finish carries the owners into the protofile.
        items.append({"source": str(sources / "data"), "target": "/srv/data",
                      "user": "bob", "group": "bob"})
    return items


@contextlib.contextmanager
def loop_mounted(image: Path, offset: int, size: int) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="mdi-grow-"))
    loop = subprocess.run(["losetup", "-f", "--show", f"--offset={offset}",
                           f"--sizelimit={size}", str(image)],
                          check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(where)], check=True)
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        where.rmdir()


def grow(image: Path, fs_type: str, by: int = GROW) -> int:
    """A first boot's growth; the root (last) partition's new size in bytes."""
    root_number = len(sfdisk_json(image)["partitions"])
    subprocess.run(["truncate", "-s", f"+{by}", str(image)], check=True)
    subprocess.run(["growpart", str(image), str(root_number)], check=True,
                   capture_output=True)
    root = sfdisk_json(image)["partitions"][root_number - 1]
    offset, size = int(root["start"]) * 512, int(root["size"]) * 512
    with loop_mounted(image, offset, size) as mounted:
        command = (["btrfs", "filesystem", "resize", "max", str(mounted)] if fs_type == "btrfs"
                   else ["xfs_growfs", str(mounted)])
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return size


@pytest.mark.parametrize(("fs_type", "layout"), BOOTS, ids=[f"{f}-{lay}" for f, lay in BOOTS])
def test_root_boots(images: Images, work_dir: Path, fs_type: str, layout: str) -> None:
    case = CASES[layout]
    firmware = case.firmwares[0]
    minimal = MINIMAL.get((fs_type, layout), {})
    built, test_system = images.build(
        f"{fs_type}-{layout}", case, fsType=fs_type,
        contents=contents_for(fs_type, images.sources), format="raw", **minimal,
    )
    grown = grow(built.image, fs_type, MINIMAL_GROW if minimal else GROW) \
        if layout == "legacy" else None
    result = boot_built(built, firmware, work_dir / f"{fs_type}-{layout}.serial.log")
    problems = report_check.check_report(
        result.report, built.spec, firmware=firmware, store_paths=test_system.store_paths()
    )
    assert problems == [], "\n".join(problems)
    if grown is not None:
        assert result.report.root_sectors == grown // 512
        # The filesystem grew to (nearly) the partition: xfs adds whole blocks only,
        # btrfs to the byte.
        assert result.report.fs_blocks is not None
        assert grown // 4096 - 1 <= result.report.fs_blocks <= grown // 4096


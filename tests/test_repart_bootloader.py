"""installBootLoader for image.repart images: GRUB for BIOS on a hybrid layout (a BIOS
boot partition, an ESP, swap, the root) installed by the system's own
switch-to-configuration in a VM, then booted under SeaBIOS."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import boot_work_dir

from make_disk_image.repart import build, spec, uuids
from testsys import boot, system
from testsys.system import NIXOS_ENTER_DIR

pytestmark = [
    pytest.mark.boot,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nix-build") is None,
                       reason="needs root (the build VM) and nix-build"),
]
BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-repart-grub-")


def test_grub_bios_hybrid_with_swap_boots_under_seabios(work_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ts = system.build_test_system(work_dir / "system",
                                  system.BootLoader(grub_devices=("/dev/vda",)), label="nixos")
    data = {
        "name": "hybrid", "seed": str(uuids.NIXPKGS_SEED), "sectorSize": 512,
        "partitions": {
            "00-bios": {"repartConfig": {"Type": BIOS_BOOT, "SizeMinBytes": "1M"}},
            "10-esp": {"repartConfig": {"Type": "esp", "Format": "vfat", "SizeMinBytes": "64M"}},
            "20-swap": {"repartConfig": {"Type": "swap", "Format": "swap",
                                         "SizeMinBytes": "16M", "SizeMaxBytes": "16M"}},
            "30-root": {"repartConfig": {"Type": "root", "Format": "ext4", "Label": "nixos",
                                         "Minimize": "guess"},
                        "closureInfo": str(ts.closure_info)},
        },
        "installBootLoader": {"toplevel": str(ts.toplevel), "mountPoints": {"30-root": "/"},
                              "grubDevices": ["/dev/vda"]},
    }
    # The test system's nixos-enter (a stand-in) comes first on the guest's PATH.
    monkeypatch.setenv("PATH", f"{NIXOS_ENTER_DIR}:{os.environ['PATH']}")
    (work_dir / "work").mkdir()
    build.build_to(spec.from_json(data), work_dir / "out", work_dir / "work")
    image = work_dir / "out/hybrid.raw"
    records = json.loads((work_dir / "out/repart-output.json").read_text())
    assert [r["label"] for r in records] == ["linux", "esp", "swap", "nixos"]
    result = boot.boot_image(image, firmware="bios", timeout=150,
                             serial_log=work_dir / "serial.log")
    report = result.report
    assert (report.firmware, report.fs_label, report.root_partition_number) == \
        ("bios", "nixos", 4)
    assert report.system_profile_target() == str(ts.toplevel)
    assert report.etc_nixos and report.stage2_version is not None

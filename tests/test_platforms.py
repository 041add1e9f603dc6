"""Architectures as data: lookups, the host's own, and what the spec refuses per platform."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from make_disk_image.interface import PATH as INTERFACE_PATH
from make_disk_image.platforms import PLATFORMS, host_platform, host_system, platform_for
from make_disk_image.process import StepError
from make_disk_image.spec import SpecError, parse_spec
from testsys.debian import DEBIAN

REPO = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "toplevel": "/nix/store/x-system",
    "closureInfo": "/nix/store/y-ci",
    "channelSources": "/nix/store/z-chan",
    "system": "aarch64-linux",
}


def test_host_system_is_this_machines() -> None:
    assert host_system() == f"{platform.machine()}-linux"
    assert host_platform().machine == platform.machine()


def test_every_platform_is_keyed_by_its_own_system_name() -> None:
    for name, plat in PLATFORMS.items():
        assert plat.system == name == f"{plat.machine}-linux"


def test_aarch64_is_a_uefi_only_virt_machine() -> None:
    plat = platform_for("aarch64-linux")
    assert not plat.bios and plat.efi_arch == "aa64" and plat.grub_efi_target == "arm64-efi"
    assert plat.qemu_binary == "qemu-system-aarch64" and plat.qemu_machine.startswith("virt")
    assert plat.console == "ttyAMA0" and plat.pflash_bytes == 64 * 1024 * 1024


def test_facts_say_what_they_mean() -> None:
    """x86 has BIOS, boots its kernel through PVH and may need SMM; aarch64 none of it."""
    x86, arm = platform_for("x86_64-linux"), platform_for("aarch64-linux")
    assert (x86.bios, x86.pvh, x86.smm) == (True, True, True)
    assert (arm.bios, arm.pvh, arm.smm) == (False, False, False)


def test_the_table_holds_no_field_only_tests_read() -> None:
    """Debian's names are the test system's (testsys/debian.py), not the engine's."""
    table = json.loads(INTERFACE_PATH.read_text())["platforms"]
    for system, facts in table.items():
        if not system.startswith("_"):
            assert not {"debianArch", "qemuPackage"} & set(facts), system
    assert set(DEBIAN) == set(PLATFORMS)
    setup = (REPO / ".ci/setup").read_text()
    assert all(d.qemu_package in setup for d in DEBIAN.values())


def test_unknown_system_names_the_supported_ones() -> None:
    with pytest.raises(StepError, match="aarch64-linux, x86_64-linux"):
        platform_for("riscv64-linux")
    with pytest.raises(SpecError, match="argument `system`.*riscv64-linux"):
        parse_spec({**BASE, "system": "riscv64-linux"})


@pytest.mark.parametrize("layout", ["legacy", "legacy+boot", "legacy+gpt"])
def test_bios_layouts_are_refused_on_aarch64_unless_no_boot_loader(layout: str) -> None:
    with pytest.raises(SpecError, match=r"argument `partitionTableType`.*BIOS.*aarch64-linux"):
        parse_spec({**BASE, "partitionTableType": layout})
    spec = parse_spec({**BASE, "partitionTableType": layout, "installBootLoader": False})
    assert spec.system == "aarch64-linux"
    # The same layout is fine for x86_64.
    parse_spec({**BASE, "partitionTableType": layout, "system": "x86_64-linux"})


@pytest.mark.parametrize("layout", ["efi", "efixbootldr", "hybrid", "none"])
def test_uefi_layouts_build_on_aarch64(layout: str) -> None:
    assert parse_spec({**BASE, "partitionTableType": layout}).partitionTableType == layout


def test_bios_grub_devices_are_refused_on_aarch64() -> None:
    with pytest.raises(SpecError, match=r"argument `grubDevices`.*/dev/sda.*nodev"):
        parse_spec({**BASE, "partitionTableType": "hybrid", "grubDevices": ["/dev/sda"]})
    parse_spec({**BASE, "partitionTableType": "hybrid", "grubDevices": ["nodev"]})
    parse_spec(
        {
            **BASE,
            "partitionTableType": "hybrid",
            "grubDevices": ["/dev/sda"],
            "installBootLoader": False,
        }
    )


def test_smm_firmware_is_refused_where_the_platform_has_no_smm() -> None:
    """Also without a boot loader: the build VM's firmware is the same."""
    for install in (True, False):
        with pytest.raises(SpecError, match="ovmfSystemManagementModeRequired"):
            parse_spec({**BASE, "partitionTableType": "efi", "installBootLoader": install,
                        "ovmfSystemManagementModeRequired": True})  # fmt: skip
    x86 = {**BASE, "system": "x86_64-linux", "ovmfSystemManagementModeRequired": True}
    assert parse_spec(x86).ovmfSystemManagementModeRequired


def test_no_system_is_the_builders_own() -> None:
    spec = parse_spec({k: v for k, v in BASE.items() if k != "system"})
    assert spec.system is None


def test_bootable_layouts_are_those_with_firmware_the_platform_has() -> None:
    """interface.json lists them for Nix; the layouts' partitions say the same."""
    from make_disk_image.layouts import LAYOUTS

    for plat in PLATFORMS.values():
        has = {"uefi"} | ({"bios"} if plat.bios else set())
        bootable = {
            n for n, layout in LAYOUTS.items() if not layout.firmware or layout.firmware & has
        }
        assert set(plat.bootable_partition_table_types) == bootable, plat.system


# The engine's command line refuses an aarch64 spec it cannot build before any work
# (no root, Nix or qemu needed: these run where tests/test_aarch64.py's boots cannot).
def _engine_build(
    spec: dict[str, Any], work_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    spec_file = work_dir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, "-m", "make_disk_image", "build", str(spec_file),
         "--out", str(work_dir / "out"), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_bios_layout_for_aarch64_fails_before_any_work(tmp_path: Path) -> None:
    spec = {**BASE, "copyChannel": False, "partitionTableType": "legacy"}
    proc = _engine_build(spec, tmp_path, "--guest-root", str(tmp_path))
    assert proc.returncode != 0
    assert "argument `partitionTableType`" in proc.stderr and "BIOS" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_foreign_image_without_guest_root_fails_before_any_work(tmp_path: Path) -> None:
    spec = {**BASE, "copyChannel": False, "partitionTableType": "efi"}
    proc = _engine_build(spec, tmp_path)
    assert proc.returncode != 0 and "--guest-root" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()

"""aarch64 images built on this x86_64 host: no KVM, no binfmt.

prepare, finish and the conversion run natively here; only the guest phase runs, in a
qemu-system-aarch64 TCG VM booting Debian's arm64 kernel with a guest root of Debian's
arm64 packages (testsys/guestroot.py). The test system is made of the same packages.
The images boot under qemu-system-aarch64 with Debian's AAVMF.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aarch64boot import AARCH64_BOOT
from conftest import boot_work_dir

from testsys import boot, efi_vars, esp_loaders, report_check, system
from testsys.build import build_image

SYSTEM = "aarch64-linux"
pytestmark = AARCH64_BOOT
BOOT_TIMEOUT = 600.0  # a good boot takes 25-50 s under TCG


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-aarch64-tests-")


def _spec(test_system: system.TestSystem, work_dir: Path, **overrides: Any) -> dict[str, Any]:
    motd = work_dir / "motd"
    motd.write_text("built on x86_64 for aarch64\n")
    contents = [{"source": str(motd), "target": "/etc/motd", "mode": "0640",
                 "user": "alice", "group": "users"}]  # fmt: skip
    return test_system.spec(additionalSpace="16M", contents=contents, **overrides)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_efi_systemd_boot_image_holds_aarch64_loaders_and_boots(work_dir: Path) -> None:
    loader = system.boot_loader_for("efi", touch_efi_vars=True, system=SYSTEM)
    test_system = system.build_test_system(work_dir / "efi-system", loader, system=SYSTEM)
    code, variables = boot.UEFI_FIRMWARE[SYSTEM]
    spec = _spec(test_system, work_dir, partitionTableType="efi", touchEFIVars=True,
                 efiFirmware=str(code), efiVariables=str(variables))  # fmt: skip
    built = build_image(spec, work_dir, name="efi")
    assert "qemu-system-aarch64" in built.log and "-machine virt,gic-version=max" in built.log

    loaders = esp_loaders.efi_loaders(built.image)
    assert loaders["/EFI/BOOT/BOOTAA64.EFI"] == "aarch64"
    assert loaders["/EFI/systemd/systemd-bootaa64.efi"] == "aarch64"
    assert "x86_64" not in loaders.values()
    # The engine wrote the boot entry (the aarch64 test system leaves it to bootctl's
    # engine-side replacement), into AAVMF's variable store.
    assert built.efi_vars is not None and built.efi_vars.stat().st_size == 64 * 1024 * 1024
    options, order = efi_vars.efi_boot_entries(built.efi_vars)
    ours = [o for o in options if o.file_path == "\\EFI\\systemd\\systemd-bootaa64.efi"]
    assert len(ours) == 1 and order[0] == ours[0].number

    result = boot.boot_image(built.image, firmware="uefi", efi_vars=built.efi_vars,
                             system=SYSTEM, timeout=BOOT_TIMEOUT, kernel_timeout=BOOT_TIMEOUT,
                             serial_log=work_dir / "efi-serial.log")  # fmt: skip
    assert result.report.machine == "aarch64"
    assert report_check.check_report(result.report, spec, firmware="uefi",
                             store_paths=test_system.store_paths()) == []  # fmt: skip


def test_hybrid_grub_image_boots_and_rebuilds_bit_identical(work_dir: Path) -> None:
    loader = system.boot_loader_for("hybrid", system=SYSTEM)
    assert loader.grub_efi and loader.grub_devices == ("nodev",)
    test_system = system.build_test_system(work_dir / "hybrid-system", loader, system=SYSTEM)
    spec = _spec(test_system, work_dir, partitionTableType="hybrid", format="qcow2")
    first = build_image(spec, work_dir / "first", name="hybrid")
    second = build_image(spec, work_dir / "second", name="hybrid")
    assert _sha256(first.image) == _sha256(second.image)

    raw = work_dir / "hybrid.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", first.image, raw], check=True)
    assert esp_loaders.efi_loaders(raw) == {"/EFI/BOOT/BOOTAA64.EFI": "aarch64"}
    result = boot.boot_image(first.image, firmware="uefi", system=SYSTEM,
                             timeout=BOOT_TIMEOUT, kernel_timeout=BOOT_TIMEOUT,
                             serial_log=work_dir / "hybrid-serial.log")  # fmt: skip
    assert result.report.machine == "aarch64"
    assert report_check.check_report(result.report, spec, firmware="uefi", loader="grub",
                             store_paths=test_system.store_paths()) == []  # fmt: skip

"""Faults in the build VM's guest phase, through `make-disk-image build`: a failing
`switch-to-configuration`, and qemu killed in the middle of the guest's work.

As in test_faults: exit status 1, one `error:` line naming the step, and nothing left in
`$out` or the build directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
)
from faultcheck import error_line, wait_for_child

from testsys.system import NIXOS_ENTER_DIR, BootLoader, TestSystem, build_test_system

MIB = 1024 * 1024


# The guest phase in a VM: few and lean.

@pytest.fixture(scope="module")
def vm_work() -> Path:
    # Not under /tmp: the build VM covers /tmp with its own tmpfs.
    return Path(tempfile.mkdtemp(prefix="mdi-fault-vm-", dir="/var/tmp"))


@pytest.fixture(scope="module")
def uefi_only_system(vm_work: Path) -> Iterator[TestSystem]:
    """A system whose bootloader is systemd-boot: its switch-to-configuration exits 1
    on a legacy image, which has no EFI system partition to install to."""
    yield build_test_system(vm_work / "system", BootLoader(systemd_boot=True))
    shutil.rmtree(vm_work)


def start_build(spec: dict[str, Any], work: Path, name: str) -> tuple[subprocess.Popen[str],
                                                                      Path]:
    spec_file = work / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    scratch = work / f"{name}-tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch),
           "PATH": f"{NIXOS_ENTER_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "make_disk_image", "build", str(spec_file), "--out",
         str(work / name)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    return proc, scratch


@pytest.mark.vm
def test_failing_switch_to_configuration(uefi_only_system: TestSystem, vm_work: Path) -> None:
    spec = uefi_only_system.spec(partitionTableType="legacy", additionalSpace="8M")
    proc, scratch = start_build(spec, vm_work, "failing-switch")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, log
    assert error_line(log.split("guest command exited")[-1]).startswith(
        "error: guest: the guest phase failed in the VM (exit 1)")
    # The guest's own line names the step, the command and its stderr.
    assert "switch-to-configuration boot" in log
    assert "nixos-enter --root /mnt" in log
    assert "switch-to-configuration: the EFI system partition is not mounted at /boot" in log
    assert not (vm_work / "failing-switch").exists()
    assert list(scratch.iterdir()) == []  # the build directory is gone


GUEST_STEP = "make-disk-image: [guest"


@pytest.mark.vm
def test_qemu_dying_mid_guest(uefi_only_system: TestSystem, vm_work: Path) -> None:
    # systemd-boot installs on efi: the guest has seconds of work after its first step.
    spec = uefi_only_system.spec(partitionTableType="efi", additionalSpace="8M")
    proc, scratch = start_build(spec, vm_work, "qemu-dies")
    assert proc.stdout is not None
    log = ""
    # Wait until the engine's guest phase logs its first step in the VM, then kill qemu.
    for text in proc.stdout:
        log += text
        if GUEST_STEP in text:
            break
    qemu = wait_for_child(proc, "qemu-system-x86")  # comm is cut at 15 characters
    os.kill(qemu, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=120)
    log += rest
    assert proc.returncode == 1, log
    line = error_line(log.split(GUEST_STEP, 1)[1])
    assert line.startswith("error: vm: qemu exited with status -9"), line
    assert not (vm_work / "qemu-dies").exists()
    assert list(scratch.iterdir()) == []

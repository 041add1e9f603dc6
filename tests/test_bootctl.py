"""The test system's bootctl of systemd >= 257 (testsys/scripts/bootctl-touch-variables.sh)
and what it does to an image built with touchEFIVars.

nixpkgs' nixos-enter runs switch-to-configuration in a new PID namespace; bootctl of
systemd >= 257 takes that for a container and writes no EFI variables ("skipping EFI
variable modifications"), so efi-vars.fd gets no boot entry unless the engine makes one
(make_disk_image.efiboot). The script's decision is checked here against the cases of
systemd's detect_container() in a small chroot (in and outside a PID namespace), and
against the host's own systemd-detect-virt where that is systemd >= 257.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsys import boot, efi_vars, report_check
from testsys.build import BuiltImage, build_image
from testsys.system import (
    BootLoader,
    TestSystem,
    boot_loader_for,
    build_test_system,
    host_systemd_version,
)

SCRIPT = Path(__file__).resolve().parent.parent / "testsys/scripts/bootctl-touch-variables.sh"
SKIPPED = "Not booted with EFI or running in a container, skipping EFI variable modifications."

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/bin/busybox").exists(),
    reason="needs root, unshare and a static busybox",
)


@pytest.fixture
def chroot(tmp_path: Path) -> Path:
    """A root with busybox, the script, /proc to mount and an EFI /sys/firmware/efi."""
    root = tmp_path / "root"
    for directory in ("bin", "dev", "libexec", "proc", "run", "sys/firmware/efi"):
        (root / directory).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    subprocess.run([str(root / "bin/busybox"), "--install", "-s", str(root / "bin")], check=True)
    # Inside the chroot, busybox applets are /bin/NAME.
    for link in (root / "bin").iterdir():
        if link.is_symlink():
            link.unlink()
            link.symlink_to("busybox")
    text = SCRIPT.read_text().replace("@busybox@", "").replace("@detectVirt@", "")
    script = root / "libexec/bootctl-touch-variables"
    script.write_text(text)
    script.chmod(0o755)
    return root


def touch_variables(root: Path, *, pid_namespace: bool) -> subprocess.CompletedProcess[str]:
    """Run the script chrooted in `root` with /proc and /dev, optionally in a new PID
    namespace, as nixos-enter runs its command."""
    flags = ["--mount", *(["--pid", "--fork"] if pid_namespace else [])]
    inner = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"exec chroot {root} /libexec/bootctl-touch-variables"
    )
    return subprocess.run(
        ["unshare", *flags, "--", "sh", "-c", inner],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


@needs_root_tools
def test_writes_variables_in_the_initial_pid_namespace(chroot: Path) -> None:
    proc = touch_variables(chroot, pid_namespace=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@needs_root_tools
def test_skips_variables_in_a_pid_namespace(chroot: Path) -> None:
    proc = touch_variables(chroot, pid_namespace=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == SKIPPED


@needs_root_tools
@pytest.mark.parametrize("marker", ["run/.containerenv", ".dockerenv", "run/systemd/container"])
def test_skips_variables_in_a_known_container(chroot: Path, marker: str) -> None:
    (chroot / marker).parent.mkdir(parents=True, exist_ok=True)
    (chroot / marker).write_text("podman\n")
    proc = touch_variables(chroot, pid_namespace=False)
    assert (proc.returncode, proc.stderr.strip()) == (1, SKIPPED)


@needs_root_tools
def test_skips_variables_without_efi(chroot: Path) -> None:
    (chroot / "sys/firmware/efi").rmdir()
    proc = touch_variables(chroot, pid_namespace=False)
    assert (proc.returncode, proc.stderr.strip()) == (1, SKIPPED)


@needs_root_tools
@pytest.mark.skipif(
    shutil.which("systemd-detect-virt") is None or host_systemd_version() < 257,
    reason="the host's systemd is older than 257 (Debian 12 has 252)",
)
@pytest.mark.parametrize("pid_namespace", [False, True])
def test_agrees_with_the_hosts_systemd(tmp_path: Path, pid_namespace: bool) -> None:
    """Where systemd >= 257 is installed, its detect_container() and the script agree
    on the host itself."""
    script = tmp_path / "touch-variables"
    script.write_text(SCRIPT.read_text().replace("@busybox@", "").replace("@detectVirt@", ""))
    flags = ["--mount-proc", "--pid", "--fork"] if pid_namespace else []
    ours = subprocess.run(["unshare", *flags, "--", "sh", str(script)], check=False)
    real = subprocess.run(
        ["unshare", *flags, "--", "systemd-detect-virt", "--container", "--quiet"], check=False
    )
    in_container = real.returncode == 0 or not Path("/sys/firmware/efi").is_dir()
    assert (ours.returncode == 1) == in_container


# Building an image: the guest phase in a TCG VM, switch-to-configuration through the
# stand-in nixos-enter (unshare --pid) with systemd 257's bootctl behaviour.


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    # Not under /tmp: the build VM mounts its own tmpfs there.
    directory = Path(tempfile.mkdtemp(prefix="mdi-bootctl-", dir="/var/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def system_257(work_dir: Path) -> TestSystem:
    loader = boot_loader_for("efi", touch_efi_vars=True)
    return build_test_system(
        work_dir / "system",
        BootLoader(
            systemd_boot=loader.systemd_boot,
            can_touch_efi_variables=True,
            bootctl_systemd=257,
        ),
    )


@pytest.fixture(scope="module")
def image_257(system_257: TestSystem, work_dir: Path) -> BuiltImage:
    spec = system_257.spec(
        partitionTableType="efi",
        additionalSpace="16M",
        touchEFIVars=True,
        efiFirmware=str(boot.OVMF_CODE),
        efiVariables=str(boot.OVMF_VARS),
    )
    return build_image(spec, work_dir / "images", name="efi-257")


def linux_boot_manager_entries(built: BuiltImage) -> list[efi_vars.EfiLoadOption]:
    assert built.efi_vars is not None
    options, _ = efi_vars.efi_boot_entries(built.efi_vars)
    return [o for o in options if o.description == "Linux Boot Manager"]


@pytest.mark.vm
def test_systemd_257_bootctl_writes_no_efi_variables_in_nixos_enter(
    image_257: BuiltImage,
) -> None:
    """The stand-in reproduces nixpkgs with systemd >= 257: switch-to-configuration
    (through nixos-enter) leaves efi-vars.fd without a boot entry; one there is the
    engine's, which says it made it."""
    engine_made_it = "switch-to-configuration left no EFI boot entry" in image_257.log
    assert len(linux_boot_manager_entries(image_257)) == (1 if engine_made_it else 0)


@pytest.mark.vm
def test_efi_vars_get_a_boot_entry_all_the_same(image_257: BuiltImage, work_dir: Path) -> None:
    """The engine's entry, first in BootOrder, is the one the firmware boots."""
    ours = linux_boot_manager_entries(image_257)
    assert len(ours) == 1
    assert image_257.efi_vars is not None
    _, order = efi_vars.efi_boot_entries(image_257.efi_vars)
    assert ours[0].file_path == "\\EFI\\systemd\\systemd-bootx64.efi"
    assert ours[0].partition_guid == report_check.ESP_PARTITION_GUID
    assert order[:1] == [ours[0].number]
    result = boot.boot_image(
        image_257.image,
        firmware="uefi",
        efi_vars=image_257.efi_vars,
        timeout=150,
        serial_log=work_dir / "efi-257.serial.log",
    )
    assert result.report.boot_current == ours[0].number

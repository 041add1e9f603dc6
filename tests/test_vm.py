"""make_disk_image.vm (the runner's command line) and testsys.vmtools (the host's guest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testsys import vmtools


def _guest_options() -> list[str]:
    return vmtools.guest_options(vmtools.host_guest())


def test_cli_rejects_missing_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "make_disk_image.vm", *_guest_options(), "--"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no command" in proc.stderr


def test_cli_wants_the_kernel_as_paths() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "make_disk_image.vm", "--", "true"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--kernel" in proc.stderr and "--modules" in proc.stderr


def test_cli_reports_a_bad_kernel_before_booting(tmp_path: Path) -> None:
    options = _guest_options()
    options[options.index("--modules") + 1] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "make_disk_image.vm", *options, "--", "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: vm: kernel modules") and "modules.dep" in proc.stderr


def test_host_path_root_links_copies_and_shares(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shares = vmtools.host_path_root(
        ["/bin", "/usr", "/usr/share", "/etc/ld.so.cache", "/etc/alternatives"], root
    )
    if Path("/bin").is_symlink():  # merged /usr
        assert (root / "bin").readlink() == Path("/bin").readlink()
    assert (root / "etc/ld.so.cache").read_bytes() == Path("/etc/ld.so.cache").read_bytes()
    assert (root / "usr").is_dir() and not any((root / "usr").iterdir())
    assert {(str(s.host), s.guest, s.writable) for s in shares} >= {
        ("/usr", "/usr", False), ("/etc/alternatives", "/etc/alternatives", False),
    }  # fmt: skip
    assert "/usr/share" not in {s.guest for s in shares}


def test_the_hosts_runner_boots_only_the_hosts_system() -> None:
    with pytest.raises(SystemExit):
        vmtools.main(["--system", "aarch64-linux", "--", "true"])

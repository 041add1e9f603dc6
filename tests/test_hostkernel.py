"""make_disk_image.hostkernel: the kernel and busybox of a host without Nix, for `build`."""

from __future__ import annotations

from pathlib import Path

import pytest

from make_disk_image import hostkernel
from make_disk_image.process import StepError


def test_the_hosts_kernel_has_its_modules() -> None:
    kernel = hostkernel.installed_kernel()
    assert kernel.image == Path("/boot") / f"vmlinuz-{kernel.version}"
    assert kernel.modules == Path("/lib/modules") / kernel.version
    kernel.check()


def test_the_newest_kernel_with_modules_is_taken(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for version in ("6.9.0-1-amd64", "6.10.0-1-amd64", "6.11.0-1-amd64"):
        (tmp_path / "boot" / f"vmlinuz-{version}").write_bytes(b"")
    for version in ("6.9.0-1-amd64", "6.10.0-1-amd64"):  # 6.11 has no modules
        (tmp_path / "lib/modules" / version).mkdir(parents=True)
        (tmp_path / "lib/modules" / version / "modules.dep").write_text("")
    assert hostkernel.installed_kernel(tmp_path).version == "6.10.0-1-amd64"


def test_a_missing_kernel_names_the_package(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-9.9.9").write_bytes(b"")  # no modules for it
    with pytest.raises(StepError, match="linux-image-amd64") as error:
        hostkernel.installed_kernel(tmp_path)
    assert error.value.step == "host kernel"


def test_only_a_static_busybox_will_do(tmp_path: Path) -> None:
    assert hostkernel.installed_busybox() == Path("/bin/busybox")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").symlink_to("/bin/ls")  # dynamically linked
    with pytest.raises(StepError, match="busybox-static"):
        hostkernel.installed_busybox(tmp_path)


def test_system_directories_join_a_users_path() -> None:
    assert hostkernel.with_system_dirs("/home/u/bin:/usr/bin") == (
        "/home/u/bin:/usr/bin:/usr/sbin:/sbin:/bin"
    )

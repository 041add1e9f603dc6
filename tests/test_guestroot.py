"""The arm64 guest root made of Debian packages, unpacked (cached after the first run)."""

from __future__ import annotations

import marshal
import shutil
import struct
from pathlib import Path

import pytest

from make_disk_image import initramfs
from make_disk_image.hostkernel import installed_busybox, installed_kernel
from testsys import guestroot

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="needs Debian's apt-get and dpkg-deb",
)

EM_AARCH64 = 183


def _elf_machine(path: Path) -> int:
    with path.open("rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF", path
    return int(struct.unpack_from("<H", header, 18)[0])


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        guestroot.kernel_package("arm64")
    except Exception as exc:  # no arm64 lists: .ci/setup not run on this machine
        pytest.skip(f"no arm64 package lists: {exc}")
    return guestroot.guest_root("arm64")


def test_packages_are_the_releases(root: Path) -> None:
    minimal, lib_minimal, stdlib = guestroot.python_packages("arm64")
    assert minimal.startswith("python3.") and minimal.endswith("-minimal")
    assert lib_minimal == f"lib{minimal}" and stdlib.endswith("-stdlib")
    assert guestroot.kernel_package("arm64").startswith("linux-image-")
    # The same package files give the same (cached) tree.
    assert guestroot.guest_root("arm64") == root
    listed = (root / ".complete").read_text().split()
    assert all(name.endswith("_arm64.deb") or name.endswith("_all.deb") for name in listed)


def test_tree_holds_what_the_build_vm_boots_and_runs(root: Path) -> None:
    kernel = installed_kernel(root)
    # A plain arm64 Image (what GRUB and systemd-boot load), with its "ARM\x64" magic.
    assert kernel.image.read_bytes()[56:60] == b"ARM\x64"
    assert (kernel.modules / "modules.dep").stat().st_size > 0
    busybox = installed_busybox(root)
    assert initramfs.is_static_elf(busybox) and _elf_machine(busybox) == EM_AARCH64
    assert "sh" in initramfs.busybox_applets(busybox.read_bytes())
    python = (root / "usr/bin/python3").resolve()
    assert _elf_machine(python) == EM_AARCH64
    for program in ("bin/sh", "usr/bin/unshare", "bin/mount", "usr/sbin/chroot", "sbin/sfdisk"):
        assert (root / program).exists(), program
    assert list((root / "usr/lib/python3/dist-packages/pyudev").glob("*.py"))
    assert (root / "usr/lib/systemd/boot/efi/systemd-bootaa64.efi").is_file()
    assert (root / "usr/lib/grub/arm64-efi/linux.mod").is_file()


def test_guest_python_finds_byte_code_for_its_paths(root: Path) -> None:
    stdlib = next((root / "usr/lib").glob("python3.*"))
    if shutil.which(stdlib.name) is None:
        pytest.skip(f"no {stdlib.name} on this host to write the guest's byte code")
    tag = f"cpython-{stdlib.name.removeprefix('python').replace('.', '')}"
    for source in (
        stdlib / "os.py",
        root / "usr/lib/python3/dist-packages/pyudev/device/_device.py",
    ):
        code = marshal.loads(
            (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").read_bytes()[16:]
        )
        # The path the guest sees (tracebacks name it), not this host's.
        assert code.co_filename == f"/{source.relative_to(root)}"

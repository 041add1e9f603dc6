"""make_disk_image.initramfs: the runner's newc archive of busybox, modules and init."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from make_disk_image import initramfs
from make_disk_image.hostkernel import installed_busybox, installed_kernel
from make_disk_image.process import StepError


def _cpio_listing(path: Path) -> list[str]:
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=gzip.decompress(path.read_bytes()), capture_output=True
    )
    assert listing.returncode == 0, listing.stderr
    return listing.stdout.decode().split()


def test_initramfs_has_busybox_modules_in_dependency_order_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel, busybox = installed_kernel(), installed_busybox()

    def build(init: str) -> Path:
        return initramfs.build_initramfs(
            init, kernel=kernel, modules=["ext4", "vfat"], busybox=busybox
        )

    first = build("#!/bin/sh\necho one\n")
    assert first.parent == tmp_path / "cache" / "make-disk-image"
    names = _cpio_listing(first)
    assert {"init", "bin/busybox", "bin/sh", "bin/insmod"} <= set(names)
    order = (
        subprocess.run(
            ["cpio", "-i", "--quiet", "--to-stdout", "lib/modules/load-order"],
            input=gzip.decompress(first.read_bytes()),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    # jbd2 and mbcache are ext4's dependencies, fat is vfat's: each before its user.
    assert order.index("jbd2.ko") < order.index("ext4.ko")
    assert order.index("mbcache.ko") < order.index("ext4.ko")
    assert order.index("fat.ko") < order.index("vfat.ko")
    assert all(f"lib/modules/{kernel.version}/{m}" in names for m in order)
    assert build("#!/bin/sh\necho one\n") == first
    assert build("#!/bin/sh\necho two\n") != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


def test_a_dynamic_busybox_brings_its_interpreter_and_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nixpkgs' busybox is dynamically linked; the initramfs carries what it loads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # /bin/ls stands in for a dynamically linked busybox (Debian's conflicts with the
    # static one .ci/setup installs); it has no applet list.
    monkeypatch.setattr(initramfs, "busybox_applets", lambda _: ["sh"])
    built = initramfs.build_initramfs(
        "#!/bin/sh\n", kernel=installed_kernel(), modules=[], busybox=Path("/bin/ls")
    )
    names = set(_cpio_listing(built))
    wanted = {str(p)[1:] for p in initramfs.check_busybox(Path("/bin/ls"))}
    assert any(n.endswith("/libc.so.6") for n in wanted) and wanted <= names
    assert initramfs.check_busybox(installed_busybox()) == []
    with pytest.raises(StepError, match="is not a file"):
        initramfs.check_busybox(tmp_path / "busybox")


def test_static_elf_check_tells_static_busybox_from_dynamic_programs() -> None:
    assert initramfs.is_static_elf(Path("/bin/busybox"))
    assert not initramfs.is_static_elf(Path("/bin/ls"))
    assert not initramfs.is_static_elf(Path("/etc/os-release"))


def test_busybox_applets_are_read_from_the_binary_as_busybox_lists_them() -> None:
    busybox = installed_busybox()
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    assert sorted(initramfs.busybox_applets(busybox.read_bytes())) == sorted(listed.stdout.split())
    with pytest.raises(StepError, match="applet list"):
        initramfs.busybox_applets(b"\x7fELF no applets here")

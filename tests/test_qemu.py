"""make_disk_image.qemu without a VM: the console text and the command line per system.
(Real boots through it: tests/test_runner.py.)"""

from __future__ import annotations

from pathlib import Path

from make_disk_image import qemu
from make_disk_image.platforms import platform_for


def test_console_text_drops_terminal_controls_split_across_reads() -> None:
    console = qemu.ConsoleText()
    text = console.feed("a\r\n\x1b[2") + console.feed("J\x1bcb\r") + console.feed("\nc")
    assert text == "a\nb\nc"


def test_aarch64_guest_gets_its_qemu_machine_cpu_console_and_root(tmp_path: Path) -> None:
    def argv(system: str) -> list[str]:
        return qemu.qemu_command(
            platform=platform_for(system), kernel=tmp_path / "Image",
            initramfs=tmp_path / "initrd", root=tmp_path, control_dir=tmp_path, disk=None,
            shares=[], mem_mib=512, qemu_opts=[],
        )  # fmt: skip

    arm = argv("aarch64-linux")
    assert arm[0].endswith("qemu-system-aarch64")
    assert arm[arm.index("-machine") + 1] == "virt,gic-version=max"
    assert arm[arm.index("-cpu") + 1] == "max,pauth=off,sve=off"
    assert "console=ttyAMA0" in arm[arm.index("-append") + 1]
    assert any(a.startswith(f"local,path={tmp_path},mount_tag=root,") for a in arm)
    # x86_64 (smm) keeps qemu's default machine, so that QEMU_OPTS may choose q35,smm=on.
    x86 = argv("x86_64-linux")
    assert "-machine" not in x86 and "console=ttyS0" in x86[x86.index("-append") + 1]

"""make_disk_image.efiboot without a VM: a GPT image made by sfdisk as the disk, a plain
directory as efivarfs, and Debian's efibootmgr (libefivar reads EFIVARFS_PATH) as the
independent reader of what was written."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from make_disk_image import efiboot
from make_disk_image.models import PlannedPartition
from make_disk_image.platforms import PLATFORMS
from make_disk_image.process import StepError

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_PART_GUID = "2C1A5D0E-7B3F-4E21-9A6C-0D8E4F1B2A37"
LOADER = "\\EFI\\systemd\\systemd-bootx64.efi"
SHELL_ENTRY = efiboot.LoadOption(
    efiboot.LOAD_OPTION_ACTIVE,
    "EFI Internal Shell",
    None,
    "\\EFI\\Shell.efi",
    b"\x01\x02",
)


def esp_plan(guid: str | None = ESP_PART_GUID) -> PlannedPartition:
    return PlannedPartition(
        number=1,
        role="esp",
        start=2048,
        end=526335,
        type=ESP_GUID,
        guid=guid,
        name="ESP",
        flags=("boot",),
        filesystem="vfat",
        label="ESP",
        mountpoint="/boot",
    )


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(400 * 1024 * 1024)
    script = (
        "label: gpt\n"
        f"start=2048, size=524288, type={ESP_GUID}, uuid={ESP_PART_GUID}\n"
        "start=526336, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
    )
    subprocess.run(["sfdisk", "-q", str(image)], input=script, text=True, check=True)
    return image


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    mount = tmp_path / "esp"
    (mount / "EFI/systemd").mkdir(parents=True)
    (mount / "EFI/systemd/systemd-bootx64.efi").write_bytes(b"MZ systemd-boot")
    return mount


@pytest.fixture
def efivars(tmp_path: Path) -> Path:
    """The firmware's variables as OVMF leaves them: a shell entry, first in BootOrder."""
    path = tmp_path / "efivars"
    path.mkdir()
    efiboot.write_variable(path, "Boot0000", efiboot.compose_load_option(SHELL_ENTRY))
    efiboot.write_variable(path, "BootOrder", struct.pack("<H", 0))
    return path


def efibootmgr(efivars: Path) -> str:
    if shutil.which("efibootmgr") is None:
        pytest.skip("efibootmgr not installed")
    env = dict(os.environ, EFIVARFS_PATH=f"{efivars}/")
    return subprocess.run(
        ["efibootmgr", "-v"], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_load_option_round_trip() -> None:
    hd = efiboot.HardDrive(1, 2048, 524288, uuid.UUID(ESP_PART_GUID))
    option = efiboot.LoadOption(efiboot.LOAD_OPTION_ACTIVE, "Linux Boot Manager", hd, LOADER)
    data = efiboot.compose_load_option(option)
    assert efiboot.parse_load_option(data) == option
    assert efiboot.parse_load_option(efiboot.compose_load_option(SHELL_ENTRY)) == SHELL_ENTRY
    # The GUID is stored as in the GPT entry (mixed endian), not as text order.
    assert uuid.UUID(ESP_PART_GUID).bytes_le in data


@pytest.mark.parametrize("cut", [3, 8, 60])
def test_truncated_load_option_is_an_error(cut: int) -> None:
    hd = efiboot.HardDrive(1, 2048, 524288, uuid.UUID(ESP_PART_GUID))
    data = efiboot.compose_load_option(efiboot.LoadOption(1, "Linux Boot Manager", hd, LOADER))
    with pytest.raises(ValueError):
        efiboot.parse_load_option(data[:cut])


def test_creates_the_entry_bootctl_would(
    disk: Path, esp: Path, efivars: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="make_disk_image")
    assert efiboot.ensure_boot_entry(esp, esp_plan(), disk, efivars=efivars, machine="x86_64")
    listing = efibootmgr(efivars)
    # The first free number, first in the boot order, the firmware's entry kept.
    assert re.search(r"^BootOrder: 0001,0000$", listing, re.M), listing
    entry = re.search(r"^Boot0001\* Linux Boot Manager\s+(\S+)", listing, re.M)
    assert entry, listing
    assert entry.group(1) == (f"HD(1,GPT,{ESP_PART_GUID.lower()},0x800,0x80000)/File({LOADER})"), (
        listing
    )
    assert re.search(r"^Boot0000\* EFI Internal Shell", listing, re.M), listing
    assert "created Boot0001 'Linux Boot Manager' on partition 1" in caplog.text

    # Idempotent: the entry is found again, nothing is rewritten.
    before = {p.name: p.read_bytes() for p in efivars.iterdir()}
    assert not efiboot.ensure_boot_entry(esp, esp_plan(), disk, efivars=efivars, machine="x86_64")
    assert {p.name: p.read_bytes() for p in efivars.iterdir()} == before


def test_an_existing_entry_for_the_esp_is_kept(disk: Path, esp: Path, efivars: Path) -> None:
    # As bootctl (systemd < 257, or outside a PID namespace) leaves it, path upper-cased
    # as some firmware does.
    hd = efiboot.HardDrive(1, 2048, 524288, uuid.UUID(ESP_PART_GUID))
    option = efiboot.LoadOption(1, "Linux Boot Manager", hd, LOADER.upper())
    efiboot.write_variable(efivars, "Boot0003", efiboot.compose_load_option(option))
    assert not efiboot.ensure_boot_entry(esp, esp_plan(), disk, efivars=efivars, machine="x86_64")
    assert efiboot.boot_order(efivars) == [0]


def test_an_entry_for_another_partition_does_not_count(
    disk: Path, esp: Path, efivars: Path
) -> None:
    other = efiboot.HardDrive(1, 2048, 524288, uuid.uuid4())
    option = efiboot.LoadOption(1, "Linux Boot Manager", other, LOADER)
    efiboot.write_variable(efivars, "Boot0001", efiboot.compose_load_option(option))
    assert efiboot.ensure_boot_entry(esp, esp_plan(), disk, efivars=efivars, machine="x86_64")
    assert efiboot.boot_order(efivars) == [2, 0]
    assert efiboot.boot_entries(efivars)[2].boots(uuid.UUID(ESP_PART_GUID), LOADER)


def test_no_systemd_boot_no_entry(disk: Path, tmp_path: Path, efivars: Path) -> None:
    before = {p.name: p.read_bytes() for p in efivars.iterdir()}
    assert not efiboot.ensure_boot_entry(
        tmp_path, esp_plan(), disk, efivars=efivars, machine="x86_64"
    )
    assert {p.name: p.read_bytes() for p in efivars.iterdir()} == before


def test_arch_names_the_loader(disk: Path, esp: Path, efivars: Path) -> None:
    # On aarch64 the loader is systemd-bootaa64.efi; an x64 one does not count.
    assert not efiboot.ensure_boot_entry(esp, esp_plan(), disk, efivars=efivars, machine="aarch64")
    assert efiboot.systemd_boot_path("aarch64") == "\\EFI\\systemd\\systemd-bootaa64.efi"


def test_the_loaders_name_comes_from_the_platform_table() -> None:
    for plat in PLATFORMS.values():
        path = efiboot.systemd_boot_path(plat.machine)
        assert path == f"\\EFI\\systemd\\systemd-boot{plat.efi_arch}.efi"
    with pytest.raises(StepError, match="no systemd-boot EFI architecture for riscv64"):
        efiboot.systemd_boot_path("riscv64")


def test_errors_name_the_problem(disk: Path, esp: Path, tmp_path: Path) -> None:
    with pytest.raises(StepError, match="no EFI variables at"):
        efiboot.ensure_boot_entry(
            esp, esp_plan(), disk, efivars=tmp_path / "none", machine="x86_64"
        )
    (tmp_path / "vars").mkdir()
    wrong = esp_plan("00000000-0000-4000-8000-000000000001")
    with pytest.raises(StepError, match="the plan says"):
        efiboot.ensure_boot_entry(esp, wrong, disk, efivars=tmp_path / "vars", machine="x86_64")
    # A random partition GUID (not deterministic) is taken from the disk.
    assert efiboot.ensure_boot_entry(
        esp, esp_plan(None), disk, efivars=tmp_path / "vars", machine="x86_64"
    )

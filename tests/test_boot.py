"""Images that boot: every bootable layout built through the engine, booted in qemu.

Each case builds the NixOS-shaped test system (testsys.system) for its layout, builds
an image of it with `make-disk-image build` (installBootLoader on, so the guest phase
runs the system's switch-to-configuration through nixos-enter), boots the image with
SeaBIOS (BIOS layouts) or OVMF (UEFI layouts; hybrid both ways) and checks what the
booted initramfs reports against the spec: root found by label with the expected
partition, UUID and GUID, /etc/NIXOS, the system profile, the closure, owners and modes
of `contents`. Every qemu run is bounded by a timeout.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import boot_work_dir

from make_disk_image import formats
from make_disk_image.models import Format
from testsys import boot, efi_vars, report_check, system
from testsys.boot import BootError, Firmware
from testsys.build import BuiltImage, build_image

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nix-build") is None,
        reason="boot tests need root (the engine's build, single-user Nix) and nix-build",
    ),
]

BOOT_TIMEOUT = 150.0  # seconds per boot; a good boot takes ~10-15 s under TCG


@dataclass(frozen=True)
class Case:
    layout: str
    firmwares: tuple[Firmware, ...]
    format: str
    touch_efi_vars: bool = False
    grub_device: str = "/dev/sda"
    deduplicate: bool = False


CASES = {
    "legacy": Case("legacy", ("bios",), "raw"),
    "legacy+boot": Case("legacy+boot", ("bios",), "qcow2"),
    # A device path in a subdirectory: the guest must create /dev/disk/by-id first.
    "legacy+gpt": Case("legacy+gpt", ("bios",), "vpc", grub_device="/dev/disk/by-id/virtio-os"),
    "efi": Case("efi", ("uefi",), "raw", touch_efi_vars=True),
    "efixbootldr": Case("efixbootldr", ("uefi",), "qcow2-compressed", touch_efi_vars=True),
    # No EFI variables: OVMF must find systemd-boot as the removable-media fallback.
    # Deduplicated: hard links in the store, through the guest and finish, boot.
    "hybrid": Case("hybrid", ("bios", "uefi"), "raw", grub_device="/dev/vda",
                   deduplicate=True),
}
BOOTS = [(name, firmware) for name, case in CASES.items() for firmware in case.firmwares]


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-boot-tests-")


@pytest.fixture(scope="module")
def contents_sources(work_dir: Path) -> Path:
    sources = work_dir / "sources"
    (sources / "data" / "nested").mkdir(parents=True)
    (sources / "secret").write_text("for alice only\n")
    (sources / "motd").write_text("built by make-disk-image\n")
    (sources / "data" / "a.txt").write_text("a\n")
    (sources / "data" / "nested" / "b.txt").write_text("b\n")
    return sources


def contents(sources: Path) -> list[dict[str, Any]]:
    return [
        {"source": str(sources / "secret"), "target": "/etc/secret", "mode": "0600",
         "user": "alice", "group": "users"},
        {"source": str(sources / "motd"), "target": "/etc/motd", "mode": "644"},
        {"source": str(sources / "data"), "target": "/srv/data", "user": "bob", "group": "bob"},
    ]  # fmt: skip


class Images:
    """Test systems and images built on first use, shared by the module's tests."""

    def __init__(self, work_dir: Path, sources: Path) -> None:
        self.work_dir = work_dir
        self.sources = sources
        self.systems: dict[str, system.TestSystem] = {}
        self.images: dict[str, tuple[BuiltImage, system.TestSystem]] = {}
        self.boots: dict[tuple[str, Firmware], boot.BootResult] = {}

    def system_for(self, case: Case) -> system.TestSystem:
        key = f"{case.layout}-{case.touch_efi_vars}-{case.grub_device}"
        if key not in self.systems:
            loader = system.boot_loader_for(
                case.layout, touch_efi_vars=case.touch_efi_vars, grub_device=case.grub_device
            )
            self.systems[key] = system.build_test_system(
                self.work_dir / "systems" / key.replace("/", "_"), loader
            )
        return self.systems[key]

    def spec(self, case: Case, **overrides: Any) -> dict[str, Any]:
        test_system = self.system_for(case)
        spec = test_system.spec(
            partitionTableType=case.layout,
            format=case.format,
            additionalSpace="16M",
            contents=contents(self.sources),
            touchEFIVars=case.touch_efi_vars,
            deduplicate=case.deduplicate,
        )
        if case.touch_efi_vars:
            spec.update(efiFirmware=str(boot.OVMF_CODE), efiVariables=str(boot.OVMF_VARS))
        spec.update(overrides)
        return spec

    def build(
        self, name: str, case: Case, **overrides: Any
    ) -> tuple[BuiltImage, system.TestSystem]:
        if name not in self.images:
            spec = self.spec(case, **overrides)
            built = build_image(spec, self.work_dir / "images", name=name.replace("+", "_"))
            self.images[name] = (built, self.system_for(case))
        return self.images[name]

    def boot(self, name: str, firmware: Firmware) -> boot.BootResult:
        """Boot the case's image (built on demand) once per firmware."""
        if (name, firmware) not in self.boots:
            built, _ = self.build(name, CASES[name])
            log = self.work_dir / f"{name}-{firmware}.serial.log"
            self.boots[(name, firmware)] = boot_built(built, firmware, log)
        return self.boots[(name, firmware)]


@pytest.fixture(scope="module")
def images(work_dir: Path, contents_sources: Path) -> Iterator[Images]:
    started = time.monotonic()
    yield Images(work_dir, contents_sources)
    print(f"\nboot tests: {time.monotonic() - started:.0f} s of module wall time")


def boot_built(built: BuiltImage, firmware: Firmware, log: Path) -> boot.BootResult:
    return boot.boot_image(
        built.image,
        firmware=firmware,
        efi_vars=built.efi_vars,
        timeout=BOOT_TIMEOUT,
        serial_log=log,
    )


@pytest.mark.parametrize(("name", "firmware"), BOOTS, ids=[f"{n}-{f}" for n, f in BOOTS])
def test_image_boots_and_matches_spec(
    images: Images, name: str, firmware: Firmware, work_dir: Path
) -> None:
    case = CASES[name]
    built, test_system = images.build(name, case)
    result = images.boot(name, firmware)
    problems = report_check.check_report(
        result.report, built.spec, firmware=firmware, store_paths=test_system.store_paths()
    )
    assert problems == [], "\n".join(problems)

    if case.touch_efi_vars:
        # switch-to-configuration registered systemd-boot in the image's efi-vars.fd,
        # and the firmware booted through that entry.
        assert built.efi_vars is not None
        options, order = efi_vars.efi_boot_entries(built.efi_vars)
        ours = [o for o in options if o.description == "Linux Boot Manager"]
        assert len(ours) == 1, options
        entry = ours[0]
        assert entry.file_path == "\\EFI\\systemd\\systemd-bootx64.efi"
        assert entry.partition_number == 1
        assert entry.partition_guid == report_check.ESP_PARTITION_GUID
        assert order[:1] == [entry.number]
        assert result.report.boot_current == entry.number


def test_minimal_image_boots_after_growing(images: Images, work_dir: Path) -> None:
    """diskSize = "minimal" leaves room for what the guest writes (GRUB's files in the
    root filesystem); grown as a first boot would (truncate, growpart, resize2fs), the
    image boots and its kernel sees the grown partition and filesystem."""
    from imagecheck import dumpe2fs, sfdisk_json
    from test_sizing import grow_root

    from make_disk_image.minimal import free_bound

    case = Case("legacy+gpt", ("bios",), "raw", grub_device="/dev/disk/by-id/virtio-os")
    built, test_system = images.build(
        "legacy+gpt-minimal", case, diskSize="minimal", additionalSpace="0M"
    )
    plan_size = built.image.stat().st_size
    # The bound holds for the finished image: what GRUB wrote fit in the slack.
    root = sfdisk_json(built.image)["partitions"][1]
    sb = dumpe2fs(built.image, int(root["start"]) * 512)
    free = int(sb["Free blocks"]) * 4096
    assert 0 < free <= free_bound(0, int(sb["Block count"]) * 4096)
    _, root_size = grow_root(built.image, 2, 64 * 1024 * 1024)
    assert built.image.stat().st_size == plan_size + 64 * 1024 * 1024
    result = boot_built(built, "bios", work_dir / "legacy+gpt-minimal.serial.log")
    problems = report_check.check_report(
        result.report, built.spec, firmware="bios", store_paths=test_system.store_paths()
    )
    assert problems == [], "\n".join(problems)
    assert result.report.root_sectors == root_size // 512
    assert result.report.fs_blocks == root_size // 4096


def test_image_formats_are_the_converted_ones(images: Images) -> None:
    """The qcow2, vpc and vdi cases really booted converted files, not raw ones."""
    for name, header in (("legacy+boot", b"QFI\xfb"), ("efixbootldr", b"QFI\xfb")):
        built, _ = images.build(name, CASES[name])
        assert built.image.suffix == ".qcow2"
        assert built.image.read_bytes()[:4] == header
    built, _ = images.build("legacy+gpt", CASES["legacy+gpt"])
    assert built.image.suffix == ".vhd"
    assert built.image.read_bytes()[-512:][:8] == b"conectix"


def test_a_new_format_boots(images: Images, work_dir: Path) -> None:
    """The legacy image converted to VHDX, with the GUIDs, sequence numbers and header
    CRC-32Cs that `deterministic` rewrites, boots and matches its spec."""
    built, test_system = images.build("legacy", CASES["legacy"])
    vhdx = work_dir / "legacy.vhdx"
    formats.convert(Format.VHDX, built.image, vhdx, deterministic=True, step="test")
    assert vhdx.read_bytes()[:8] == b"vhdxfile"
    result = boot.boot_image(
        vhdx, firmware="bios", timeout=BOOT_TIMEOUT, serial_log=work_dir / "legacy-vhdx.serial.log"
    )
    problems = report_check.check_report(
        result.report, built.spec, firmware="bios", store_paths=test_system.store_paths()
    )
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("layout", ["legacy", "efi"])
def test_image_without_boot_loader_does_not_boot(
    images: Images, layout: str, work_dir: Path
) -> None:
    case = CASES[layout]
    built, _ = images.build(f"{layout}-no-bootloader", case, installBootLoader=False)
    with pytest.raises(BootError, match="gave up|no kernel started"):
        boot.boot_image(
            built.image,
            firmware=case.firmwares[0],
            efi_vars=built.efi_vars,
            timeout=BOOT_TIMEOUT,
            # A working loader starts the kernel within seconds; don't wait a minute.
            kernel_timeout=30,
            serial_log=work_dir / f"{layout}-no-bootloader.serial.log",
        )


def test_check_report_flags_a_spec_the_image_does_not_meet(images: Images) -> None:
    """The checks can fail: the legacy image's real report against a different spec."""
    built, test_system = images.build("legacy", CASES["legacy"])
    result = images.boot("legacy", "bios").report
    wrong = dict(built.spec, label="other", rootGPUID="00000000-0000-4000-8000-000000000001")
    wrong["contents"] = [dict(c) for c in built.spec["contents"]]
    wrong["contents"][0]["mode"] = "0644"
    wrong["contents"][2]["user"] = "alice"
    wrong["contents"][2]["group"] = "users"
    missing_path = Path("/nix/store/00000000000000000000000000000000-not-in-the-image")
    store_paths = [*test_system.store_paths(), missing_path]
    problems = report_check.check_report(result, wrong, firmware="uefi", store_paths=store_paths)
    text = "\n".join(problems)
    for expected in (
        "firmware",
        "root file system label",
        "root file system UUID",
        "mode of /etc/secret",
        "owner of /srv/data/nested/b.txt",
        missing_path.name,
        "systemd-boot's entry",
    ):
        assert expected in text, text


def fat_files(image: Path, partition: int, scratch: Path) -> set[str]:
    """Paths of the files on a FAT partition of an image (any qemu format), via mtools."""
    raw = scratch / f"{image.parent.name}-{image.stem}.raw"
    if not raw.exists():
        subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True, timeout=120)
    table = json.loads(
        subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True).stdout
    )
    start = int(table["partitiontable"]["partitions"][partition - 1]["start"])
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", f"{raw}@@{start * 512}", "::"],
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return {line.removeprefix("::") for line in listing.stdout.decode().split() if line}


def matching(files: set[str], pattern: str) -> list[str]:
    return sorted(f for f in files if fnmatch.fnmatch(f, pattern))


SYSTEMD_BOOT_ON_ESP = (
    "/EFI/systemd/systemd-bootx64.efi",
    "/EFI/BOOT/BOOTX64.EFI",
    "/loader/loader.conf",
)
ENTRIES_AND_KERNELS = (
    "/loader/entries/nixos-generation-1.conf",
    "/EFI/nixos/*-linux-*-bzImage.efi",
    "/EFI/nixos/*-initrd-*-initrd.efi",
)
GRUB_ON_BOOT = (
    "/grub/grub.cfg",
    "/grub/i386-pc/core.img",
    "/kernels/*-bzImage",
    "/kernels/*-initrd",
)
# (case, FAT partition number, files that must be there, files that must not)
BOOT_FILES = [
    ("legacy+boot", 1, GRUB_ON_BOOT, ("/EFI/*",)),
    ("efi", 1, SYSTEMD_BOOT_ON_ESP + ENTRIES_AND_KERNELS, ("/grub/*",)),
    ("efixbootldr", 1, SYSTEMD_BOOT_ON_ESP, ENTRIES_AND_KERNELS),
    ("efixbootldr", 2, ENTRIES_AND_KERNELS, SYSTEMD_BOOT_ON_ESP),
    ("hybrid", 1, SYSTEMD_BOOT_ON_ESP + ENTRIES_AND_KERNELS + GRUB_ON_BOOT, ()),
]


@pytest.mark.parametrize(
    ("name", "partition", "present", "absent"),
    BOOT_FILES,
    ids=[f"{case}-partition{number}" for case, number, _, _ in BOOT_FILES],
)
def test_boot_files_are_where_nixos_puts_them(
    images: Images,
    work_dir: Path,
    name: str,
    partition: int,
    present: tuple[str, ...],
    absent: tuple[str, ...],
) -> None:
    """Loader, entries and kernels on the ESP, XBOOTLDR or BOOT partition as configured."""
    built, _ = images.build(name, CASES[name])
    files = fat_files(built.image, partition, work_dir)
    for pattern in present:
        assert len(matching(files, pattern)) == 1, (pattern, sorted(files))
    for pattern in absent:
        assert matching(files, pattern) == [], (pattern, sorted(files))

"""End-to-end demo: build the test system, an image of it through the engine, boot it.

    python3 -m testsys.demo [--layout efi|legacy|...] [--fs-type ext4|btrfs|xfs]
                            [--arch x86_64|aarch64] [OUTDIR]

OUTDIR defaults to /var/tmp/make-disk-image-demo (with -ARCH appended for --arch).

Prints the image's partition table, file systems and files, then boots it under qemu
(OVMF or SeaBIOS, TCG) and prints the report the booted system sends over its serial
console, checked against the spec. OUTDIR keeps the spec, image, logs and serial log.
It must not be under /tmp, /run or /mnt (the engine's build VM has its own there).

With --arch aarch64 (on an x86_64 host) the system is made of Debian's arm64 packages,
the engine's guest phase runs in a qemu-system-aarch64 TCG VM, and the image boots
under qemu-system-aarch64 with AAVMF.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from make_disk_image.platforms import PLATFORMS, Platform, platform_for
from testsys import boot, efi_vars, esp_loaders, report_check, system
from testsys.build import BuildError, BuiltImage, build_image

UEFI_LAYOUTS = ("efi", "efixbootldr")
DEFAULT_OUTDIR = "/var/tmp/make-disk-image-demo"
# The root filesystems a bootable image can have (read-only ones hold store images only).
WRITABLE_ROOTS = ("ext4", "btrfs", "xfs")


def _show(title: str, argv: list[str]) -> None:
    print(f"\n== {title}: $ {' '.join(argv)}")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    print(proc.stdout.decode(errors="replace").rstrip())


def _partitions(raw: Path) -> list[tuple[int, int, int]]:
    """(number, start sector, sectors) of each partition, read with sfdisk --json."""
    proc = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True)
    table = json.loads(proc.stdout)["partitiontable"]
    return [
        (index + 1, int(p["start"]), int(p["size"])) for index, p in enumerate(table["partitions"])
    ]


def show_image(raw: Path) -> None:
    _show("partition table", ["sfdisk", "--dump", str(raw)])
    for number, start, sectors in _partitions(raw):
        offset = start * 512
        _show(
            f"partition {number} file system",
            ["blkid", "--probe", "--offset", str(offset), "--size", str(sectors * 512), str(raw)],
        )
        probe = subprocess.run(
            ["blkid", "--probe", "--offset", str(offset), "--size", str(sectors * 512),
             "-o", "value", "-s", "TYPE", str(raw)], capture_output=True, text=True, check=False)
        fs_type = probe.stdout.strip()
        if fs_type == "ext4":
            for directory in ("/", "/etc", "/nix/store", "/nix/var/nix/profiles"):
                _show(
                    f"partition {number} {directory}",
                    ["debugfs", "-R", f"ls -l {directory}", f"{raw}?offset={offset}"],
                )
        elif fs_type == "vfat":
            _show(f"partition {number} files", ["mdir", "-/", "-b", "-i", f"{raw}@@{offset}", "::"])
        elif fs_type:
            # btrfs and xfs have no offline lister here; the booted system reports them.
            print(f"({fs_type}: its files are listed by the booted system's report below)")


def show_uefi_contents(built: BuiltImage) -> None:
    """The UEFI loaders on the image's ESP and the boot entries of its variable store."""
    loaders = esp_loaders.efi_loaders(built.image)
    if loaders:
        print("\n== EFI binaries on the ESP (PE machine type)")
        for path, machine in loaders.items():
            print(f"{path}: {machine}")

    if built.efi_vars is not None:
        options, order = efi_vars.efi_boot_entries(built.efi_vars)
        print(f"\n== EFI boot entries in {built.efi_vars} (BootOrder {order})")
        for option in options:
            print(f"Boot{option.number:04X} {option.description!r} {option.file_path or ''}")


def show_report(
    result: boot.BootResult, booted: Platform, firmware_name: str, serial_log: Path
) -> None:
    """What the booted system reported over its serial console."""
    report = result.report
    print(f"booted and powered off in {result.seconds:.1f} s; serial console: {serial_log}")
    print(f"architecture:    {report.machine or booted.machine} ({booted.qemu_binary})")
    print(f"firmware:        {report.firmware} ({firmware_name})")
    print(f"kernel cmdline:  {report.cmdline}")
    print(f"root:            {report.root_device} (partition {report.root_partition_number},")
    print(f"                 {report.partition_table} GUID {report.root_partition_guid})")
    print(f"file system:     {report.fs_type} label {report.fs_label!r} UUID {report.fs_uuid}")
    print(f"/etc/NIXOS:      {'present' if report.etc_nixos else 'MISSING'}")
    print(f"system profile:  {report.system_profile_target()}")
    print(f"store entries:   {len(report.store_entries)}")
    motd = report.files.get("/etc/motd")
    if motd is not None:
        print(f"/etc/motd:       uid {motd.uid} gid {motd.gid} mode {motd.permissions:04o}")
    if report.loader_entry_selected:
        print(f"systemd-boot:    entry {report.loader_entry_selected}")
    print(f"stage 2:         NixOS {report.stage2_version} ran from the image, then powered off")


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m testsys.demo", description=__doc__)
    parser.add_argument("outdir", type=Path, nargs="?", default=None)
    parser.add_argument("--layout", default="efi", choices=sorted(report_check.ROOT_PARTITION))
    parser.add_argument("--fs-type", default="ext4", choices=WRITABLE_ROOTS,
                        help="the root filesystem (fsType)")
    parser.add_argument(
        "--arch",
        default=None,
        choices=sorted(p.machine for p in PLATFORMS.values()),
        help="the image's architecture (default: this machine's)",
    )
    return parser


def make_outdir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """OUTDIR (or its default), made; an error when it holds files or the VM cannot see it."""
    default = Path(f"{DEFAULT_OUTDIR}-{args.arch}" if args.arch else DEFAULT_OUTDIR)
    outdir: Path = (args.outdir or default).absolute()
    if outdir.exists() and any(outdir.iterdir()):
        parser.error(f"{outdir} exists and is not empty")
    if any(outdir.is_relative_to(p) for p in ("/tmp", "/run", "/mnt")):
        parser.error("OUTDIR must not be under /tmp, /run or /mnt: the build VM cannot see it")
    outdir.mkdir(parents=True, exist_ok=True)
    return outdir


def image_spec(
    test_system: system.TestSystem, outdir: Path, layout: str, fs_type: str,
    touch_efi_vars: bool,
) -> dict[str, Any]:
    """The demo image's spec: the layout and fsType asked for, and a contents entry."""
    source = outdir / "motd"
    source.write_text("Hello from an image built by make-disk-image.\n")
    # btrfs is made in a user namespace where only root owns files (README, Filesystems).
    owner = {} if fs_type == "btrfs" else {"user": "alice", "group": "users"}
    spec = test_system.spec(
        partitionTableType=layout,
        fsType=fs_type,
        additionalSpace="16M",
        touchEFIVars=touch_efi_vars,
        contents=[{"source": str(source), "target": "/etc/motd", "mode": "0640", **owner}],
    )
    if touch_efi_vars:
        code, variables = boot.UEFI_FIRMWARE[test_system.system]
        spec.update(efiFirmware=str(code), efiVariables=str(variables))
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    system_name = f"{args.arch}-linux" if args.arch else None
    plat = platform_for(system_name) if system_name else None
    outdir = make_outdir(parser, args)
    layout: str = args.layout
    uefi_only = plat is not None and not plat.bios
    firmware: boot.Firmware = "uefi" if layout in UEFI_LAYOUTS or uefi_only else "bios"
    touch_efi_vars = firmware == "uefi"
    try:
        boot_loader = system.boot_loader_for(
            layout, touch_efi_vars=touch_efi_vars, system=system_name
        )
    except ValueError as exc:
        parser.error(str(exc))

    started = time.monotonic()
    print(f"== building the test system with Nix ({layout} boot loader configuration)")
    test_system = system.build_test_system(outdir / "system", boot_loader, system=system_name)
    print(f"system:   {test_system.system}")
    print(f"toplevel: {test_system.toplevel}")
    print(f"closure:  {len(test_system.store_paths())} store paths")

    spec = image_spec(test_system, outdir, layout, args.fs_type, touch_efi_vars)
    print(f"\n== make-disk-image build (spec: {outdir / 'image.json'}; log: image.log)")
    try:
        built = build_image(spec, outdir, name="image")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"image: {built.image} ({built.image.stat().st_size} bytes, {built.seconds:.0f} s)")
    shutil.rmtree(outdir / "tmp", ignore_errors=True)
    show_image(built.image)
    show_uefi_contents(built)

    serial_log = outdir / "serial.log"
    booted = platform_for(test_system.system)
    firmware_name = (
        "SeaBIOS" if firmware == "bios" else boot.UEFI_FIRMWARE[booted.system][0].name
    )
    print(f"\n== booting it: {booted.qemu_binary} TCG, {firmware_name}")
    try:
        result = boot.boot_image(
            built.image,
            firmware=firmware,
            efi_vars=built.efi_vars,
            serial_log=serial_log,
            system=test_system.system,
            timeout=600 if booted.system != "x86_64-linux" else 180,
            kernel_timeout=300 if booted.system != "x86_64-linux" else 60,
        )
    except boot.BootError as exc:
        print(f"error: the image did not boot: {exc}", file=sys.stderr)
        return 1
    report = result.report
    show_report(result, booted, firmware_name, serial_log)
    problems = report_check.check_report(
        report,
        spec,
        firmware=firmware,
        store_paths=test_system.store_paths(),
        loader="grub" if boot_loader.grub_efi or firmware == "bios" else "systemd-boot",
    )
    if report.machine is not None and report.machine != booted.machine:
        problems.append(f"architecture: got {report.machine!r}, expected {booted.machine!r}")
    for problem in problems:
        print(f"MISMATCH: {problem}")
    print(f"\n{'OK' if not problems else 'FAILED'}: {time.monotonic() - started:.0f} s in all")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

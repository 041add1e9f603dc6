"""End-to-end demo: build the test system, an image of it through the engine, boot it.

    python3 -m testsys.demo OUTDIR [--layout efi|legacy|...]

Prints the image's partition table, file systems and files, then boots it under qemu
(OVMF or SeaBIOS, TCG) and prints the report the booted system sends over its serial
console, checked against the spec. OUTDIR keeps the spec, image, logs and serial log.
It must not be under /tmp, /run or /mnt (the engine's build VM has its own there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from testsys import boot, system
from testsys.build import BuildError, build_image

UEFI_LAYOUTS = ("efi", "efixbootldr")


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
        with raw.open("rb") as disk:
            disk.seek(offset + 1024 + 56)
            is_ext4 = struct.unpack("<H", disk.read(2))[0] == 0xEF53
        if is_ext4:
            for directory in ("/", "/etc", "/nix/store", "/nix/var/nix/profiles"):
                _show(
                    f"partition {number} {directory}",
                    ["debugfs", "-R", f"ls -l {directory}", f"{raw}?offset={offset}"],
                )
        elif sectors > 2048:
            _show(f"partition {number} files", ["mdir", "-/", "-b", "-i", f"{raw}@@{offset}", "::"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m testsys.demo", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--layout", default="efi", choices=sorted(boot.ROOT_PARTITION))
    args = parser.parse_args(argv)
    outdir: Path = args.outdir.absolute()
    if outdir.exists() and any(outdir.iterdir()):
        parser.error(f"{outdir} exists and is not empty")
    if any(outdir.is_relative_to(p) for p in ("/tmp", "/run", "/mnt")):
        parser.error("OUTDIR must not be under /tmp, /run or /mnt: the build VM cannot see it")
    outdir.mkdir(parents=True, exist_ok=True)
    layout: str = args.layout
    firmware: boot.Firmware = "uefi" if layout in UEFI_LAYOUTS else "bios"
    touch_efi_vars = firmware == "uefi"

    started = time.monotonic()
    print(f"== building the test system with Nix ({layout} boot loader configuration)")
    test_system = system.build_test_system(
        outdir / "system", system.boot_loader_for(layout, touch_efi_vars=touch_efi_vars)
    )
    print(f"toplevel: {test_system.toplevel}")
    print(f"closure:  {len(test_system.store_paths())} store paths")

    source = outdir / "motd"
    source.write_text("Hello from an image built by make-disk-image.\n")
    spec = test_system.spec(
        partitionTableType=layout,
        additionalSpace="16M",
        touchEFIVars=touch_efi_vars,
        contents=[
            {"source": str(source), "target": "/etc/motd", "mode": "0640",
             "user": "alice", "group": "users"},
        ],
    )  # fmt: skip
    if touch_efi_vars:
        spec.update(efiFirmware=str(boot.OVMF_CODE), efiVariables=str(boot.OVMF_VARS))
    print(f"\n== make-disk-image build (spec: {outdir / 'image.json'}; log: image.log)")
    try:
        built = build_image(spec, outdir, name="image")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"image: {built.image} ({built.image.stat().st_size} bytes, {built.seconds:.0f} s)")
    shutil.rmtree(outdir / "tmp", ignore_errors=True)
    show_image(built.image)

    if built.efi_vars is not None:
        options, order = boot.efi_boot_entries(built.efi_vars)
        print(f"\n== EFI boot entries in {built.efi_vars} (BootOrder {order})")
        for option in options:
            print(f"Boot{option.number:04X} {option.description!r} {option.file_path or ''}")

    serial_log = outdir / "serial.log"
    print(f"\n== booting it: qemu TCG, {'OVMF' if firmware == 'uefi' else 'SeaBIOS'}")
    try:
        result = boot.boot_image(
            built.image, firmware=firmware, efi_vars=built.efi_vars, serial_log=serial_log
        )
    except boot.BootError as exc:
        print(f"error: the image did not boot: {exc}", file=sys.stderr)
        return 1
    report = result.report
    print(f"booted and powered off in {result.seconds:.1f} s; serial console: {serial_log}")
    print(f"firmware:        {report.firmware}")
    print(f"kernel cmdline:  {report.cmdline}")
    print(f"root:            {report.root_device} (partition {report.root_partition_number},")
    print(f"                 {report.partition_table} GUID {report.root_partition_guid})")
    print(f"file system:     ext4 label {report.fs_label!r} UUID {report.fs_uuid}")
    print(f"/etc/NIXOS:      {'present' if report.etc_nixos else 'MISSING'}")
    print(f"system profile:  {report.system_profile_target()}")
    print(f"store entries:   {len(report.store_entries)}")
    motd = report.files.get("/etc/motd")
    if motd is not None:
        print(f"/etc/motd:       uid {motd.uid} gid {motd.gid} mode {motd.permissions:04o}")
    if report.loader_entry_selected:
        print(f"systemd-boot:    entry {report.loader_entry_selected}")
    print(f"stage 2:         NixOS {report.stage2_version} ran from the image, then powered off")
    problems = boot.check_report(
        report, spec, firmware=firmware, store_paths=test_system.store_paths()
    )
    for problem in problems:
        print(f"MISMATCH: {problem}")
    print(f"\n{'OK' if not problems else 'FAILED'}: {time.monotonic() - started:.0f} s in all")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

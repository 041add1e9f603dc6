#!/usr/bin/env python3
"""The demo image built for x86_64 and for aarch64 on this x86_64 machine, same run.

    python3 bench/arch.py [--workdir DIR] [--no-boot]

Both images are the demo's (testsys/demo.py): the test system with systemd-boot, the
efi layout, touchEFIVars, a contents entry owned by name, otherwise makeDiskImage's
default arguments. Each is built by `make-disk-image build`; the figures are the
engine's own (its log) per phase: prepare (native), the build VM's wall time (its
guest phase inside: boot loader, chown, record), finish (native), and then a boot of
the image under qemu TCG. x86_64 is the baseline: its build VM is qemu-system-x86_64
booting the host's kernel; aarch64's is qemu-system-aarch64 (TCG, `-machine virt
-cpu max,pauth=off,sve=off`) booting Debian's arm64 kernel with a guest root of
Debian's arm64 packages.
No KVM and no binfmt either way. Run as root (Debian's Nix is single-user here).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from make_disk_image.platforms import PLATFORMS  # noqa: E402
from testsys import boot, system  # noqa: E402
from testsys.build import build_image  # noqa: E402

PHASES = (
    ("prepare", r"prepare: done in ([0-9.]+) s"),
    ("build VM (wall)", r"\[vm\] guest ran for ([0-9.]+) s"),
    ("  guest phase in it", r"guest: done in ([0-9.]+) s"),
    ("  boot loader", r"guest: done in [0-9.]+ s \(bootloader ([0-9.]+) s"),
    ("finish", r"finish: done in ([0-9.]+) s"),
)


@dataclass(frozen=True)
class Figures:
    system: str
    phases: dict[str, float]
    build: float
    boot: float | None
    image_bytes: int


def measure(system_name: str, work: Path, do_boot: bool) -> Figures:
    layout = "efi"
    loader = system.boot_loader_for(layout, touch_efi_vars=True, system=system_name)
    test_system = system.build_test_system(work / "system", loader, system=system_name)
    motd = work / "motd"
    motd.write_text("Hello from an image built by make-disk-image.\n")
    code, variables = boot.UEFI_FIRMWARE[system_name]
    spec = test_system.spec(
        partitionTableType=layout, additionalSpace="16M", touchEFIVars=True,
        efiFirmware=str(code), efiVariables=str(variables),
        contents=[{"source": str(motd), "target": "/etc/motd", "mode": "0640",
                   "user": "alice", "group": "users"}],
    )  # fmt: skip
    built = build_image(spec, work, name="image")
    phases: dict[str, float] = {}
    for label, pattern in PHASES:
        found = re.search(pattern, built.log)
        if found:
            phases[label] = float(found.group(1))
    seconds = None
    if do_boot:
        started = time.monotonic()
        boot.boot_image(built.image, firmware="uefi", efi_vars=built.efi_vars,
                        system=system_name, timeout=900, kernel_timeout=900)  # fmt: skip
        seconds = time.monotonic() - started
    return Figures(system_name, phases, built.seconds, seconds, built.image.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/arch.py", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-boot", action="store_true", help="build only")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mdi-bench-arch-", dir=args.workdir))
    try:
        results = [
            measure(name, work / name, not args.no_boot)
            for name in ("x86_64-linux", "aarch64-linux")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = 24
    header = "".join(f"{r.system:>16}" for r in results)
    print(f"\n{'seconds':<{width}}{header}   (the demo image, efi + systemd-boot)")
    for label, _ in PHASES:
        cells = "".join(
            f"{r.phases[label]:>16.1f}" if label in r.phases else f"{'-':>16}" for r in results
        )
        print(f"{label:<{width}}{cells}")
    print(f"{'build (all, wall)':<{width}}" + "".join(f"{r.build:>16.1f}" for r in results))
    if all(r.boot is not None for r in results):
        print(f"{'boot to power-off':<{width}}" + "".join(f"{r.boot:>16.1f}" for r in results))
    print(f"{'image MiB':<{width}}" + "".join(f"{r.image_bytes / 2**20:>16.1f}" for r in results))
    emulators = ", ".join(f"{r.system}: {PLATFORMS[r.system].qemu_binary}" for r in results)
    print(f"(TCG throughout; {emulators})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

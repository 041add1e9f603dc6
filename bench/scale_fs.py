#!/usr/bin/env python3
"""The engine's xfs and btrfs writers on the synthetic closure (~2 GB, ~100k entries).

    python3 bench/scale_fs.py [--size-mb 2000] [--packages 80] [--fs xfs btrfs]
                              [--workdir DIR]

For each filesystem, the test system plus the closure through `make-disk-image prepare`
and `finish` (diskSize "auto", no boot loader; separate processes, as Nix runs them),
each phase's time and peak RSS; then the root partition checked by its own tool
(`xfs_repair -n`, `btrfs check --readonly --check-data-csum`), timed, and mounted
read-only by the kernel, every store path compared with `diff -r --no-dereference`.
Asserts nothing but says what differs. Run as root; needs about 3x --size-mb free
under --workdir (default: /var/tmp).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scale import env_for, measured, remove_unless_mounted  # noqa: E402

from bench import make_closure  # noqa: E402
from testsys.system import BootLoader, build_test_system  # noqa: E402

MIB = 1024 * 1024
CHECKS = {
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly", "--check-data-csum"],
}


def root_range(image: Path) -> tuple[int, int]:
    """(byte offset, bytes) of the image's last partition: the root."""
    table = json.loads(subprocess.run(["sfdisk", "-J", image], capture_output=True,
                                      text=True, check=True).stdout)
    last = table["partitiontable"]["partitions"][-1]
    return last["start"] * 512, last["size"] * 512


def check_root(image: Path, fs_type: str, store_paths: list[str], mnt: Path) -> None:
    offset, size = root_range(image)
    loop = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(offset),
                           "--sizelimit", str(size), image], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        started = time.monotonic()
        check = subprocess.run([*CHECKS[fs_type], loop], capture_output=True, text=True)
        print(f"  {' '.join(CHECKS[fs_type][:2])}: exit {check.returncode} in "
              f"{time.monotonic() - started:.1f} s")
        if check.returncode:
            print(check.stdout[-3000:] + check.stderr[-2000:])
        mnt.mkdir()
        options = "ro,norecovery" if fs_type == "xfs" else "ro"
        subprocess.run(["mount", "-o", options, loop, mnt], check=True)
        try:
            started = time.monotonic()
            differ = [path for path in store_paths if subprocess.run(
                ["diff", "-r", "--no-dereference", path, f"{mnt}{path}"],
                capture_output=True).returncode]
            entries = len(subprocess.run(["find", mnt], capture_output=True,
                                         check=True).stdout.splitlines())
            print(f"  the kernel's mount: {entries:,} entries; {len(store_paths)} store "
                  f"paths compared in {time.monotonic() - started:.1f} s, "
                  f"{len(differ)} differ {differ[:3]}")
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2000)
    parser.add_argument("--packages", type=int, default=80)
    parser.add_argument("--fs", nargs="+", default=["xfs", "btrfs"], choices=sorted(CHECKS))
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdi-scale-fs-", dir=args.workdir))
    try:
        synthetic = make_closure(work, args.size_mb * MIB, packages=args.packages)
        print(f"synthetic closure: {len(synthetic.store_paths)} store paths, "
              f"{synthetic.entries:,} entries, {synthetic.apparent_bytes / MIB:,.0f} MiB",
              flush=True)
        system = build_test_system(work / "system", BootLoader(systemd_boot=True),
                                   additional_paths=[Path(p) for p in synthetic.store_paths])
        env = env_for(work)
        engine = [sys.executable, "-m", "make_disk_image"]
        for fs_type in args.fs:
            build = work / fs_type / "build"
            build.mkdir(parents=True)
            spec = build / "spec.json"
            spec.write_text(json.dumps(system.spec(partitionTableType="efi", fsType=fs_type,
                                                   installBootLoader=False)))
            out = work / fs_type / "out"
            print(f"{fs_type}:")
            for phase in ("prepare", "finish"):
                seconds, rss, log = measured([*engine, phase, str(spec), "--out", str(out)],
                                             cwd=build, env=env)
                print(f"  {phase:<8} {seconds:6.1f} s   peak RSS {rss / 1024:5.0f} MiB")
                for line in log.splitlines():
                    if "took" in line or "Disk image size" in line:
                        print(f"    {line.strip()}")
            image = out / "nixos.img"
            print(f"  image: {image.stat().st_size / MIB:,.0f} MiB, "
                  f"{image.stat().st_blocks * 512 / MIB:,.0f} MiB allocated", flush=True)
            check_root(image, fs_type, list(synthetic.store_paths), work / fs_type / "mnt")
            remove_unless_mounted(work / fs_type)
    finally:
        remove_unless_mounted(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

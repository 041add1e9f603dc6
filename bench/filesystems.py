#!/usr/bin/env python3
"""Each fsType on a closure of real files, deduplication on and off. Asserts nothing.

    python3 bench/filesystems.py [--from /usr/share/doc,/usr/lib/gcc,...] [--only ext4,...]
                                 [--keep-closure DIR] [--compression]

The closure is real directories (default: parts of /usr, about 1 GB: names with spaces,
licences and firmware copies included), each added to the Nix store as one store path,
with a toplevel linking them and a closureInfo. Each build is prepare + finish as Nix
runs them without a guest (no bootloader, auto size): ext4, btrfs and xfs on `efi`, erofs
and squashfs as store images; with `deduplicate` off and on where the filesystem takes
it (interface.json's `hardLinks`: all do). Printed per build: wall time, the root tool's
own time from the log, image size, allocated bytes. `--compression` adds each store image
compression, one run each. Run as root (Debian's Nix is single-user here).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from measuring import human, run, stopwatch  # noqa: E402

from make_disk_image.interface import FS_TYPES  # noqa: E402

DEFAULT_SOURCES = (
    "/usr/share/locale", "/usr/share/doc", "/usr/share/man", "/usr/share/vim",
    "/usr/share/icons", "/usr/share/perl", "/usr/share/cmake-3.25", "/usr/share/i18n",
    "/usr/share/fonts", "/usr/share/mime", "/usr/share/zoneinfo", "/usr/share/alsa",
    "/usr/share/AAVMF", "/usr/lib/python3.11", "/usr/lib/gcc", "/usr/lib/postgresql",
    "/usr/lib/git-core", "/usr/share/java", "/usr/share/qemu", "/usr/share/OVMF",
    "/usr/share/package-lists",
)
FILESYSTEMS = ("ext4", "btrfs", "xfs", "erofs", "squashfs")
TOOL_TIME = re.compile(r"\] [^\n]*? took ([0-9.]+) s")


def make_closure(work: Path, sources: list[str]) -> tuple[str, Path]:
    """Store paths of `sources` and a toplevel; returns (toplevel, closureInfo dir)."""
    paths = [run(["nix-store", "--add", s]).stdout.decode().strip() for s in sources]
    top = work / "bench-fs-toplevel"
    (top / "sw").mkdir(parents=True)
    (top / "init").write_text("#!/bin/sh\n")
    for i, path in enumerate(paths):
        (top / "sw" / f"p{i:02d}").symlink_to(path)
    toplevel = run(["nix-store", "--add", top]).stdout.decode().strip()
    paths.append(toplevel)
    info = work / "closure-info"
    info.mkdir()
    (info / "store-paths").write_text("".join(f"{p}\n" for p in sorted(paths)))
    (info / "registration").write_bytes(run(["nix-store", "--dump-db", *paths]).stdout)
    return toplevel, info


def build(work: Path, name: str, spec: dict[str, object]) -> tuple[float, str, Path]:
    directory = work / name
    out = directory / "out"
    directory.mkdir()
    (directory / "spec.json").write_text(json.dumps(spec))
    log = ""
    with stopwatch() as elapsed:
        for phase in ("prepare", "finish"):
            argv = [sys.executable, "-m", "make_disk_image", phase,
                    str(directory / "spec.json"), "--out", str(out)]
            proc = subprocess.run(argv, cwd=directory, capture_output=True, text=True,
                                  env=dict(os.environ, out=str(out), PYTHONPATH=str(REPO),
                                           TMPDIR=str(directory)))
            log += proc.stderr
            if proc.returncode:
                return elapsed(), log, out
    return elapsed(), log, out


def report(work: Path, name: str, spec: dict[str, object]) -> None:
    seconds, log, out = build(work, name, spec)
    image = out / "nixos.img"
    if not image.exists():
        last = [line for line in log.splitlines() if line.strip()][-1:]
        print(f"  {name:<28} FAILED after {seconds:.1f} s: {' '.join(last)[:300]}", flush=True)
    else:
        tool = sum(float(m) for m in TOOL_TIME.findall(log))
        for line in log.splitlines():
            if "copied" in line or " took " in line:
                print(f"      {line.split('] ', 1)[-1][:110]}")
        st = image.stat()
        print(f"  {name:<28} {seconds:6.1f} s (tool {tool:5.1f} s)   image {human(st.st_size)}"
              f", {human(st.st_blocks * 512)} allocated", flush=True)
    shutil.rmtree(work / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="sources", default=",".join(DEFAULT_SOURCES))
    parser.add_argument("--only", default=",".join(FILESYSTEMS))
    parser.add_argument("--compression", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdi-bench-fs-", dir=args.workdir))
    try:
        sources = [s for s in args.sources.split(",") if s]
        with stopwatch() as elapsed:
            toplevel, info = make_closure(work, sources)
        du = run(["du", "-sb", "--apparent-size", *sources]).stdout.decode().split()
        total = sum(int(x) for x in du[::2])
        print(f"closure: {len(sources)} store paths from /usr, {human(total)} apparent "
              f"({elapsed():.0f} s to add)", flush=True)
        base = {"toplevel": toplevel, "closureInfo": str(info), "copyChannel": False,
                "installBootLoader": False}
        for fs_type in [f for f in args.only.split(",") if f]:
            store_image = fs_type in ("erofs", "squashfs")
            spec = dict(base, fsType=fs_type, onlyNixStore=store_image,
                        partitionTableType="none" if store_image else "efi")
            flags = (False, True) if FS_TYPES[fs_type].hard_links else (False,)
            for flag in flags:
                report(work, f"{fs_type} dedup={'on' if flag else 'off'}",
                       dict(spec, deduplicate=flag))
            if args.compression and store_image:
                for choice in FS_TYPES[fs_type].compressions:
                    report(work, f"{fs_type} compression={choice}", dict(spec, compression=choice))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmarks for make-disk-image. Prints figures; asserts nothing about time.

    python3 bench/bench.py [SECTION ...] [--size-mb 500] [--layouts legacy,efi,...]
                           [--only NAME,...]

Sections (all on one synthetic closure of --size-mb, made with Debian's Nix):
  prepare    wall time of `make-disk-image prepare` per partitionTableType (auto size)
  autosize   the engine's auto disk size against the smallest filesystem `mkfs.ext4 -d`
             fills, found by bisection over MiB
  mkfs       `mke2fs -d -` (tar stream) vs `mke2fs -d DIR` vs `-O ^metadata_csum` then
             `tune2fs -O metadata_csum` + `e2fsck -fyD`
  qcow2      `qemu-img convert` to qcow2: plain, zlib (-c), zstd (-c -o
             compression_type=zstd): time and size
  sizes      per partitionTableType: the reference's auto size, the smallest disk on
             which `mkfs.ext4 -d` succeeds (bisection), and `diskSize = "minimal"`
             (prepare run, free space read back), all with additionalSpace 0M
  filesystems  (not run by default: `bench.py filesystems`) each fsType's build
             (prepare + finish, auto size, no bootloader): ext4, btrfs, xfs on the efi
             layout, erofs and squashfs as onlyNixStore store images; time, image size and
             allocated bytes, ext4's the baseline, in the same run
  formats    (not run by default: `bench.py formats` or `--only formats`) every `format`
             as the engine's finish makes it (deterministic), time and size, beside the
             reference's `qemu-img convert -c` for qcow2-compressed, in the same run

Run as root (Debian's Nix is single-user here). Needs ~4x --size-mb of free space
under --workdir.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# Run as a script (python3 bench/bench.py) or a module (python3 -m bench.bench): the
# benchmarks import each other by their module names.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conversions import bench_formats, bench_qcow2  # noqa: E402
from disk_sizes import bench_autosize, bench_sizes  # noqa: E402
from engine_cli import engine, write_spec  # noqa: E402
from measuring import MIB, Measured, human, run, stopwatch  # noqa: E402
from mkfs_variants import SOURCE_DATE_EPOCH, bench_mkfs  # noqa: E402
from synthetic_closure import (  # noqa: E402
    Closure,
    add_closure,  # noqa: F401 - bench/at_scale.py imports it from here
    make_closure,
    stage_root,
)

LAYOUTS = ("legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none")
SECTIONS = ("prepare", "autosize", "mkfs", "qcow2", "sizes")
EXTRA_SECTIONS = ("formats", "filesystems")
FILESYSTEMS = ("ext4", "btrfs", "xfs", "erofs", "squashfs")


def bench_prepare(
    work: Path, closure: Closure, layouts: Sequence[str], repeat: int
) -> dict[str, Measured]:
    """Best of `repeat` runs per layout, after one untimed run reads the closure into
    the page cache (a Nix builder usually finds its inputs there too)."""
    results = {}
    warm = work / "warm-up"
    warm.mkdir()
    write_spec(warm / "spec.json", closure, "none")
    engine(
        "prepare",
        warm / "spec.json",
        "--out",
        warm / "out",
        cwd=warm,
        env={"out": str(warm / "out")},
    )
    shutil.rmtree(warm)
    for layout in layouts:
        build = work / f"prepare-{layout.replace('+', '-')}"
        out = build / "out"
        out.mkdir(parents=True)
        spec = write_spec(build / "spec.json", closure, layout)
        times = []
        for _ in range(repeat):
            (build / "nixos.raw").unlink(missing_ok=True)
            shutil.rmtree(build / "xchg", ignore_errors=True)
            with stopwatch() as elapsed:
                engine("prepare", spec, "--out", out, cwd=build, env={"out": str(out)})
            times.append(elapsed())
        seconds = min(times)
        size = (build / "nixos.raw").stat().st_size
        results[layout] = Measured(seconds, f"disk {human(size)}")
        print(f"  prepare {layout:<12} {seconds:6.1f} s   {human(size)}", flush=True)
        shutil.rmtree(build)
    return results


def bench_filesystems(work: Path, closure: Closure) -> None:
    """One full build (prepare, then finish) per fsType, as Nix runs them without a guest."""
    baseline: tuple[float, int] | None = None
    for fs_type in FILESYSTEMS:
        build = work / f"fs-{fs_type}"
        out = build / "out"
        build.mkdir()
        store_image = fs_type in ("erofs", "squashfs")
        spec = write_spec(build / "spec.json", closure, "none" if store_image else "efi",
                          fsType=fs_type, onlyNixStore=store_image)
        with stopwatch() as elapsed:
            for phase in ("prepare", "finish"):
                engine(phase, spec, "--out", out, cwd=build, env={"out": str(out)})
        seconds = elapsed()
        image = out / "nixos.img"
        size = image.stat().st_size
        used = image.stat().st_blocks * 512
        if baseline is None:
            baseline = (seconds, size)
        print(f"  {fs_type:<9} {seconds:6.1f} s ({seconds / baseline[0]:4.1f}x ext4)   "
              f"image {human(size)} ({size / baseline[1]:4.2f}x ext4), "
              f"{human(used)} allocated", flush=True)
        shutil.rmtree(build)



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="synthetic closure size")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument("section", nargs="*", help=f"same as --only: {', '.join(SECTIONS)}")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing; best shown")
    args = parser.parse_args(argv)
    sections = set(args.section or args.only.split(","))
    unknown = sections - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        parser.error(f"unknown section {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    layouts = [layout for layout in args.layouts.split(",") if layout]

    work = Path(tempfile.mkdtemp(prefix="mdi-bench-", dir=args.workdir))
    try:
        mke2fs_version = run(["mke2fs", "-V"]).stderr.decode().splitlines()[0]
        print(f"machine: {os.cpu_count()} cores; {mke2fs_version}")
        with stopwatch() as elapsed:
            closure = make_closure(work, args.size_mb * MIB)
        print(
            f"synthetic closure: {len(closure.store_paths)} store paths, {closure.entries:,} "
            f"entries, {human(closure.apparent_bytes)} apparent ({elapsed():.0f} s to make)",
            flush=True,
        )
        root = work / "root"
        stage_root(closure, root)
        fs_mib = int(closure.apparent_bytes * 1.6 // MIB) + 64
        if "prepare" in sections:
            print(f"prepare (wall time, best of {args.repeat}, auto size, additionalSpace 512M):")
            bench_prepare(work, closure, layouts, args.repeat)
        if "autosize" in sections:
            print("auto size:")
            bench_autosize(work, closure, root)
        if "mkfs" in sections:
            print(
                f"mke2fs, {fs_mib} MiB filesystem, SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}, "
                f"best of {args.repeat}:"
            )
            bench_mkfs(work, root, fs_mib, args.repeat)
        if "qcow2" in sections:
            print("qemu-img convert:")
            bench_qcow2(work, root, fs_mib)
        if "sizes" in sections:
            print('disk sizes, additionalSpace 0M: auto, smallest for mkfs.ext4 -d, "minimal":')
            bench_sizes(work, closure, root, layouts)
        if "filesystems" in sections:
            print("filesystems (prepare + finish, auto size, deterministic):")
            bench_filesystems(work, closure)
        if "formats" in sections:
            print("formats (make_disk_image.formats.convert, deterministic):")
            bench_formats(work, root, fs_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

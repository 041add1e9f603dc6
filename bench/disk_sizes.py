"""Disk and filesystem sizes: the engine's auto and "minimal" sizes against the smallest
filesystem `mkfs.ext4 -d` fills (found by bisection over MiB)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from engine_cli import REPO, engine, write_spec
from measuring import MIB, human, run, stopwatch
from synthetic_closure import Closure


def mkfs_fits(root: Path, img: Path, size_mib: int) -> bool:
    img.unlink(missing_ok=True)
    proc = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, img, f"{size_mib}M"],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def smallest_mkfs_size(root: Path, img: Path, upper_mib: int) -> int:
    """Bisect the smallest whole-MiB filesystem `mkfs.ext4 -d` fills without error."""
    low, high = 1, upper_mib  # low fails (or is untested), high fits
    if not mkfs_fits(root, img, high):
        raise RuntimeError(f"even {upper_mib} MiB is too small for {root}")
    while high - low > 1:
        mid = (low + high) // 2
        if mkfs_fits(root, img, mid):
            high = mid
        else:
            low = mid
    img.unlink(missing_ok=True)
    return high


def bench_autosize(work: Path, closure: Closure, root: Path) -> None:
    build = work / "autosize"
    build.mkdir()
    spec = write_spec(build / "spec.json", closure, "none", additionalSpace="0M")
    plan = json.loads(engine("plan", spec, cwd=build))
    fs_bytes = plan["root_size"]
    auto = plan.get("auto") or {}
    with stopwatch() as elapsed:
        smallest = smallest_mkfs_size(root, build / "probe.img", fs_bytes // MIB + 64)
    print(f"  engine auto size (none, additionalSpace 0M): {human(plan['disk_size'])}")
    if auto:
        print(
            f"    files {auto['files_blocks']} blocks, {auto['inodes']} inodes -> "
            f"closure {human(auto['closure_space_use'])} + fudge {human(auto['fudge'])}"
        )
    print(f"  smallest size mkfs.ext4 -d succeeds at:     {smallest:,} MiB  ({elapsed():.0f} s)")
    print(f"  ratio engine / smallest:                    {fs_bytes / (smallest * MIB):.2f}x")
    shutil.rmtree(build)


def smallest_disk(layout: str, fs_bytes: int) -> int:
    """The smallest whole-MiB disk whose root partition (the layout's geometry) holds
    a filesystem of `fs_bytes`."""
    sys.path.insert(0, str(REPO))
    from make_disk_image.layouts import plan_disk
    from make_disk_image.spec import parse_spec

    spec = parse_spec(
        {"toplevel": "/t", "closureInfo": "/c", "copyChannel": False, "partitionTableType": layout}
    )
    disk = fs_bytes // MIB
    while plan_disk(spec, disk * MIB, None).root_size < fs_bytes:
        disk += 1
    return disk * MIB


def superblock(image: Path, offset: int) -> dict[str, str]:
    target = f"{image}?offset={offset}" if offset else str(image)
    fields = {}
    for line in run(["tune2fs", "-l", target]).stdout.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def bench_sizes(work: Path, closure: Closure, root: Path, layouts: Sequence[str]) -> None:
    build = work / "sizes"
    build.mkdir()
    # Baseline in the same run: the smallest filesystem mkfs.ext4 -d fills (defaults).
    probe = write_spec(build / "probe.json", closure, "none", additionalSpace="0M")
    upper = json.loads(engine("plan", probe, cwd=build))["root_size"] // MIB + 64
    with stopwatch() as elapsed:
        smallest_fs = smallest_mkfs_size(root, build / "probe.img", upper) * MIB
    print(f"  smallest filesystem mkfs.ext4 -d fills: {human(smallest_fs)} ({elapsed():.0f} s)")
    print(
        f"  {'layout':<12} {'auto':>10} {'mkfs -d min':>12} {'minimal':>10} {'ratio':>6} "
        f"{'fs ratio':>8} {'free':>9} {'vs plan':>7} {'prepare auto':>13} {'minimal':>8}"
    )
    for layout in layouts:
        extra = {"installBootLoader": False} if layout == "none" else {}
        auto_spec = write_spec(build / "auto.json", closure, layout, additionalSpace="0M", **extra)
        auto = json.loads(engine("plan", auto_spec, cwd=build))["disk_size"]
        times = {}
        for kind, spec_extra in (("auto", {}), ("minimal", {"diskSize": "minimal"})):
            spec = write_spec(
                build / "spec.json", closure, layout, additionalSpace="0M", **extra, **spec_extra
            )
            (build / "nixos.raw").unlink(missing_ok=True)
            with stopwatch() as elapsed:
                engine("prepare", spec, "--out", build / "out", cwd=build,
                       env={"out": str(build / "out")})  # fmt: skip
            times[kind] = elapsed()
        # The handoff's plan is the "minimal" run's; finish makes its root filesystem.
        plan = json.loads((build / "xchg/make-disk-image.json").read_text())["plan"]
        shutil.rmtree(build / "out", ignore_errors=True)
        engine("finish", spec, "--out", build / "out", cwd=build,
               env={"out": str(build / "out")})  # fmt: skip
        image = build / "out/nixos.img"
        fsck = subprocess.run(
            ["e2fsck", "-fn", f"{image}?offset={plan['root_offset']}" if plan["root_offset"]
             else str(image)], capture_output=True, check=False,
        )  # fmt: skip
        sb = superblock(image, plan["root_offset"])
        free = int(sb["Free blocks"]) * 4096
        # Blocks free beyond what the plan expected (the trial runs without metadata_csum).
        off = int(sb["Free blocks"]) - plan["minimal"]["free_blocks"]
        floor = smallest_disk(layout, smallest_fs)
        tight = plan["disk_size"]
        clean = "" if fsck.returncode == 0 else f"  e2fsck -fn exit {fsck.returncode}"
        print(
            f"  {layout:<12} {auto // MIB:>6} MiB {floor // MIB:>8} MiB {tight // MIB:>6} MiB "
            f"{tight / floor:>5.2f}x {plan['root_size'] / smallest_fs:>7.2f}x {human(free):>9} "
            f"{off:>+7d} {times['auto']:>11.1f} s "
            f"{times['minimal']:>6.1f} s{clean}",
            flush=True,
        )
        if layout == layouts[-1]:
            print(f"  how ({layout}): {plan['minimal']['method']}")
    shutil.rmtree(build)

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
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
LAYOUTS = ("legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none")
SECTIONS = ("prepare", "autosize", "mkfs", "qcow2", "sizes")
EXTRA_SECTIONS = ("formats", "filesystems")
FILESYSTEMS = ("ext4", "btrfs", "xfs", "erofs", "squashfs")
# Fixed so runs are comparable and mke2fs output is reproducible.
FS_UUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
SOURCE_DATE_EPOCH = "1"


@dataclass(frozen=True)
class Closure:
    """A synthetic NixOS-like closure in the real Nix store, with a closureInfo dir."""

    toplevel: str
    store_paths: tuple[str, ...]
    closure_info: Path
    apparent_bytes: int
    entries: int


@dataclass(frozen=True)
class Measured:
    seconds: float
    detail: str = ""


def run(argv: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    end: list[float] = []
    yield lambda: (end[0] if end else time.monotonic()) - start
    end.append(time.monotonic())


def timed(argv: Sequence[str | Path], **kwargs: object) -> float:
    with stopwatch() as elapsed:
        run(argv, **kwargs)
    return elapsed()


def human(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


# --- the synthetic closure ---------------------------------------------------------


def _file_bytes(rng: random.Random, size: int) -> bytes:
    """Roughly like store contents: a third incompressible, the rest repetitive text."""
    noise = rng.randbytes(size // 3)
    words = b"lib/x86_64-linux-gnu /nix/store/ GLIBC_2.34 symbol_table .text .rodata "
    text = (words * (size // len(words) + 1))[: size - len(noise)]
    return noise + text


def _write_package(root: Path, rng: random.Random, budget: int) -> tuple[int, int]:
    """One package directory of about `budget` bytes; returns (bytes, entries)."""
    written = entries = 0
    for sub in ("bin", "lib", "share/doc", "share/man/man1"):
        (root / sub).mkdir(parents=True)
        entries += 1
    n = 0
    while written < budget:
        # Mostly small files, a few large ones: a log-normal with a ~6 KiB median.
        size = min(int(rng.lognormvariate(8.7, 1.6)), budget - written, 24 * MIB)
        size = max(size, 1)
        sub = rng.choice(("bin", "lib", "lib", "share/doc", "share/man/man1"))
        path = root / sub / f"f{n}"
        path.write_bytes(_file_bytes(rng, size))
        if sub == "bin":
            path.chmod(0o755)
        written += size
        entries += 1
        n += 1
        if n % 17 == 0:
            (root / sub / f"link{n}").symlink_to(f"f{n - 1}")
            entries += 1
    return written, entries


def make_closure(work: Path, total_bytes: int, packages: int = 40, seed: int = 1) -> Closure:
    """Add `packages` directories totalling ~total_bytes to the Nix store, plus a
    toplevel linking to them, and write a closureInfo directory (store-paths,
    registration) the way nixpkgs' closureInfo does."""
    rng = random.Random(seed)
    staging = work / "closure-src"
    dirs: list[Path] = []
    apparent = entries = 0
    for i in range(packages):
        pkg = staging / f"bench-pkg-{i:02d}"
        size, count = _write_package(pkg, rng, total_bytes // packages)
        apparent += size
        entries += count
        dirs.append(pkg)
    closure = add_closure(work, dirs, apparent, entries)
    shutil.rmtree(staging)
    return closure


def add_closure(work: Path, packages: Sequence[Path], apparent: int, entries: int) -> Closure:
    """`packages` (directories) added to the Nix store with a toplevel linking to them,
    and a closureInfo directory in `work`."""
    store_paths = [run(["nix-store", "--add", pkg]).stdout.decode().strip() for pkg in packages]
    top = work / "bench-toplevel"
    top.mkdir()
    (top / "init").write_text("#!/bin/sh\nexec /bin/sh\n")
    (top / "init").chmod(0o755)
    (top / "kernel-params").write_text("console=ttyS0\n")
    (top / "nixos-version").write_text("25.11pre-bench\n")
    (top / "sw").mkdir()
    for i, path in enumerate(store_paths):
        (top / "sw" / f"pkg{i:02d}").symlink_to(path)
    toplevel = run(["nix-store", "--add", top]).stdout.decode().strip()
    shutil.rmtree(top)
    store_paths.append(toplevel)
    info = work / "closure-info"
    info.mkdir()
    (info / "store-paths").write_text("".join(f"{p}\n" for p in sorted(store_paths)))
    (info / "registration").write_bytes(run(["nix-store", "--dump-db", *store_paths]).stdout)
    return Closure(toplevel, tuple(sorted(store_paths)), info, apparent, entries)


def stage_root(closure: Closure, dest: Path) -> None:
    """A root tree like the image's: the store paths under nix/store, plus the
    system profile. Used for the mke2fs comparisons."""
    (dest / "nix/store").mkdir(parents=True)
    for path in closure.store_paths:
        run(["cp", "-a", path, dest / "nix/store"])
    (dest / "nix/var/nix/profiles").mkdir(parents=True)
    (dest / "nix/var/nix/profiles/system-1-link").symlink_to(closure.toplevel)
    (dest / "nix/var/nix/profiles/system").symlink_to("system-1-link")
    (dest / "etc").mkdir()
    (dest / "etc/NIXOS").touch()


# --- sections --------------------------------------------------------------------------


def engine(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> bytes:
    argv = [sys.executable, "-m", "make_disk_image", *map(str, args)]
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = f"{REPO}:{full_env.get('PYTHONPATH', '')}"
    proc = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr.decode()[-2000:]}")
    return proc.stdout


def write_spec(path: Path, closure: Closure, layout: str, **extra: object) -> Path:
    spec = {
        "toplevel": closure.toplevel,
        "closureInfo": str(closure.closure_info),
        "partitionTableType": layout,
        "copyChannel": False,
        "installBootLoader": False,
        **extra,
    }
    path.write_text(json.dumps(spec, indent=2))
    return path


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
        plan = json.loads((build / "xchg/make-disk-image.json").read_text())
        image = build / "nixos.raw"
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


def bench_mkfs(work: Path, root: Path, size_mib: int, repeat: int) -> None:
    """Each variant `repeat` times, best time shown (page cache warm for all)."""
    img = work / "mkfs.img"
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    common = ["-q", "-F", "-t", "ext4", "-b", "4096", "-U", FS_UUID, "-E", f"hash_seed={FS_UUID}"]
    mkfs_dir = ["mke2fs", *common, "-d", str(root), str(img), f"{size_mib}M"]
    mkfs_stdin = ["mke2fs", *common, "-d", "-", str(img), f"{size_mib}M"]
    tar_path = work / "root.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")

    def from_dir() -> None:
        run(mkfs_dir, env=env)

    def from_tar_file() -> None:
        with open(tar_path, "rb") as stream:
            run(mkfs_stdin, stdin=stream, env=env)

    def from_tar_pipe() -> None:
        tar_cmd = subprocess.Popen(["tar", "-C", root, "-cf", "-", "."], stdout=subprocess.PIPE)
        run(mkfs_stdin, stdin=tar_cmd.stdout, env=env)
        tar_cmd.wait()

    def from_engine_stream() -> None:
        # What the engine does: tarstream (tarfile headers, sendfile bodies) into a pipe.
        import threading

        sys.path.insert(0, str(REPO))
        from make_disk_image.staging import Tree
        from make_disk_image.tarstream import write_tar

        tree = Tree()
        tree.add_host(root, "")
        entries = tree.ordered()
        read_fd, write_fd = os.pipe()

        def feed() -> None:
            try:
                write_tar(entries, write_fd)
            finally:
                os.close(write_fd)

        feeder = threading.Thread(target=feed)
        feeder.start()
        with os.fdopen(read_fd, "rb") as stdin:
            run(mkfs_stdin, stdin=stdin, env=env)
        feeder.join()

    def from_python_tar() -> None:
        # The engine's stream before tarstream: Python's tarfile copying file bodies.
        proc = subprocess.Popen(mkfs_stdin, stdin=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".")
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("mke2fs -d - failed")

    def without_csum_then_tune2fs() -> None:
        run(["mke2fs", *common, "-O", "^metadata_csum", "-d", root, img, f"{size_mib}M"], env=env)
        run(["tune2fs", "-O", "metadata_csum", img], env=env)
        subprocess.run(["e2fsck", "-fyD", img], capture_output=True, check=False, env=env)

    variants: dict[str, Callable[[], None]] = {
        "mke2fs -d DIR": from_dir,
        "mke2fs -d - < tar file": from_tar_file,
        "tar -c DIR | mke2fs -d -": from_tar_pipe,
        "engine's tarstream (sendfile) | mke2fs -d -": from_engine_stream,
        "python tarfile | mke2fs -d - (the engine's stream before)": from_python_tar,
        "mke2fs -O ^metadata_csum -d DIR; tune2fs -O metadata_csum; e2fsck -fyD": (
            without_csum_then_tune2fs
        ),
    }
    for name, variant in variants.items():
        times = []
        for _ in range(repeat):
            img.unlink(missing_ok=True)
            with stopwatch() as elapsed:
                variant()
            times.append(elapsed())
        verdict = subprocess.run(["e2fsck", "-fn", img], capture_output=True, check=False)
        fsck = "clean" if verdict.returncode == 0 else f"e2fsck -fn exit {verdict.returncode}"
        print(f"  {name:<72} {min(times):6.1f} s  ({fsck})", flush=True)
    img.unlink(missing_ok=True)
    tar_path.unlink()


def bench_qcow2(work: Path, root: Path, size_mib: int) -> None:
    raw = work / "convert.img"
    raw.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, raw, f"{size_mib}M"])
    used = int(run(["du", "-B1", raw]).stdout.split()[0])
    print(f"  source: raw {human(raw.stat().st_size)} ({human(used)} allocated)")
    variants = {
        "qcow2": [],
        "qcow2 zlib (-c)": ["-c"],
        "qcow2 zstd (-c -o compression_type=zstd)": ["-c", "-o", "compression_type=zstd"],
    }
    for name, extra in variants.items():
        out = work / "convert.qcow2"
        out.unlink(missing_ok=True)
        seconds = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *extra, raw, out])
        print(f"  {name:<42} {seconds:6.1f} s   {human(out.stat().st_size)}")
        out.unlink()
    raw.unlink()


def bench_formats(work: Path, root: Path, size_mib: int) -> None:
    sys.path.insert(0, str(REPO))
    from make_disk_image import formats, qcow2
    from make_disk_image.models import Format

    raw = work / "convert.img"
    raw.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, raw, f"{size_mib}M"])
    used = int(run(["du", "-B1", raw]).stdout.split()[0])
    print(f"  source: raw {human(raw.stat().st_size)} ({human(used)} allocated), "
          f"{formats.workers()} workers")
    out = work / "converted"
    reference = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, out])
    reference_bytes = out.read_bytes()
    print(f"  {'reference: qemu-img convert -c':<40} {reference:6.1f} s   "
          f"{human(out.stat().st_size)}")
    out.unlink()
    with stopwatch() as elapsed:
        qcow2.write(raw, out, workers=1)
    print(f"  {'qcow2-compressed, 1 worker':<40} {elapsed():6.1f} s   {human(out.stat().st_size)}"
          f"   ({elapsed() / reference:.2f}x the reference)")
    out.unlink()
    for fmt in Format:
        if fmt is Format.RAW:
            continue
        with stopwatch() as elapsed:
            formats.convert(fmt, raw, out, deterministic=True, step="bench",
                            name=f"nixos.{fmt.extension}")  # fmt: skip
        note = ""
        if fmt is Format.QCOW2_COMPRESSED:
            same = "identical bytes" if out.read_bytes() == reference_bytes else "OTHER BYTES"
            note = f"   ({elapsed() / reference:.2f}x the reference, {same})"
        print(f"  {fmt.value + ' (.' + fmt.extension + ')':<40} {elapsed():6.1f} s   "
              f"{human(out.stat().st_size)}{note}", flush=True)
        out.unlink()
    raw.unlink()


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

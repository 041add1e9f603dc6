#!/usr/bin/env python3
"""ext2/3/4 and large directories: one directory of N entries against the same N entries
spread over 100 directories, through the engine and through plain `mke2fs -d`.

    python3 bench/ext4dirs.py [--entries 40000] [--engine REPO] [--also-engine REPO]
                              [--repeat N] [--no-plain] [--closure-mb MB] [--workdir DIR]
                              [--fs-type ext4|ext3|ext2]

Each tree is one store path of N small files (or N/100 in each of 100 directories). It
prints, in one run, for each shape:
  - the engine's build as Nix runs it without a guest (prepare, then finish: the
    `--fs-type`, ext4 by default, no partition table, no bootloader), with the root
    filesystem lines of its log;
  - plain `mke2fs -d` of the store path; for ext4 with metadata_csum (mke2fs's default)
    and without it (the engine's first step);
and the ratios one directory / spread. `--engine REPO` runs another checkout's engine,
`--also-engine REPO` one more (an older commit: before and after in one run).
`--closure-mb MB` first builds a synthetic closure of that size (efi, or no partition
table for ext2 and ext3; no bootloader) through each engine: the common case, which
must not get slower.
Asserts nothing. Run as root (Debian's Nix is single-user here).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from engine_cli import write_spec  # noqa: E402
from measuring import MIB  # noqa: E402
from mkfs_variants import FS_UUID  # noqa: E402
from synthetic_closure import add_closure, make_closure  # noqa: E402

SPREAD_DIRS = 100
LOG_LINES = re.compile(r".*(?:mke2fs took|metadata checksums in|fill|indexed).*")


def make_tree(root: Path, entries: int, spread: bool) -> None:
    for n in range(entries):
        sub = root / (f"d{n % SPREAD_DIRS:03d}" if spread else "d")
        if n < SPREAD_DIRS or not spread:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"entry-{n:06d}.conf").write_text(f"value = {n}\n" * (1 + n % 7))


def engine_build(work: Path, spec: Path, engine_repo: Path) -> tuple[float, list[str]]:
    """prepare, then finish, as separate processes; wall time and the filesystem lines."""
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(engine_repo), TMPDIR=str(work))
    lines: list[str] = []
    started = time.monotonic()
    for phase in ("prepare", "finish"):
        proc = subprocess.run(
            [sys.executable, "-m", "make_disk_image", phase, str(spec), "--out", str(out)],
            cwd=work, env={**env, "out": str(out)}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"{phase} failed:\n{proc.stderr[-3000:]}")
        lines += [f"{phase}: {m.strip()}" for m in LOG_LINES.findall(proc.stderr)]
    return time.monotonic() - started, lines


def plain_mke2fs(tree: str, image: Path, size_kib: int, fs_type: str, *options: str) -> float:
    image.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(
        ["mke2fs", "-q", "-t", fs_type, "-b", "4096", "-F", "-U", FS_UUID, *options,
         "-d", tree, str(image), f"{size_kib}K"],
        check=True, env=dict(os.environ, SOURCE_DATE_EPOCH="1"),
    )  # fmt: skip
    seconds = time.monotonic() - started
    image.unlink()
    return seconds


def measure(work: Path, entries: int, spread: bool, engines: dict[str, Path], repeat: int,
            plain: bool, fs_type: str) -> dict[str, float]:
    shape = f"{SPREAD_DIRS} directories" if spread else "one directory"
    print(f"{entries:,} entries in {shape}, {fs_type}:", flush=True)
    package = work / "src" / ("bench-spread" if spread else "bench-flat")
    make_tree(package, entries, spread)
    closure = add_closure(work, [package], 0, entries)
    shutil.rmtree(package.parent)
    store_path = next(p for p in closure.store_paths if p != closure.toplevel)
    spec = write_spec(work / "spec.json", closure, "none", onlyNixStore=True, fsType=fs_type)
    figures = {}
    for name, repo in engines.items():
        runs = []
        for _ in range(repeat):
            seconds, lines = engine_build(work, spec, repo)
            runs.append(seconds)
            shutil.rmtree(work / "out", ignore_errors=True)
        figures[name] = min(runs)
        print(f"  {name + ' (prepare + finish)':<40} {min(runs):7.1f} s   (runs: "
              f"{', '.join(f'{t:.1f}' for t in runs)})")
        for line in lines:
            print(f"      {line}")
    if plain:
        size_kib = 1024 * 1024  # 1 GiB, sparse: ample for the files' blocks and inodes
        csum = plain_mke2fs(store_path, work / "plain.img", size_kib, fs_type)
        print(f"  {'mke2fs -t ' + fs_type + ' -d':<40} {csum:7.1f} s", flush=True)
        figures["mke2fs -d"] = csum
        if fs_type == "ext4":  # the others have no metadata_csum by default
            bare = plain_mke2fs(store_path, work / "plain.img", size_kib, fs_type,
                                "-O", "^metadata_csum")
            print(f"  {'mke2fs -d -O ^metadata_csum':<40} {bare:7.1f} s", flush=True)
            figures["mke2fs -d, no csum"] = bare
    for name in ("out", "closure-info", "spec.json", "xchg", "nixos.raw"):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return figures


def measure_closure(work: Path, size_mb: int, engines: dict[str, Path],
                    repeat: int, fs_type: str) -> None:
    """The common case: a synthetic closure of `size_mb` (bench.make_closure), efi (ext2,
    ext3: no table), no bootloader, through each engine; each engine's best, runs
    interleaved."""
    work.mkdir()
    closure = make_closure(work, size_mb * MIB, packages=80)
    print(f"synthetic closure: {len(closure.store_paths)} store paths, "
          f"{closure.entries:,} entries, {closure.apparent_bytes / MIB:,.0f} MiB", flush=True)
    # ext2 and ext3 only without a partition table, as in the reference.
    layout = "efi" if fs_type == "ext4" else "none"
    spec = write_spec(work / "spec.json", closure, layout, fsType=fs_type)
    runs: dict[str, list[float]] = {name: [] for name in engines}
    lines: dict[str, list[str]] = {}
    for _ in range(repeat):
        for name, repo in engines.items():
            seconds, lines[name] = engine_build(work, spec, repo)
            runs[name].append(seconds)
            for left in ("out", "xchg", "nixos.raw"):
                path = work / left
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for name, times in runs.items():
        print(f"  {name + ' (prepare + finish)':<40} {min(times):7.1f} s   (runs: "
              f"{', '.join(f'{t:.1f}' for t in times)})")
        for line in lines[name]:
            print(f"      {line}")
    shutil.rmtree(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=40000)
    parser.add_argument("--engine", type=Path, default=REPO,
                        help="the checkout whose make_disk_image runs (default: this one)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-plain", action="store_true",
                        help="only the engine (plain mke2fs -d of a large directory is slow)")
    parser.add_argument("--also-engine", type=Path, default=None,
                        help="another checkout's engine (an older commit), in the same run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="engine builds per shape; the best counts")
    parser.add_argument("--closure-mb", type=int, default=0,
                        help="also a synthetic closure of this size (the common case)")
    parser.add_argument("--fs-type", choices=("ext4", "ext3", "ext2"), default="ext4",
                        help="the image's fsType (ext2 and ext3: no partition table)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdi-ext4dirs-", dir=args.workdir))
    try:
        engine_rev = subprocess.run(["git", "-C", str(args.engine), "log", "-1", "--format=%h"],
                                    capture_output=True, text=True).stdout.strip()
        mke2fs = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True).stderr
        print(f"engine: {args.engine} ({engine_rev or 'not a git checkout'}); "
              f"{mke2fs.splitlines()[0]}")
        engines = {"engine": args.engine}
        if args.also_engine is not None:
            engines[f"engine at {args.also_engine}"] = args.also_engine
        if args.closure_mb:
            measure_closure(work / "closure", args.closure_mb, engines, args.repeat,
                            args.fs_type)
        flat = measure(work, args.entries, False, engines, args.repeat, not args.no_plain,
                       args.fs_type)
        spread = measure(work, args.entries, True, engines, args.repeat, not args.no_plain,
                         args.fs_type)
        print("one directory / spread:")
        for key in flat:
            print(f"  {key:<40} {flat[key] / spread[key]:6.2f}x")
        if not args.no_plain:
            print(f"engine / mke2fs -d: one directory "
                  f"{flat['engine'] / flat['mke2fs -d']:.2f}x, "
                  f"spread {spread['engine'] / spread['mke2fs -d']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

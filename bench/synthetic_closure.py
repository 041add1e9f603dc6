"""The synthetic NixOS-like closure the benchmarks build images of: real store paths
in the Nix store, a toplevel linking them, and a closureInfo directory."""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from measuring import MIB, run


@dataclass(frozen=True)
class Closure:
    """A synthetic NixOS-like closure in the real Nix store, with a closureInfo dir."""

    toplevel: str
    store_paths: tuple[str, ...]
    closure_info: Path
    apparent_bytes: int
    entries: int



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

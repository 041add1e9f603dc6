#!/usr/bin/env python3
"""image.repart definitions built by the engine and by systemd-repart, in the same run.

    python3 bench/repart.py [--size-mb 2000] [--packages 80] [--workdir /var/tmp]
                            [--layouts appliance,store] [--also-engine REPO] [--no-peer]

On one synthetic closure of --size-mb (bench.make_closure, in the Nix store), for
each layout (the definitions of tests/test_repart_compare.py: nixpkgs' appliance test
with XBOOTLDR and swap, root ext4 Minimize=guess; the verity-store layout without
verity, an erofs store Minimize=best), it times:
  - the engine: `python3 -m make_disk_image.repart SPEC --out DIR`, a fresh process as
    Nix runs it;
  - systemd-repart 254 as nixpkgs' builder runs it (`unshare --map-root-user fakeroot
    systemd-repart --size=auto --seed=... --empty=create`, one CopyFiles= per store
    path), from testsys.repart;
and prints both, their ratio, and the image sizes. `--also-engine REPO` also times
another checkout's engine (an older commit: before and after in one run); `--no-peer`
leaves systemd-repart out. Asserts nothing. Run as root; needs about 5x --size-mb free
under --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_closure import make_closure  # noqa: E402

from testsys import repart  # noqa: E402

SEED = "0867da16-f251-457d-a9e8-c31f9a3c220b"


def layouts(closure_info: Path, esp_file: Path) -> dict[str, dict[str, Any]]:
    esp = {"repartConfig": {"Type": "esp", "Format": "vfat", "SizeMinBytes": "96M"},
           "contents": {"/EFI/BOOT/README": {"source": str(esp_file)}}}
    return {
        "appliance": {"name": "appliance", "seed": SEED, "sectorSize": 512, "partitions": {
            "esp": esp,
            "root": {"repartConfig": {"Type": "root", "Format": "ext4", "Label": "root",
                                      "Minimize": "guess"}, "closureInfo": str(closure_info)},
            "swap": {"repartConfig": {"Type": "swap", "Format": "swap", "SizeMinBytes": "16M",
                                      "SizeMaxBytes": "16M"}},
            "xbootldr": {"repartConfig": {"Type": "xbootldr", "Format": "vfat",
                                          "SizeMinBytes": "32M"}},
        }},
        "store": {"name": "store", "seed": SEED, "sectorSize": 512, "partitions": {
            "00-esp": esp,
            "20-store": {"repartConfig": {"Type": "usr", "Format": "erofs", "Label": "store",
                                          "Minimize": "best"}, "closureInfo": str(closure_info),
                         "nixStorePrefix": "/"},
        }},
    }


def engine(spec: dict[str, Any], work: Path, repo: Path = REPO) -> tuple[float, int]:
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(repo), TMPDIR=str(work))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "make_disk_image.repart", spec_file, "--out", out],
                   check=True, env=env, stderr=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    size = (out / f"{spec['name']}.raw").stat().st_size
    shutil.rmtree(out)
    return seconds, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2000)
    parser.add_argument("--packages", type=int, default=80)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--layouts", default="appliance,store")
    parser.add_argument("--closure-info", type=Path,
                        help="an existing closureInfo (store-paths, registration) to use "
                        "instead of making a synthetic closure")
    parser.add_argument("--also-engine", type=Path, help="another checkout to time too")
    parser.add_argument("--no-peer", action="store_true", help="leave systemd-repart out")
    args = parser.parse_args()
    peer = repart.find_peer()
    if peer is None:
        print("no systemd-repart >= 254: run .ci/setup", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-repart-", dir=args.workdir))
    try:
        started = time.monotonic()
        if args.closure_info is not None:
            closure_info = args.closure_info
            paths = (closure_info / "store-paths").read_text().split()
            du = subprocess.run(["du", "-sbc", *paths], capture_output=True, text=True,
                                check=True).stdout.splitlines()[-1].split()[0]
            print(f"closure: {int(du) / 1e9:.2f} GB, {len(paths)} store paths (given)")
        else:
            closure = make_closure(work, args.size_mb * 1024 * 1024, args.packages)
            closure_info = closure.closure_info
            print(f"closure: {closure.apparent_bytes / 1e9:.2f} GB, {closure.entries} entries, "
                  f"{len(closure.store_paths)} store paths (made in "
                  f"{time.monotonic() - started:.0f} s)")
        esp_file = work / "README"
        esp_file.write_text("bench\n")
        print(f"{'layout':10} {'engine s':>9} {'repart s':>9} {'ratio':>6} "
              f"{'engine MiB':>11} {'repart MiB':>11}")
        for name, spec in layouts(closure_info, esp_file).items():
            if name not in args.layouts.split(","):
                continue
            (work / name).mkdir()
            if args.also_engine is not None:
                other, _ = engine(spec, work / name, args.also_engine)
                print(f"{name:10} {other:9.1f} ({args.also_engine})", flush=True)
            ours, our_size = engine(spec, work / name)
            if args.no_peer:
                print(f"{name:10} {ours:9.1f} {'-':>9} {'-':>6} {our_size / 2**20:11.0f}",
                      flush=True)
                continue
            theirs_image, theirs = repart.run_peer(peer, spec, work / name)
            their_size = theirs_image.stat().st_size
            theirs_image.unlink()
            print(f"{name:10} {ours:9.1f} {theirs:9.1f} {ours / theirs:6.2f} "
                  f"{our_size / 2**20:11.0f} {their_size / 2**20:11.0f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make-disk-image-repart SPEC.json --out DIR`: an `image.repart` image from the JSON the
NixOS module writes. Every failure is one `error:` line; exit 2 for bad definitions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from make_disk_image.process import StepError
from make_disk_image.repart import bootloader, build, spec
from make_disk_image.repart.definitions import DefinitionError
from make_disk_image.repart.placement import PlacementError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make-disk-image-repart", description=__doc__)
    p.add_argument("spec", type=Path, metavar="SPEC.json")
    p.add_argument("--out", type=Path, help="output directory (default: $out)")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new one in $TMPDIR)")
    p.add_argument("--stage", choices=("all", "image", "output"), default="all",
                   help="image: only the image, in --work; output: $out from that image "
                   "(a VM installs the boot loader in between); all: both")
    p.add_argument("--install-boot-loader", action="store_true",
                   help="inside the build VM: SPEC.json is the boot loader plan "
                   "(make_disk_image/repart/bootloader.py); installs it on /dev/vda")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    if args.install_boot_loader:
        bootloader.install(json.loads(args.spec.read_text()))
        return
    nix_out = os.environ.get("out")  # noqa: SIM112 - Nix names it so
    out = args.out or (Path(nix_out) if nix_out else None)
    if out is None:
        raise spec.SpecError("--out: give the output directory (or set $out)")
    loaded = spec.load(args.spec)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        build.build_to(loaded, out, args.work, stage=args.stage)
        return
    with tempfile.TemporaryDirectory(prefix="repart-") as work:
        build.build_to(loaded, out, Path(work))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="make-disk-image-repart: %(message)s", stream=sys.stderr)
    try:
        run(args)
    except (spec.SpecError, DefinitionError, PlacementError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StepError as exc:
        print("error: " + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 1
    return 0

"""The postVM phase: the image into $out, in the asked format, and Hydra's products file."""

from __future__ import annotations

import shutil
from pathlib import Path

from make_disk_image import process
from make_disk_image.models import Format, Spec

STEP = "finish"


def convert_command(spec: Spec, raw: Path, dest: Path) -> list[str]:
    fmt = spec.format
    argv = ["qemu-img", "convert", "-f", "raw", "-O", fmt.qemu_format]
    if fmt is Format.QCOW2_COMPRESSED:
        argv.append("-c")
    if fmt is Format.VPC:
        # Without it qemu-img rounds the size to a CHS geometry and the backup GPT is no
        # longer at the end of the disk.
        argv += ["-o", "force_size=on"]
    return [*argv, str(raw), str(dest)]


def finish(spec: Spec, build_dir: Path, out: Path) -> Path:
    raw = build_dir / "nixos.raw"
    if not raw.is_file():
        raise process.StepError(
            STEP, f"{raw} does not exist; run `make-disk-image prepare` (and the guest phase) first"
        )
    out.mkdir(parents=True, exist_ok=True)
    dest = out / spec.filename
    partial = out / f".{spec.filename}.partial"
    try:
        if spec.format is Format.RAW:
            shutil.move(raw, partial)
        else:
            process.run(convert_command(spec, raw, partial), step=STEP)
        partial.replace(dest)
        support = out / "nix-support"
        support.mkdir(exist_ok=True)
        with (support / "hydra-build-products").open("a") as products:
            products.write(f"file {spec.format.qemu_format}-image {dest}\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest

"""The postVM phase: the image into $out, in the asked format, and Hydra's products file."""

from __future__ import annotations

from pathlib import Path

from make_disk_image import formats, process
from make_disk_image.models import Spec

STEP = "finish"


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
        formats.convert(spec.format, raw, partial, deterministic=spec.deterministic, step=STEP,
                        name=spec.filename)
        partial.replace(dest)
        support = out / "nix-support"
        support.mkdir(exist_ok=True)
        with (support / "hydra-build-products").open("a") as products:
            products.write(formats.product_line(spec.format, dest))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest

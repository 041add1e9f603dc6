"""What nixpkgs' repart builder leaves in `$out`, and the engine's own additions.

- `<base>.raw` (`.raw.zst`/`.raw.xz` with `compression`), or the image in `format`;
- with `split`, `<base>.<SplitName>.raw` for each partition (SplitName defaults to the
  type's name, `-` leaves a partition out), compressed the same way;
- `repart-output.json`: repart's `--json` list, one object per partition;
- `nix-support/hydra-build-products`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from make_disk_image import formats, process
from make_disk_image.models import Format
from make_disk_image.repart.spec import COMPRESSIONS, RepartSpec

if TYPE_CHECKING:
    from make_disk_image.repart.build import Built, Partition

STEP = "repart output"


def split_name(p: Partition) -> str | None:
    name = p.definition.split_name
    if name == "-":
        return None
    if name is None:
        return p.definition.type.name
    return (name.replace("%t", p.definition.type.name).replace("%T", str(p.definition.type.uuid))
            .replace("%U", str(p.uuid)).replace("%n", str(p.number)).replace("%l", p.label))


def _compress(spec: RepartSpec, path: Path) -> Path:
    if not spec.compression.enable:
        return path
    algorithm, level = spec.compression.algorithm, spec.compression.level
    dest = path.with_name(path.name + COMPRESSIONS[algorithm])
    cores = formats.workers()
    if algorithm == "zstd":
        argv = ["zstd", "-q", "-f", "--no-progress", f"-T{cores}", f"-{level}", str(path), "-o",
                str(dest)]
    else:
        argv = ["xz", "-f", "-k", f"-T{cores}", f"-{level}", str(path)]
    process.run(argv, step=f"{STEP}: {algorithm}")
    path.unlink()
    return dest


def _split(spec: RepartSpec, built: Built, out: Path) -> dict[int, Path]:
    written = {}
    for p in built.partitions:
        name = split_name(p)
        if name is None or not spec.split:
            continue
        dest = out / f"{spec.image_file_basename}.{name}.raw"
        with built.image.open("rb") as src, dest.open("wb") as dst:
            src.seek(p.placed.offset)
            remaining = p.placed.size
            while remaining:
                chunk = src.read(min(remaining, 1 << 24))
                if chunk.count(0) == len(chunk):
                    dst.seek(len(chunk), 1)
                else:
                    dst.write(chunk)
                remaining -= len(chunk)
            dst.truncate(p.placed.size)
        written[p.number] = _compress(spec, dest)
    return written


def _record(built: Built, p: Partition, image: Path, split: Path | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": p.definition.type.name, "label": p.label, "uuid": str(p.uuid),
        "file": f"repart.d/{p.definition.name}.conf", "node": f"{image.name}{p.number}",
        "offset": p.placed.offset, "old_size": 0, "raw_size": p.placed.size,
        "old_padding": 0, "raw_padding": 0, "activity": "create",
    }
    if split is not None:
        entry["split_path"] = split.name
    return entry


def write(spec: RepartSpec, built: Built, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    splits = _split(spec, built, out)
    raw_name = f"{spec.image_file_basename}.raw"
    if spec.format == "raw":
        image = out / raw_name
        shutil.move(built.image, image)
        image = _compress(spec, image)
        product = "raw-image"
    else:
        fmt = Format(spec.format)
        image = out / f"{spec.image_file_basename}.{fmt.extension}"
        formats.convert(fmt, built.image, image, deterministic=True, step=f"{STEP}: {fmt.value}")
        product = fmt.product_type
    records = [_record(built, p, out / raw_name, splits.get(p.number))
               for p in built.partitions]
    (out / "repart-output.json").write_text(json.dumps(records, indent=8) + "\n")
    support = out / "nix-support"
    support.mkdir(exist_ok=True)
    (support / "hydra-build-products").write_text(f"file {product} {image}\n")
    return [image, *splits.values(), out / "repart-output.json"]

"""Building an `image.repart` image: every filesystem natively in its own file, the
partition table written directly, then the output nixpkgs' builder gives.

1. definitions, identities (from the seed) and labels;
2. the filesystems whose size decides the partition's (erofs, squashfs, Minimize=guess);
3. placement (placement.py), then the other filesystems at their partitions' sizes;
4. the image: the GPT and each filesystem's data copied to its offset (holes stay holes);
5. `$out`: `<base>.raw` (or `format`), split files, compression, repart-output.json,
   nix-support/hydra-build-products.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID, uuid4

from make_disk_image import nixdb
from make_disk_image.models import Entry
from make_disk_image.process import StepError
from make_disk_image.repart import (
    bootloader,
    definitions,
    format_table,
    gpt,
    output,
    placement,
    trees,
    uuids,
)
from make_disk_image.repart.definitions import Definition
from make_disk_image.repart.spec import RepartSpec
from make_disk_image.utils import copy_data_ranges

logger = logging.getLogger("make_disk_image")
STEP = "repart"
REGISTRATION_TIME = 1


@dataclass(frozen=True)
class Partition:
    """A definition with everything decided about it."""

    definition: Definition
    number: int
    uuid: UUID
    label: str
    fs_uuid: UUID
    placed: placement.Placed
    filesystem: Path | None  # its filesystem, in a file of its own


@dataclass(frozen=True)
class Built:
    image: Path  # the raw image, in the work directory
    disk_uuid: UUID
    sector_size: int
    partitions: tuple[Partition, ...]


def _entries(spec: RepartSpec, defs: Sequence[Definition], work: Path) -> list[list[Entry]]:
    found = []
    for d in defs:
        partition = spec.partitions[d.name]
        db = None
        if spec.nix_database and trees.takes_nix_database(d, partition):
            assert partition.closure_info is not None
            db = nixdb.make_db(Path(partition.closure_info), work / f"db-{d.name}",
                               registration_time=REGISTRATION_TIME)
        system = spec.boot_loader.toplevel if spec.boot_loader and \
            d.name == spec.root_partition else None
        found.append(trees.entries(d, partition, db, system) if d.holds_files else [])
    return found


def _job(spec: RepartSpec, d: Definition, entries: list[Entry], fs_uuid: UUID, label: str,
         work: Path, *, size: int = 0) -> format_table.Job:
    return format_table.Job(
        target=work / f"{d.name}.{d.format}", size=size, entries=entries, fs_uuid=fs_uuid,
        label=label, work=work, sector_size=spec.sector_size, step=f"{STEP}: {d.name}",
        extra=spec.mkfs_options.get(d.format or "", ()))


def _premade(spec: RepartSpec, d: Definition, entries: list[Entry], fs_uuid: UUID,
             label: str, work: Path) -> tuple[int | None, Path | None]:
    """(content size, filesystem file) for what must be made before placement."""
    fs = d.filesystem
    if fs is None:
        return None, None
    job = _job(spec, d, entries, fs_uuid, label, work)
    if fs.read_only:
        assert fs.make is not None  # _check_buildable
        fs.make(job)
        return job.target.stat().st_size, job.target
    if d.minimize == "guess":
        assert fs.guess is not None  # _check_buildable
        # repart's least size for the format holds for a guess too.
        return max(fs.guess(job), fs.minimum_size), None
    return None, None


def _make(spec: RepartSpec, p: Partition, entries: list[Entry], work: Path,
          image: Path) -> Path | None:
    """The partition's filesystem: in its own file (returned), or, for a format made in
    place, straight into `image` (None returned: nothing to copy)."""
    d = p.definition
    fs = d.filesystem
    if p.filesystem is not None or fs is None:
        return p.filesystem
    assert fs.make is not None  # _check_buildable
    job = _job(spec, d, entries, p.fs_uuid, p.label, work, size=p.placed.size)
    if fs.in_place:
        fs.make(replace(job, target=image, offset=p.placed.offset))
        return None
    fs.make(job)
    return job.target


def _check_buildable(defs: Sequence[Definition],
                     mkfs_options: Mapping[str, Sequence[str]]) -> None:
    """What repart accepts but this engine does not build (here): refused before any
    work."""
    for d in defs:
        fs = d.filesystem
        if fs is not None and fs.make is None:
            raise StepError(STEP, f"{definitions.option(d.name, 'Format')}: {d.format} is not "
                            "built by this engine yet; use " + ", ".join(format_table.built()))
        if d.minimize == "guess" and (fs is None or fs.guess is None):
            raise StepError(STEP, f"{definitions.option(d.name, 'Minimize')}: guess is built "
                            f"for {', '.join(format_table.guessed())} here; give this "
                            "partition a SizeMinBytes instead")
        problem = fs.guess_problem(mkfs_options.get(d.format or "", ())) \
            if d.minimize == "guess" and fs is not None else None
        if problem:
            raise StepError(STEP, f"{definitions.option(d.name, 'Minimize')}: {problem}")


def build(spec: RepartSpec, work: Path) -> Built:
    started = time.monotonic()
    defs = definitions.parse_all(
        {n: p.repart_config for n, p in spec.partitions.items()}, spec.architecture)
    _check_buildable(defs, spec.mkfs_options)
    seed = spec.seed or uuid4()
    part_uuids = uuids.partition_uuids(seed, defs)
    labels = uuids.labels(defs)
    fs_uuids = [uuids.filesystem_uuid(u) for u in part_uuids]
    all_entries = _entries(spec, defs, work)
    premade = [_premade(spec, d, e, f, label, work)
               for d, e, f, label in zip(defs, all_entries, fs_uuids, labels, strict=True)]
    layout = placement.place(defs, [size for size, _ in premade],
                             sector_size=spec.sector_size, disk_size=spec.image_size)
    parts = [Partition(d, i + 1, u, label, f, placed, made)
             for i, (d, u, label, f, placed, (_, made)) in enumerate(
                 zip(defs, part_uuids, labels, fs_uuids, layout.partitions, premade,
                     strict=True))]
    image = work / f"{spec.image_file_basename}.raw"
    image.unlink(missing_ok=True)
    with image.open("wb") as f:
        f.truncate(layout.size)
    disk = uuids.disk_uuid(seed)
    ss = spec.sector_size
    gpt.write(image, disk_uuid=disk, sector_size=ss, partitions=[
        gpt.GptPartition(p.definition.type.uuid, p.uuid, p.placed.offset // ss,
                         (p.placed.offset + p.placed.size) // ss - 1,
                         p.definition.type.attribute_bits, p.label) for p in parts])
    parts = [Partition(p.definition, p.number, p.uuid, p.label, p.fs_uuid, p.placed,
                       _make(spec, p, e, work, image))
             for p, e in zip(parts, all_entries, strict=True)]
    for p in parts:
        if p.filesystem is not None:
            length = min(p.filesystem.stat().st_size, p.placed.size)
            copy_data_ranges(p.filesystem, image, [(0, length)], step=f"{STEP}: {p.label}",
                             dest_offset=p.placed.offset)
    logger.info("[%s] image of %d bytes built in %.1f s", STEP, layout.size,
                time.monotonic() - started)
    return Built(image, disk, ss, tuple(parts))


STATE_FILE = "built.json"


def save(built: Built, work: Path) -> None:
    """What the output stage needs of a build, for a VM step between the two (Nix)."""
    state = {"image": str(built.image), "disk": str(built.disk_uuid),
             "sectorSize": built.sector_size,
             "partitions": [[p.definition.name, str(p.uuid), p.label, str(p.fs_uuid),
                             p.placed.offset, p.placed.size] for p in built.partitions]}
    (work / STATE_FILE).write_text(json.dumps(state))


def load(spec: RepartSpec, work: Path) -> Built:
    state = json.loads((work / STATE_FILE).read_text())
    defs = {d.name: d for d in definitions.parse_all(
        {n: p.repart_config for n, p in spec.partitions.items()}, spec.architecture)}
    parts = tuple(Partition(defs[name], i + 1, UUID(u), label, UUID(fs),
                            placement.Placed(offset, size), None)
                  for i, (name, u, label, fs, offset, size) in enumerate(state["partitions"]))
    return Built(Path(state["image"]), UUID(state["disk"]), state["sectorSize"], parts)


def build_to(spec: RepartSpec, out: Path, work: Path, *, stage: str = "all") -> list[Path]:
    """Build and write nixpkgs' outputs into `out`; returns the files written.

    `stage`: "image" builds the image in `work` only (then a VM installs the boot
    loader into it), "output" writes the outputs of that image, "all" does both and,
    for installBootLoader, runs the VM itself."""
    if stage == "output":
        return output.write(spec, load(spec, work), out)
    built = build(spec, work)
    for p in built.partitions:
        if p.filesystem is not None:
            p.filesystem.unlink(missing_ok=True)
    shutil.rmtree(work / "nix-db-root", ignore_errors=True)
    if stage == "image":
        save(built, work)
        return [built.image]
    if spec.boot_loader is not None:
        bootloader.install_in_vm(spec, built.image, work)
    return output.write(spec, built, out)

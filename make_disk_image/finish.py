"""The postVM phase, on the host: the image's filesystems, made once and natively.

From prepare's tree and the guest's record it makes the final image: a new sparse
file that keeps the build VM's disk outside the filesystems (partition tables and the
boot code GRUB writes there: MBR, the gap after it, the BIOS boot partition), the FAT
partitions made again and filled with what the bootloader left in them, and the root
filesystem made from prepare's tree with the guest's changes (filesystems/). The
result goes into $out in the asked format, with Hydra's products file.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from make_disk_image import formats, rootfs
from make_disk_image.dedup import unlink_orphans
from make_disk_image.filesystems import vfat as fat
from make_disk_image.handoff import (
    HANDOFF,
    RECORD,
    STORE_PREFIX,
    TREE,
    VM_DISK,
    read_handoff,
    read_record,
    read_tree,
    xchg_dir,
)
from make_disk_image.models import DiskPlan, Entry, Format, GuestRecord, Handoff, Spec
from make_disk_image.process import StepError
from make_disk_image.staging import check_sources, store_image_paths, tree_inputs
from make_disk_image.utils import allocate_file, copy_data_ranges

logger = logging.getLogger("make_disk_image")

STEP = "finish"


def load_record(handoff: Handoff, xchg: Path) -> GuestRecord:
    path = xchg / RECORD
    if not handoff.guest_mounts:
        return GuestRecord(mounted=False)
    if not path.is_file():
        raise StepError(
            STEP,
            f"{path} does not exist: the guest phase did not run or did not finish "
            "(`make-disk-image guest` inside the build VM); its output is above",
        )
    record = read_record(path, step=STEP)
    if not record.mounted:
        raise StepError(STEP, f"{path} says the guest did not mount the root filesystem")
    return record


def final_entries(prepared: list[Entry], record: GuestRecord) -> list[Entry]:
    """prepare's tree (in tree order) with what the guest left outside the store and in
    store paths it entered; every other store path as prepare staged it."""
    if not record.mounted:
        return prepared
    by_path = {entry.path: entry for entry in prepared}
    walked = set(record.store_walked)
    entries: list[Entry] = []
    for entry, origin in record.entries:
        if origin == "prepare":
            before = by_path.get(entry.path)
            if before is None or before.kind != "file":
                raise StepError(
                    STEP,
                    f"the guest record names /{entry.path} as prepare's file, but prepare's "
                    "tree has none; build again from prepare",
                )
            entry = replace(entry, source=before.source, data=before.data)
        entries.append(entry)
    kept: set[str] = set()
    for entry in prepared:
        if entry.path.startswith(STORE_PREFIX):
            name = entry.path[len(STORE_PREFIX):].split("/", 1)[0]
            if name not in walked:
                entries.append(entry)
                kept.add(entry.path)
    entries.sort(key=lambda e: e.path.split("/"))
    # A store path the guest changed may have held the inode of `deduplicate`'s links.
    return unlink_orphans(entries, kept) if walked else entries


def filesystem_ranges(plan: DiskPlan) -> list[tuple[int, int]]:
    """Byte ranges finish makes anew: the root filesystem and the FAT partitions."""
    if plan.table is None:
        return [(0, plan.disk_size)]
    return sorted(
        (p.offset_bytes, p.offset_bytes + p.size_bytes)
        for p in plan.partitions
        if p.filesystem or p.role == "root"
    )


def copy_outside(src: Path, dst: Path, plan: DiskPlan) -> int:
    """Copy `src` outside the filesystem ranges into `dst` (same size), holes kept."""
    keep: list[tuple[int, int]] = []
    position = 0
    for start, end in filesystem_ranges(plan):
        if start > position:
            keep.append((position, start))
        position = max(position, end)
    if position < plan.disk_size:
        keep.append((position, plan.disk_size))
    return copy_data_ranges(src, dst, keep, step=f"{STEP}: keep partition tables and boot code")


def make_image(spec: Spec, handoff: Handoff, record: GuestRecord, build_dir: Path,
               dest: Path) -> None:
    """The final raw image at `dest` (a new sparse file)."""
    plan = handoff.plan
    xchg = xchg_dir(build_dir)
    vm_disk = build_dir / VM_DISK
    if not vm_disk.is_file():
        raise StepError(STEP, f"{vm_disk} does not exist; run `make-disk-image prepare` first")
    started = time.monotonic()
    check_sources(spec)
    if handoff.store_image_paths:
        make_from_store(spec, handoff, dest)
        return
    # prepare's tree, as it described it: the closure is not walked a second time.
    entries = final_entries(read_tree(xchg / TREE, tree_inputs(spec), step=STEP), record)
    logger.info("finish: %d entries (%d from the guest's record) in %.1f s", len(entries),
                len(record.entries), time.monotonic() - started)
    allocate_file(dest, plan.disk_size, step=STEP)
    fat_parts = fat.partitions(plan)
    fat.make_all(dest, fat_parts, handoff.fat_volume_ids, deterministic=spec.deterministic,
                 disk_size=plan.disk_size)
    copied = copy_outside(vm_disk, dest, plan)
    logger.info("finish: kept %d bytes of partition tables and boot code", copied)
    for part in fat_parts:
        if not record.mounted:
            continue
        mark = time.monotonic()
        content = fat.extract(vm_disk, part, build_dir / f"fat-{part.number}",
                              deterministic=spec.deterministic)
        fat.fill(dest, part, content, deterministic=spec.deterministic)
        fat.remove_copy(content)
        logger.info("finish: %s partition: %d files in %.1f s", part.label,
                    len(content.files), time.monotonic() - mark)
    # Checksums after the fill: the same filesystem features in a third of mke2fs' time.
    rootfs.make_root_filesystem(
        dest, plan, entries, uuid=handoff.root_uuid, deterministic=spec.deterministic,
        checksums=False, step="finish: root filesystem",
    )
    rootfs.tune(dest, plan, deterministic=spec.deterministic, step="finish: root filesystem")


def make_from_store(spec: Spec, handoff: Handoff, dest: Path) -> None:
    """A store image its tool reads from the store paths themselves: prepare staged no
    tree, so the spec's store paths must be those prepare saw."""
    if store_image_paths(spec) != handoff.store_image_paths:
        raise StepError(
            STEP,
            "prepare handed over a store image of other store paths (another closureInfo "
            "or argument); run prepare and finish with the same spec",
        )
    rootfs.make_from_store(dest, handoff.plan, handoff.store_image_paths,
                           uuid=handoff.root_uuid, deterministic=spec.deterministic,
                           step="finish: root filesystem")


def finish(spec: Spec, build_dir: Path, out: Path) -> Path:
    """The image in $out with its line in nix-support/hydra-build-products, or, on any
    failure, neither: both are written under temporary names and renamed into place
    last, the image first; what this run put in $out is removed again on failure."""
    started = time.monotonic()
    xchg = xchg_dir(build_dir)
    handoff = read_handoff(xchg / HANDOFF, step=STEP)
    record = load_record(handoff, xchg)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / spec.filename
    partial = out / f".{spec.filename}.partial"
    raw = partial if spec.format is Format.RAW else build_dir / "image.raw"
    support = out / "nix-support"
    support_made = not support.exists()
    products = support / "hydra-build-products"
    products_partial = support / ".hydra-build-products.partial"
    placed = False
    try:
        make_image(spec, handoff, record, build_dir, raw)
        if spec.format is not Format.RAW:
            mark = time.monotonic()
            formats.convert(spec.format, raw, partial, deterministic=spec.deterministic,
                            step=STEP, name=spec.filename)
            raw.unlink(missing_ok=True)
            logger.info("finish: converted to %s in %.1f s", spec.format.value,
                        time.monotonic() - mark)
        try:
            support.mkdir(exist_ok=True)
            # Appended to, as the reference's `>>` does (postVM may add lines after).
            before = products.read_text() if products.exists() else ""
            products_partial.write_text(before + formats.product_line(spec.format, dest))
            partial.replace(dest)
            placed = True
            products_partial.replace(products)
        except OSError as exc:
            raise StepError(
                STEP, f"writing the image and {products} into $out: "
                f"{exc.strerror or exc} ({exc.filename or out})"
            ) from exc
    except BaseException:
        for leftover_file in (partial, products_partial, *([dest] if placed else [])):
            leftover_file.unlink(missing_ok=True)
        if raw != partial:
            raw.unlink(missing_ok=True)
        if support_made:
            with contextlib.suppress(OSError):
                support.rmdir()  # only if empty
        for leftover in build_dir.glob("fat-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    logger.info("finish: done in %.1f s", time.monotonic() - started)
    return dest

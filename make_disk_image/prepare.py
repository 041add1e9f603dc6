"""The preVM phase: unprivileged, in the build directory, no loop devices or mounts.

It validates the spec, describes the root filesystem once (staging.Tree), sizes the
disk and writes the partition table into ./nixos.raw. When the guest has work (the
bootloader, owners by name), it also makes that disk's filesystems for the build VM:
the FAT partitions empty, the root filesystem with everything but the store paths'
contents (each store path is a mount point the guest binds the shared store over), so
the closure is written once per build, by finish. The Handoff in xchg/ tells the guest and finish
what both must agree on.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid as uuid_module
from dataclasses import replace
from pathlib import Path

from make_disk_image import nixdb, rootfs
from make_disk_image.compression import check_available
from make_disk_image.dedup import check_links_kept
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.filesystems import vfat as fat
from make_disk_image.handoff import (
    EFI_VARS,
    HANDOFF,
    NIX_DB_DIR,
    RECORD,
    STORE_PREFIX,
    TREE,
    VM_DISK,
    write_handoff,
    write_tree,
    xchg_dir,
)
from make_disk_image.layouts import check_fits, plan_disk
from make_disk_image.minimal import minimal_plan
from make_disk_image.models import MIB, DiskPlan, Entry, Handoff, Spec
from make_disk_image.process import StepError
from make_disk_image.sizing import auto_disk_size
from make_disk_image.staging import (
    Tree,
    build_tree,
    check_sources,
    store_image_paths,
    tree_inputs,
)
from make_disk_image.utils import allocate_file

logger = logging.getLogger("make_disk_image")



def guest_mounts_root(spec: Spec) -> bool:
    """The guest has work only for the bootloader or owners given by name."""
    if spec.onlyNixStore:
        return False
    return spec.installBootLoader or any(c.needs_guest_chown for c in spec.contents)


def compute_plan(spec: Spec, tree: Tree | None, *, tool_sized: bool = False) -> DiskPlan:
    """The disk plan; an automatic size needs the tree (None: size it from diskSize only).

    `tool_sized`: a store image its tool reads from the store itself
    (staging.store_image_paths); an automatic size is then the size the tool makes.
    """
    if tool_sized and spec.diskSize is None:
        return replace(plan_disk(spec, MIB, None), size_source="tool")
    if spec.diskSize is not None:
        plan = plan_disk(spec, spec.diskSize * MIB, None)
    elif spec.diskSizeMinimal:
        if tree is None:
            raise ValueError("a minimal disk size needs the image tree")
        plan = minimal_plan(spec, tree)
    else:
        if tree is None:
            raise ValueError("an automatic disk size needs the image tree")
        auto = auto_disk_size(spec, tree.usage())
        plan = plan_disk(spec, auto.disk_image_size, auto)
        # The reference reserves 34 sectors for the backup GPT, but parted ends "100%"
        # on a MiB boundary, taking up to a MiB more: with a small additionalSpace its
        # root partition can come out smaller than the filesystem needs, or empty.
        # Grow by whole MiB until it holds it; otherwise the size is the reference's.
        while plan.root_size < auto.filesystem_size_needed:
            grown = replace(
                auto,
                disk_image_size=plan.disk_size + MIB,
                alignment_growth=auto.alignment_growth + MIB,
            )
            auto = grown
            plan = plan_disk(spec, auto.disk_image_size, auto)
    problems = check_fits(plan)
    if problems:
        raise StepError(
            "disk plan",
            f"diskSize {plan.disk_size // MIB} MiB is too small for the {spec.partitionTableType}"
            f" layout (bootSize {spec.bootSize} bytes): "
            + "; ".join(problems)
            + '; raise diskSize or use "auto"',
        )
    return plan


def nix_db_files(spec: Spec, xchg: Path) -> dict[str, Path]:
    """The image's Nix database files, made in xchg/nix-db (finish reads them again)."""
    if spec.onlyNixStore:
        return {}
    return nixdb.make_db(
        Path(spec.closureInfo),
        xchg / NIX_DB_DIR,
        registration_time=rootfs.SOURCE_DATE_EPOCH if spec.deterministic else None,
    )


def log_auto_size(plan: DiskPlan) -> None:
    if plan.auto is None:
        return
    a = plan.auto
    logger.info("Automatic disk size...")
    logger.info("  Closure space use: %d bytes", a.closure_space_use)
    logger.info("  fudge: %d bytes", a.fudge)
    logger.info("  Filesystem size needed: %d bytes", a.filesystem_size_needed)
    logger.info("  Additional space: %d bytes", a.additional_space)
    logger.info("  Disk image size: %d bytes", a.disk_image_size)


def root_uuid(spec: Spec, plan: DiskPlan) -> str | None:
    """One UUID for both root filesystems: rootFSUID when deterministic, else random.

    rootFSUID is null by default for the filesystems other than ext4 (the reference's
    default): deterministic, they take rootGPUID's value instead, so that two builds
    still agree.
    """
    if not FILESYSTEMS[plan.fs_type].takes_uuid:
        return None
    if spec.deterministic:
        return plan.root_fs_uuid or spec.rootGPUID.lower()
    return str(uuid_module.uuid4())


def split_store(ordered: list[Entry]) -> tuple[tuple[Entry, ...], tuple[str, ...]]:
    """Entries outside the store's paths, relative to xchg where sources lie in it, and
    the store paths' names: what the guest compares the root filesystem against."""
    outside: list[Entry] = []
    names: list[str] = []
    for entry in ordered:
        if entry.path.startswith(STORE_PREFIX):
            rest = entry.path[len(STORE_PREFIX):]
            if "/" not in rest:
                names.append(rest)
            continue
        outside.append(entry)
    return tuple(outside), tuple(names)


def relative_to_xchg(entries: tuple[Entry, ...], xchg: Path) -> tuple[Entry, ...]:
    """Sources prepare made in xchg/ (the Nix database) as paths the guest can resolve."""
    out = []
    prefix = f"{xchg}/"
    for entry in entries:
        if entry.source is not None and entry.source.startswith(prefix):
            entry = replace(entry, source=entry.source[len(prefix):])
        out.append(entry)
    return tuple(out)


def new_handoff(spec: Spec, plan: DiskPlan, xchg: Path, db_files: dict[str, Path],
                ordered: list[Entry], store_image: tuple[str, ...]) -> Handoff:
    """What prepare decided, for the guest and finish (its disk not yet made)."""
    mounts = guest_mounts_root(spec)
    handoff = Handoff(
        plan=plan,
        root_uuid=root_uuid(spec, plan),
        fat_volume_ids={
            p.number: fat.volume_id(p, deterministic=spec.deterministic)
            for p in fat.partitions(plan)
        },
        guest_mounts=mounts,
        nix_db_files={name: str(path.relative_to(xchg)) for name, path in db_files.items()},
        store_image_paths=store_image,
    )
    if mounts:
        outside, names = split_store(ordered)
        handoff = replace(
            handoff, outside_store=relative_to_xchg(outside, xchg), store_names=names
        )
    return handoff


def prepare(spec: Spec, build_dir: Path, out: Path) -> Handoff:
    """Write ./nixos.raw for the build VM, the handoff in xchg/, and $out/efi-vars.fd."""
    from make_disk_image.partitioning import write_partition_table

    started = time.monotonic()
    xchg = xchg_dir(build_dir)
    image = build_dir / VM_DISK
    partial = build_dir / f"{VM_DISK}.partial"
    efi_vars = out / EFI_VARS
    created_out = not out.exists()
    created_xchg = not xchg.exists()
    try:
        check_sources(spec)
        check_available(spec.fsType, spec.compression)
        check_links_kept(spec.fsType, spec.deduplicate)
        xchg.mkdir(parents=True, exist_ok=True)
        (xchg / RECORD).unlink(missing_ok=True)
        db_files = nix_db_files(spec, xchg)
        direct = store_image_paths(spec)
        tree = None if direct else build_tree(spec, db_files)
        # Parents first, siblings by name: sorted once.
        ordered = [] if tree is None else tree.ordered()
        plan = compute_plan(spec, tree, tool_sized=bool(direct))
        log_auto_size(plan)
        handoff = new_handoff(spec, plan, xchg, db_files, ordered, direct)
        mounts = handoff.guest_mounts
        if tree is None:
            logger.info("prepare: the %s image is read by %s from the %d store paths "
                        "themselves: no tree staged", plan.fs_type,
                        FILESYSTEMS[plan.fs_type].tool, len(direct))
        else:
            logger.info("prepare: staged %d entries in %.1f s", len(tree.entries),
                        time.monotonic() - started)
        partial.unlink(missing_ok=True)
        allocate_file(partial, plan.disk_size, step="disk image")
        fat_parts = fat.partitions(plan) if mounts else []
        # FAT first, while the file ends where each partition ends (fat.make_all).
        fat.make_all(partial, fat_parts, handoff.fat_volume_ids, deterministic=True,
                     disk_size=plan.disk_size)
        write_partition_table(partial, plan)
        if mounts:
            make_vm_root(partial, handoff, ordered)
            if not FILESYSTEMS[plan.fs_type].fixed_times:
                handoff = replace(handoff, prepared_until_ns=time.time_ns())
        partial.replace(image)
        if tree is None:
            (xchg / TREE).unlink(missing_ok=True)  # finish must not read an older one
        else:
            write_tree(xchg, ordered, tree_inputs(spec))
        write_handoff(xchg, handoff)
        out.mkdir(parents=True, exist_ok=True)
        if spec.touchEFIVars:
            # The guest's firmware writes its boot entries into this copy (pflash unit 1),
            # so it must exist before the VM starts.
            assert spec.efiVariables is not None
            shutil.copyfile(spec.efiVariables, efi_vars)
            efi_vars.chmod(0o644)
    except BaseException:
        partial.unlink(missing_ok=True)
        image.unlink(missing_ok=True)
        if created_xchg:
            shutil.rmtree(xchg, ignore_errors=True)
        else:
            (xchg / HANDOFF).unlink(missing_ok=True)
            (xchg / TREE).unlink(missing_ok=True)
            shutil.rmtree(xchg / NIX_DB_DIR, ignore_errors=True)
        efi_vars.unlink(missing_ok=True)
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    logger.info("prepare: done in %.1f s", time.monotonic() - started)
    return handoff


def vm_root_entries(ordered: list[Entry]) -> list[Entry]:
    """The build VM's root filesystem: everything but the store paths' contents.

    Each store path is only its mount point (an empty directory, or an empty file for a
    store path that is a file; a symlink as it is): the guest binds the store the VM
    shares over it (make_disk_image.storebind), so this filesystem's size and the time
    to make it do not grow with the closure. finish makes the image's own filesystem,
    once, from the whole tree.
    """
    out: list[Entry] = []
    for entry in ordered:
        if not entry.path.startswith(STORE_PREFIX):
            out.append(entry)
        elif "/" not in entry.path[len(STORE_PREFIX):]:
            if entry.kind == "file":
                entry = replace(entry, source=None, data=b"", size=0)
            out.append(entry)
    return out


def make_vm_root(image: Path, handoff: Handoff, ordered: list[Entry]) -> None:
    """The build VM's root filesystem, without the closure's bytes.

    It always has deterministic times (every inode at 1 s): the guest tells what it
    changed by its times (make_disk_image.changes).
    """
    plan = handoff.plan
    rootfs.make_root_filesystem(
        image,
        plan,
        vm_root_entries(ordered),
        uuid=handoff.root_uuid,
        deterministic=True,
        checksums=False,
        step="prepare: root filesystem for the build VM",
    )

"""The preVM phase: unprivileged, in the build directory, no loop devices or mounts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from make_disk_image import nixdb, repack, rootfs
from make_disk_image.layouts import check_fits, plan_disk
from make_disk_image.minimal import minimal_plan
from make_disk_image.models import MIB, DiskPlan, Spec
from make_disk_image.process import StepError
from make_disk_image.sizing import auto_disk_size
from make_disk_image.staging import Tree, build_tree, check_sources

logger = logging.getLogger("make_disk_image")

HANDOFF = Path("xchg") / "make-disk-image.json"
# Where prepare keeps its Nix database files for the guest's repack, next to HANDOFF.
NIX_DB_DIR = "nix-db"
# The handoff key naming them: {file name: path relative to the handoff's directory}.
NIX_DB_KEY = "nix_db_files"
EFI_VARS = "efi-vars.fd"


def compute_plan(spec: Spec, tree: Tree | None) -> DiskPlan:
    """The disk plan; an automatic size needs the tree (None: size it from diskSize only)."""
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


def stage(spec: Spec, work: Path) -> Tree:
    return stage_with_db(spec, work)[0]


def stage_with_db(spec: Spec, work: Path) -> tuple[Tree, dict[str, Path]]:
    """The image tree and the Nix database files it holds (made under `work`)."""
    check_sources(spec)
    db_files: dict[str, Path] = {}
    if not spec.onlyNixStore:
        db_files = nixdb.make_db(
            Path(spec.closureInfo),
            work,
            registration_time=rootfs.SOURCE_DATE_EPOCH if spec.deterministic else None,
        )
    return build_tree(spec, db_files), db_files


def keep_db_files(db_files: dict[str, Path], xchg: Path) -> dict[str, str]:
    """Copy the Nix database files next to the handoff, for the guest's repack.

    The guest makes the root filesystem again from prepare's tree, which holds these
    files; they are made in a temporary directory the guest cannot see.
    """
    dest = xchg / NIX_DB_DIR
    dest.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name, source in sorted(db_files.items()):
        shutil.copyfile(source, dest / name)
        kept[name] = f"{NIX_DB_DIR}/{name}"
    return kept


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


def prepare(spec: Spec, build_dir: Path, out: Path) -> DiskPlan:
    """Write ./nixos.raw (table + filled root fs), the guest's handoff file, efi-vars.fd.

    When the guest will repack the root filesystem (make_disk_image.repack), the handoff
    also names copies of the Nix database files in xchg/nix-db.
    """
    from make_disk_image.partitioning import write_partition_table

    image = build_dir / "nixos.raw"
    partial = build_dir / "nixos.raw.partial"
    handoff = build_dir / HANDOFF
    efi_vars = out / EFI_VARS
    created_out = not out.exists()
    kept_db: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="mdi-", dir=build_dir) as tmp:
            tree, db_files = stage_with_db(spec, Path(tmp))
            if repack.repacks(spec):
                kept_db = keep_db_files(db_files, handoff.parent)
            plan = compute_plan(spec, tree)
            log_auto_size(plan)
            partial.unlink(missing_ok=True)
            with partial.open("wb") as fh:
                fh.truncate(plan.disk_size)
            write_partition_table(partial, plan)
            rootfs.make_root_filesystem(
                partial, plan, tree.ordered(), deterministic=spec.deterministic
            )
        os.replace(partial, image)
        handoff.parent.mkdir(parents=True, exist_ok=True)
        data = plan.to_json()
        if kept_db:
            data[NIX_DB_KEY] = kept_db
        handoff.write_text(json.dumps(data, indent=2) + "\n")
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
        shutil.rmtree(handoff.parent / NIX_DB_DIR, ignore_errors=True)
        efi_vars.unlink(missing_ok=True)
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return plan

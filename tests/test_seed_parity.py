"""The engine against the reference's own shell logic, run side by side.

tests/seed_oracle.sh is the reference's sizing arithmetic and its exact truncate /
parted / sgdisk / partx / mkfs.ext4 commands; tests/seed_stage.sh is its staging
(contents with rsync, the Nix database, nixos-install's store copy) done with Debian's
Nix. Each test makes an image both ways and compares them through `sfdisk --json`,
the raw partition-table sectors and the ext4 superblock (`debugfs -R stats`): starts,
sizes, types, names, flags, GUIDs, disk size, root filesystem geometry.

Equality is expected everywhere except the engine's documented, deliberate fixes:
  1. legacy+gpt: the root partition's GUID is rootGPUID (the reference addresses a
     partition 3 that does not exist, so sgdisk leaves partition 2 at 970C694F-...);
  2. MBR tables (legacy, legacy+boot) get a deterministic disk signature (the
     reference's is random);
  3. the disk GUID is 97FD5997-F390-0B4A-A3F8-D106C1723AEA: not a difference, it is
     what sgdisk makes of the reference's 31-digit literal; checked on both sides.
The comparisons apply fixes 1 and 2 to the reference's image (sgdisk/sfdisk), then
demand byte equality of the partition-table sectors.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SEED_BIOS_GRUB_END, Closure, Engine, base_spec, world_readable_dir

TESTS = Path(__file__).resolve().parent
ORACLE = TESTS / "seed_oracle.sh"
SEED_STAGE = TESTS / "seed_stage.sh"

MIB = 1024 * 1024
SECTOR = 512
DEFAULT_ROOT_GPUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
OTHER_ROOT_GPUID = "2D7A5C1E-94B3-4F60-8C2D-6B1E0F9A7C35"
SEED_DISK_GUID = "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
GPT_HEADER_SECTORS = 34  # protective MBR, header, 32 sectors of entries
GPT_BACKUP_SECTORS = 33  # entries + backup header at the end of the disk

ALL_LAYOUTS = ("legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none")
BOOT_SIZE_LAYOUTS = ("legacy+boot", "efi", "efixbootldr", "hybrid")
MBR_LAYOUTS = ("legacy", "legacy+boot")
# 7M: the ESP (from 8MiB) would be empty; 99M: efixbootldr's BOOT (from 100MiB) would be;
# 100M: BOOT is 1 MiB; 300000K, 0.3G and 268435457 (bytes) are not whole MiBs.
BOOT_SIZES = ("256M", "512M", "100M", "1G", "300000K", "0.3G", "268435457", "7M", "99M")

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("parted", "sgdisk", "sfdisk", "rsync", "debugfs")),
    reason="needs parted, gdisk, fdisk, rsync and e2fsprogs (run .ci/setup)",
)


# --- running both sides ------------------------------------------------------------------


@dataclass(frozen=True)
class OracleRun:
    ok: bool
    values: dict[str, int]
    image: Path
    stderr: str


def run_oracle(
    tmp: Path,
    layout: str,
    disk_size: int | str,
    boot_size: str = "256M",
    additional_space: str = "512M",
    *,
    deterministic: bool = True,
    root_gpuid: str = DEFAULT_ROOT_GPUID,
    staging: Path | None = None,
    mkfs: bool = True,
    name: str = "seed",
) -> OracleRun:
    image = tmp / f"{name}.img"
    image.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            "bash",
            str(ORACLE),
            layout,
            str(disk_size),
            boot_size,
            additional_space,
            "true" if deterministic else "false",
            root_gpuid,
            str(staging or tmp),
            str(image),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SEED_ORACLE_MKFS": "1" if mkfs else "0",
             "SEED_ORACLE_BIOS_GRUB_END": SEED_BIOS_GRUB_END},
        timeout=300,
    )
    values = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if value.isdigit():
            values[key] = int(value)
    return OracleRun(proc.returncode == 0, values, image, proc.stderr)


def sfdisk_json(image: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    ).stdout
    table: dict[str, Any] = json.loads(out)["partitiontable"]
    table.pop("device", None)
    for part in table["partitions"]:
        part.pop("node", None)
    return table


def engine_spec(closure: Closure, layout: str, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"copyChannel": False, "installBootLoader": False}
    settings.update(overrides)
    return base_spec(closure, partitionTableType=layout, **settings)


def engine_plan(engine: Engine, spec: dict[str, Any]) -> dict[str, Any] | None:
    """`make-disk-image plan`'s JSON, or None when the engine refuses the spec."""
    run = engine.run("plan", spec, name="plan")
    if run.returncode != 0:
        assert run.stderr.strip(), "a failing plan must say why on stderr"
        return None
    plan: dict[str, Any] = json.loads(run.stdout)
    return plan


def plan_as_sfdisk(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's partitions in sfdisk --json's terms."""
    parts = []
    for p in plan["partitions"]:
        entry: dict[str, Any] = {"start": p["start"], "size": p["end"] - p["start"] + 1}
        if plan["table"] == "gpt":
            entry["type"] = p["type"].upper()
            entry["name"] = p["name"]
            if p["guid"] is not None:
                entry["uuid"] = p["guid"].upper()
        else:
            entry["type"] = p["type"].lower()
            entry["bootable"] = "boot" in p["flags"]
        parts.append(entry)
    return parts


def oracle_as_compared(table: dict[str, Any], deterministic: bool) -> list[dict[str, Any]]:
    parts = []
    for p in table["partitions"]:
        entry = {"start": p["start"], "size": p["size"], "type": p["type"]}
        if table["label"] == "gpt":
            entry["name"] = p.get("name")
            if deterministic:
                entry["uuid"] = p["uuid"]
        else:
            entry["bootable"] = bool(p.get("bootable", False))
        parts.append(entry)
    return parts


def apply_deliberate_fixes(seed: OracleRun, layout: str, plan: dict[str, Any]) -> None:
    """Fixes 1 and 2 of the module docstring, applied to the reference's image."""
    if layout == "legacy+gpt" and plan["disk_guid"] is not None:
        root_guid = plan["partitions"][1]["guid"]
        subprocess.run(
            ["sgdisk", f"--partition-guid=2:{root_guid}", str(seed.image)],
            capture_output=True,
            check=True,
        )
    if layout in MBR_LAYOUTS and plan["mbr_disk_id"] is not None:
        subprocess.run(
            ["sfdisk", "--disk-id", str(seed.image), plan["mbr_disk_id"]],
            capture_output=True,
            check=True,
        )


def table_sectors(image: Path, table: str | None) -> bytes:
    """The sectors a partition table occupies: MBR sector 0, or both GPT copies."""
    with image.open("rb") as f:
        if table is None:
            return b""
        if table == "msdos":
            return f.read(SECTOR)
        head = f.read(GPT_HEADER_SECTORS * SECTOR)
        f.seek(-GPT_BACKUP_SECTORS * SECTOR, 2)
        return head + f.read()


def ext4_geometry(image: Path, offset: int) -> dict[str, str]:
    # debugfs reads IMAGE?offset=N (dumpe2fs 1.47.2 does not resolve that form).
    out = subprocess.run(
        ["debugfs", "-R", "stats", f"{image}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    keep = (
        "Filesystem volume name",
        "Block count",
        "Block size",
        "Inode count",
        "Reserved block count",
        "Blocks per group",
        "Inodes per group",
        "Inode size",
        "Filesystem features",
    )
    return {k: fields[k] for k in keep}


def extract_tree(image: Path, offset: int, dest: Path) -> None:
    """The root filesystem's tree, as the engine wrote it, minus mke2fs's lost+found."""
    dest.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump / {dest}", f"{image}?offset={offset}"],
        capture_output=True,
        check=True,
    )
    # debugfs exits 0 whatever happens; an empty tree would make the sizes agree vacuously.
    assert (dest / "nix" / "store").is_dir(), f"debugfs rdump extracted nothing from {image}"
    shutil.rmtree(dest / "lost+found")


def seed_stage(
    build_dir: Path,
    closure: Closure,
    spec: dict[str, Any],
    contents: list[tuple[str, str, str]],
) -> None:
    channel = closure.channel if spec.get("copyChannel", True) else "-"
    args = [a for entry in contents for a in entry]
    subprocess.run(
        ["bash", str(SEED_STAGE), str(build_dir), closure.toplevel, spec["closureInfo"], channel]
        + args,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """Root's working directory for the reference's side."""
    return tmp_path


@pytest.fixture
def readable_sources() -> Iterator[Path]:
    """A directory for contents sources that the unprivileged engine can read."""
    path = world_readable_dir("mdi-parity-contents-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the partition plan, fixed sizes: `plan` against the reference's parted ------------


def iec_bytes(size: str) -> int:
    """numfmt --from=iec, for choosing disk sizes around a bootSize."""
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    if size[-1] in units:
        return math.ceil(float(size[:-1]) * units[size[-1]])
    return int(size)


# Known differences from the reference's parted, found by these tests (see the report of
# the parity work); strict, so each marker must go when the engine matches.
#
# A GPT disk of 3 MiB (legacy+gpt; auto size with additionalSpace 0M and a tiny closure):
# parted's "100%" only reaches half a percent (30 sectors) back from the disk end, not
# the 33 sectors the backup GPT takes, so the reference's parted fails ("The closest
# location we can manage is ..."); the engine ends the root partition at the last usable
# sector and succeeds.
# With a fixed size the engine refuses too; with an auto size it grows the disk by whole
# MiB until the root partition holds the filesystem (README, difference 9).
GPT_TINY_DISK_GAP = pytest.mark.xfail(
    strict=True, reason="reference fails on GPT disks under ~3.3 MiB; the engine's auto size grows"
)
def known_gap(layout: str, disk_mib: int, reserved_mib: int) -> list[pytest.MarkDecorator]:
    # Both gaps above are closed for fixed sizes: layouts._rest_end follows parted's
    # fallback to the last usable sector, and refuses where parted fails.
    return []


def fixed_cases() -> Iterator[Any]:
    for layout in ALL_LAYOUTS:
        boot_sizes = BOOT_SIZES if layout in BOOT_SIZE_LAYOUTS else ("256M",)
        for boot_size in boot_sizes:
            boot_end_mib = math.ceil((iec_bytes(boot_size) + 1) / MIB)
            reserved_mib = boot_end_mib if layout in BOOT_SIZE_LAYOUTS else 2
            # Tight (a root of 0-3 MiB, where parted's "100%" tolerance reaches past the
            # last MiB boundary, or the boundary falls before the start); for the default
            # bootSize also an odd and a large size.
            tight = (reserved_mib + 1, reserved_mib + 3)
            sizes = (*tight, 1537, 8193) if boot_size == "256M" else tight
            for disk_mib in sizes:
                yield pytest.param(
                    layout,
                    boot_size,
                    disk_mib,
                    id=f"{layout}-{boot_size}-{disk_mib}",
                    marks=known_gap(layout, disk_mib, reserved_mib),
                )


@pytest.mark.parametrize(("layout", "boot_size", "disk_mib"), list(fixed_cases()))
def test_plan_matches_reference_partitioning(
    layout: str, boot_size: str, disk_mib: int, closure: Closure, engine: Engine, scratch: Path
) -> None:
    seed = run_oracle(scratch, layout, disk_mib, boot_size, mkfs=False)
    plan = engine_plan(engine, engine_spec(closure, layout, diskSize=disk_mib, bootSize=boot_size))
    if not seed.ok:
        # Where the reference's parted gives up, the engine must refuse too.
        assert plan is None, f"the reference fails here but the engine plans:\n{seed.stderr}"
        return
    assert plan is not None, "the reference partitions this disk; the engine refuses it"
    assert plan["disk_size"] == seed.values["DISK_SIZE"] == disk_mib * MIB
    assert plan["boot_size"] == seed.values["BOOT_SIZE"]
    if layout == "none":
        assert plan["partitions"] == []
        return
    table = sfdisk_json(seed.image)
    expected = oracle_as_compared(table, deterministic=True)
    if layout == "legacy+gpt":
        # Fix 1: the reference's root partition keeps 970C694F-...; the engine's is rootGPUID.
        assert expected[1]["uuid"] == "970C694F-AFD0-4B99-B750-CDB7A329AB6F"
        expected[1]["uuid"] = DEFAULT_ROOT_GPUID
    assert plan_as_sfdisk(plan) == expected
    root = plan["partitions"][plan["root_number"] - 1]
    assert (root["start"], root["end"] - root["start"] + 1) == (
        seed.values["ROOT_START"],
        seed.values["ROOT_SECTORS"],
    )
    assert (plan["root_offset"], plan["root_size"]) == (
        seed.values["ROOT_START"] * SECTOR,
        seed.values["ROOT_SECTORS"] * SECTOR,
    )
    if table["label"] == "gpt":
        assert table["id"] == SEED_DISK_GUID == plan["disk_guid"]


# --- prepare: the written image against the reference's, byte for byte -------------------


@dataclass(frozen=True)
class PrepareCase:
    layout: str
    disk_size: int | str = "auto"
    boot_size: str = "256M"
    deterministic: bool = True
    root_gpuid: str = DEFAULT_ROOT_GPUID
    additional_space: str = "512M"

    @property
    def id(self) -> str:
        flags = "" if self.deterministic else "-random"
        guid = "" if self.root_gpuid == DEFAULT_ROOT_GPUID else "-guid"
        extra = "" if self.additional_space == "512M" else f"-add{self.additional_space}"
        return f"{self.layout}-{self.disk_size}-{self.boot_size}{flags}{guid}{extra}"


PREPARE_CASES = [
    *(PrepareCase(layout) for layout in ALL_LAYOUTS),
    *(PrepareCase(layout, disk_size=1100) for layout in ALL_LAYOUTS),
    PrepareCase("legacy+gpt", root_gpuid=OTHER_ROOT_GPUID),
    PrepareCase("efi", disk_size=1100, root_gpuid=OTHER_ROOT_GPUID),
    PrepareCase("efixbootldr", boot_size="100M"),
    PrepareCase("hybrid", disk_size=2049, boot_size="512M"),
    PrepareCase("legacy+boot", boot_size="1G"),
    PrepareCase("efi", disk_size=1100, deterministic=False),
    PrepareCase("legacy", deterministic=False),
    PrepareCase("legacy", additional_space="0M"),
    PrepareCase("hybrid", additional_space="1000000"),
]

PREPARE_PARAMS = [
    *(pytest.param(case, id=case.id) for case in PREPARE_CASES),
    pytest.param(
        PrepareCase("legacy+gpt", additional_space="0M"),
        id="legacy+gpt-auto-256M-add0M",
        marks=GPT_TINY_DISK_GAP,
    ),
    pytest.param(PrepareCase("efi", additional_space="1.3K"), id="efi-auto-256M-add1.3K"),
]


@pytest.mark.parametrize("case", PREPARE_PARAMS)
def test_prepared_image_matches_reference(
    case: PrepareCase, closure: Closure, engine: Engine, scratch: Path
) -> None:
    overrides: dict[str, Any] = {
        "bootSize": case.boot_size,
        "deterministic": case.deterministic,
        "rootGPUID": case.root_gpuid,
        "additionalSpace": case.additional_space,
    }
    if case.disk_size != "auto":
        overrides["diskSize"] = case.disk_size
    spec = engine_spec(closure, case.layout, **overrides)
    run = engine.build_without_vm(spec, name="prepare")

    staging = None
    if case.disk_size == "auto":
        # The same tree, measured the reference's way (du/find), from the engine's image
        # (from one with room to spare when this spec is refused: the tree is the same).
        if run.returncode == 0:
            tree_source = run
        else:
            tree_source = engine.build_without_vm({**spec, "additionalSpace": "512M"})
            assert tree_source.returncode == 0, tree_source.stderr
        staging = scratch / "tree"
        tree_plan = json.loads(
            (tree_source.build_dir / "xchg/make-disk-image.json").read_text())["plan"]
        extract_tree(tree_source.out / "nixos.img", tree_plan["root_offset"], staging)
    seed = run_oracle(
        scratch,
        case.layout,
        case.disk_size,
        case.boot_size,
        case.additional_space,
        deterministic=case.deterministic,
        root_gpuid=case.root_gpuid,
        staging=staging,
    )
    if not seed.ok or run.returncode != 0:
        # Where one side refuses, the other must too.
        assert (seed.ok, run.returncode == 0) == (False, False), (
            f"reference ok: {seed.ok}, engine ok: {run.returncode == 0}\n"
            f"reference: {seed.stderr[-1500:]}\nengine: {run.stderr[-1500:]}"
        )
        assert "error:" in run.stderr
        return
    image = run.out / "nixos.img"
    plan = json.loads((run.build_dir / "xchg" / "make-disk-image.json").read_text())["plan"]

    # The auto size: the reference's arithmetic on the engine's tree gives its size.
    if case.disk_size == "auto":
        auto = plan["auto"]
        assert (auto["files_blocks"], auto["inodes"]) == (
            seed.values["CLOSURE_BLOCKS"],
            seed.values["NUM_INODES"],
        ), "du --apparent-size --count-links / find | wc -l of the image's tree"
        assert auto["closure_space_use"] == seed.values["DISK_USAGE"]
        assert auto["fudge"] == seed.values["FUDGE"]
        assert auto["filesystem_size_needed"] == seed.values["REQUIRED_FILESYSTEM_SPACE"]
        assert auto["additional_space"] == seed.values["ADDITIONAL_SPACE"]
    assert image.stat().st_size == plan["disk_size"] == seed.values["DISK_SIZE"]

    # The partition table, through sfdisk and byte for byte (after fixes 1 and 2).
    if plan["table"] is not None:
        seed_table = sfdisk_json(seed.image)
        engine_table = sfdisk_json(image)
        if case.deterministic:
            if plan["table"] == "gpt":
                assert seed_table["id"] == engine_table["id"] == SEED_DISK_GUID
            else:
                assert engine_table["id"] == plan["mbr_disk_id"]
            apply_deliberate_fixes(seed, case.layout, plan)
            assert sfdisk_json(image) == sfdisk_json(seed.image)
            assert table_sectors(image, plan["table"]) == table_sectors(seed.image, plan["table"])
        else:
            # Without deterministic, identities are random on both sides; the rest agrees.
            for table in (seed_table, engine_table):
                table.pop("id")
                for part in table["partitions"]:
                    part.pop("uuid", None)
            assert engine_table == seed_table
            assert engine_table != {}, "compared nothing"

    # The root filesystem's geometry: same size, label, inode layout, features.
    assert ext4_geometry(image, plan["root_offset"]) == ext4_geometry(
        seed.image, seed.values.get("ROOT_START", 0) * SECTOR
    )


# --- the auto size against the reference's own staging -----------------------------------


def seed_measure(directory: Path) -> tuple[int, int]:
    """(du blocks of non-directories, find | wc -l) exactly as the reference counts."""
    script = (
        "find . ! -type d -print0 | du --files0-from=- --apparent-size --count-links "
        "--block-size 4096 | cut -f1"
    )
    blocks = subprocess.run(
        ["bash", "-c", script], cwd=directory, capture_output=True, text=True, check=True
    ).stdout.split()
    inodes = subprocess.run(
        ["bash", "-c", "find . | wc -l"], cwd=directory, capture_output=True, text=True, check=True
    ).stdout
    return sum(int(b) for b in blocks), int(inodes)


# The engine sizes the tree it writes; the reference measures its whole build directory.
# Found by this test (figures in the report of the parity work): the reference also counts
# state/ (its NIX_STATE_DIR: a second copy of the Nix database plus Nix's 8 MiB
# db/reserved file), root/'s own 8 MiB db/reserved, nixos-install's gcroots/temproots/
# locks, xchg/saved-env and $HOME/.nix-defexpr, so its auto size is larger (17 MiB for
# this closure; more with a NixOS-sized database). Whether to match it or keep it as a
# deliberate difference is the lead's call; until then this is a known failure, and
# strict: the day the engine matches, the marker must go.
REFERENCE_STAGING_GAP = pytest.mark.xfail(
    strict=True,
    reason="engine auto size omits what the reference measures outside the image tree",
)


@REFERENCE_STAGING_GAP
@pytest.mark.parametrize("layout", ["efi", "legacy"])
def test_auto_size_matches_reference_staging(
    layout: str, closure: Closure, engine: Engine, scratch: Path, readable_sources: Path
) -> None:
    """The reference measures its build directory after nixos-install, not the image's
    tree: see seed_stage.sh. Its auto size is what the engine's must equal."""
    source = readable_sources / "data"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("a" * 5000)
    (source / "sub" / "b").write_text("b")
    note = readable_sources / "note"
    note.write_text("note\n")
    for path in [source, *source.rglob("*"), note]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    contents = [(str(source), "/srv/data", "750"), (str(note), "/etc/note", "")]
    spec = engine_spec(
        closure,
        layout,
        copyChannel=True,
        contents=[
            {"source": str(source), "target": "/srv/data", "mode": "750"},
            {"source": str(note), "target": "/etc/note"},
        ],
    )
    plan = engine_plan(engine, spec)
    assert plan is not None
    build_dir = scratch / "seed-build"
    seed_stage(build_dir, closure, spec, contents)
    seed = run_oracle(scratch, layout, "auto", staging=build_dir, mkfs=False)
    assert seed.ok, seed.stderr
    auto = plan["auto"]
    engine_figures = {
        "CLOSURE_BLOCKS": auto["files_blocks"],
        "NUM_INODES": auto["inodes"],
        "DISK_SIZE": plan["disk_size"],
    }
    seed_figures = {k: seed.values[k] for k in engine_figures}
    breakdown = {p.name: seed_measure(p) for p in sorted(build_dir.iterdir())}
    assert engine_figures == seed_figures, (
        f"engine {engine_figures} vs reference {seed_figures}; the reference's `find .` "
        f"runs in its build directory: (blocks, inodes) per entry {breakdown}"
    )

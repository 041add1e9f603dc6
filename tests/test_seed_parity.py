"""Images the engine prepares against the reference's, as recorded facts.

tests/reference_facts.json holds what the reference made of each case below: its disk
size and auto-size figures, its partition table (`sfdisk --json` and the hash of the
table's sectors) and its root ext4's geometry; its `note` says how they were measured.
Each test builds the image with the engine (prepare and finish, unprivileged) and checks
it with sfdisk and debugfs against those facts. Equality is expected everywhere except
the engine's two deliberate differences (tests/reference_facts.py), and, strictly
marked, two known gaps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import reference_facts as facts

from tests.conftest import Closure, Engine, base_spec, world_readable_dir

DEFAULT_ROOT_GPUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
OTHER_ROOT_GPUID = "2D7A5C1E-94B3-4F60-8C2D-6B1E0F9A7C35"
ALL_LAYOUTS = ("legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none")
AUTO_FIGURES = ("files_blocks", "inodes", "closure_space_use", "fudge",
                "filesystem_size_needed", "additional_space")

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("sfdisk", "debugfs")),
    reason="needs fdisk and e2fsprogs (run .ci/setup)",
)


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


# A GPT disk of 3 MiB (legacy+gpt; auto size with additionalSpace 0M and a tiny closure):
# parted's "100%" only reaches half a percent (30 sectors) back from the disk end, not
# the 33 sectors the backup GPT takes, so the reference's parted fails ("The closest
# location we can manage is ..."); the engine's auto size grows the disk by whole MiB
# until the root partition holds the filesystem (README, difference 9). Strict: the
# marker must go the day the engine matches.
GPT_TINY_DISK_GAP = pytest.mark.xfail(
    strict=True, reason="reference fails on GPT disks under ~3.3 MiB; the engine's auto size grows"
)


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


def check_auto_size(plan: dict[str, Any], fact: dict[str, Any]) -> None:
    auto = plan["auto"]
    recorded = fact["auto"]
    tree = (auto["files_blocks"], auto["inodes"])
    assert tree == (recorded["files_blocks"], recorded["inodes"]), (
        "the image's tree is not the one the reference's figures were measured on "
        f"(4 KiB blocks, inodes): {tree}, recorded {recorded}"
    )
    assert {k: auto[k] for k in AUTO_FIGURES} == recorded


def check_table(image: Path, plan: dict[str, Any], case: PrepareCase,
                fact: dict[str, Any]) -> None:
    root = plan["partitions"][plan["root_number"] - 1]
    assert (plan["root_number"], root["start"], root["end"] - root["start"] + 1) == (
        fact["root"]["number"], fact["root"]["start"], fact["root"]["sectors"])
    got = facts.sfdisk_json(image)
    if not case.deterministic:
        # Identities are random on both sides; the rest agrees.
        differences = facts.table_differences(got, fact["table"], identities=False)
        assert not differences, "\n".join(differences)
        return
    root_guid = plan["partitions"][1]["guid"] if case.layout == "legacy+gpt" else None
    expected = facts.expected_table(fact, case.layout, root_guid, plan["mbr_disk_id"])
    differences = facts.table_differences(got, expected)
    assert not differences, "\n".join(differences)
    assert facts.table_sha256(image, plan["table"]) == fact["table_sha256"]


@pytest.mark.parametrize("case", PREPARE_PARAMS)
def test_prepared_image_matches_reference(case: PrepareCase, closure: Closure,
                                          engine: Engine) -> None:
    fact = facts.FACTS["images"][case.id]
    overrides: dict[str, Any] = {
        "bootSize": case.boot_size,
        "deterministic": case.deterministic,
        "rootGPUID": case.root_gpuid,
        "additionalSpace": case.additional_space,
    }
    if case.disk_size != "auto":
        overrides["diskSize"] = case.disk_size
    run = engine.build_without_vm(engine_spec(closure, case.layout, **overrides),
                                  name="prepare")
    if fact.get("refused"):
        # Where the reference refuses, the engine must too.
        assert run.returncode != 0, f"the reference fails: {fact['reference_error']}"
        assert "error:" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-3000:]
    image = run.out / "nixos.img"
    plan = json.loads((run.build_dir / "xchg" / "make-disk-image.json").read_text())["plan"]
    if case.disk_size == "auto":
        check_auto_size(plan, fact)
    assert image.stat().st_size == plan["disk_size"] == fact["disk_size"]
    if plan["table"] is not None:
        check_table(image, plan, case, fact)
    # The root filesystem's geometry: same size, label, inode layout, features.
    geometry = ext4_geometry(image, plan["root_offset"])
    expected = facts.ext4_expected(fact)
    assert {k: geometry[k] for k in expected} == expected


# --- the auto size against the reference's own staging -----------------------------------


@pytest.fixture
def readable_sources() -> Iterator[Path]:
    """A directory for contents sources that the unprivileged engine can read."""
    path = world_readable_dir("mdi-parity-contents-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The engine sizes the tree it writes; the reference measures its whole build directory
# (staging in reference_facts.json): also state/ (its NIX_STATE_DIR: a second copy of the
# Nix database plus Nix's 8 MiB db/reserved file), root/'s own 8 MiB db/reserved,
# nixos-install's gcroots/temproots/locks, xchg/saved-env and $HOME/.nix-defexpr, so its
# auto size is larger (17 MiB for this closure; more with a NixOS-sized database). Whether
# to match it or keep it as a deliberate difference is the lead's call; until then this
# is a known failure, and strict: the day the engine matches, the marker must go.
REFERENCE_STAGING_GAP = pytest.mark.xfail(
    strict=True,
    reason="engine auto size omits what the reference measures outside the image tree",
)


@REFERENCE_STAGING_GAP
@pytest.mark.parametrize("layout", ["efi", "legacy"])
def test_auto_size_matches_reference_staging(
    layout: str, closure: Closure, engine: Engine, readable_sources: Path
) -> None:
    """The reference measures its build directory after nixos-install, not the image's
    tree. Its auto size is what the engine's must equal."""
    source = readable_sources / "data"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("a" * 5000)
    (source / "sub" / "b").write_text("b")
    note = readable_sources / "note"
    note.write_text("note\n")
    for path in [source, *source.rglob("*"), note]:
        path.chmod(0o755 if path.is_dir() else 0o644)
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
    reference = facts.FACTS["staging"][layout]
    engine_figures = {"files_blocks": plan["auto"]["files_blocks"],
                      "inodes": plan["auto"]["inodes"], "disk_size": plan["disk_size"]}
    reference_figures = {"files_blocks": reference["auto"]["files_blocks"],
                         "inodes": reference["auto"]["inodes"],
                         "disk_size": reference["disk_size"]}
    assert engine_figures == reference_figures, (
        f"engine {engine_figures} vs reference {reference_figures}; the reference's "
        f"`find .` runs in its build directory: (blocks, inodes) per entry "
        f"{reference['build_dir_usage']}"
    )

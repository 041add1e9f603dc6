"""nixos-tests/ cannot run here (no nixpkgs), but every file in it must parse.

`nix-instantiate --parse` also resolves variable names, so an undefined variable or a
misspelt binding fails here too, not only a syntax error. layouts.nix, plain data, is
evaluated and held against the engine's layouts: the guests check what the engine makes.
Then every test is evaluated against tests/nixos_tests_stub.nix, a stub of the handful
of nixpkgs names the tests use (runNixOSTest returns the test module, makeDiskImage its
arguments): argument names, the node module, the image arguments and the expectations
must hang together, and the test script must compile. What only real nixpkgs can tell
(NixOS option types, the boot itself) is for `nix build .#checks...` (docs/nixos-tests.md).
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX

NIXOS_TESTS = Path(__file__).resolve().parent.parent / "nixos-tests"
NIX_FILES = sorted(NIXOS_TESTS.rglob("*.nix"))

pytestmark = NEEDS_NIX


def parse_error(path: Path) -> str | None:
    """The parser's complaint about `path`, or None when it parses."""
    proc = subprocess.run(
        ["nix-instantiate", "--parse", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return None
    return proc.stderr.strip() or f"exit status {proc.returncode}"


def test_there_is_a_test_per_bootable_layout() -> None:
    names = {p.name for p in NIX_FILES}
    assert {"default.nix", "make-image-test.nix", "layouts.nix"} <= names
    default = (NIXOS_TESTS / "default.nix").read_text()
    layouts = (NIXOS_TESTS / "layouts.nix").read_text()
    for layout in ("legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid"):
        assert f'partitionTableType = "{layout}";' in default, layout
        assert f"{layout} = {{" in layouts or f'"{layout}" = {{' in layouts, layout


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(NIXOS_TESTS)))
def test_nix_file_parses(path: Path) -> None:
    error = parse_error(path)
    assert error is None, f"{path} does not parse:\n{error}"


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda text: text.replace("in\n", "in\n  (\n", 1), id="unbalanced-paren"),
        pytest.param(lambda text: text.replace("mkImageTest {", "mkImageTest {{", 1), id="brace"),
        pytest.param(
            lambda text: text.replace("mkImageTest {", "mkImageTset {", 1), id="undefined"
        ),
    ],
)
def test_parse_check_catches_a_broken_file(tmp_path: Path, breakage: Callable[[str], str]) -> None:
    """The check above can fail: the same file, broken, is rejected."""
    original = (NIXOS_TESTS / "default.nix").read_text()
    broken_text = breakage(original)
    assert broken_text != original, "the breakage did not apply; update this test"
    broken = tmp_path / "default.nix"
    broken.write_text(broken_text)
    assert parse_error(broken) is not None


def test_guest_checks_are_python() -> None:
    """checks.py becomes the driver's test script; a syntax error there fails at run time."""
    source = (NIXOS_TESTS / "checks.py").read_text()
    tree = ast.parse(source)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "run_image_test" in functions
    assert "run_image_test(machine, subtest," in (NIXOS_TESTS / "make-image-test.nix").read_text()


def test_layouts_agree_with_the_engine() -> None:
    """What the VM tests expect to see (nixos-tests/layouts.nix) is what the engine makes."""
    from make_disk_image.layouts import LAYOUTS

    evaluated = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(NIXOS_TESTS / "layouts.nix")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = json.loads(evaluated)
    bootable = {name for name, layout in LAYOUTS.items() if layout.table is not None}
    assert set(expected) == bootable
    for name, seen in expected.items():
        layout = LAYOUTS[name]
        assert seen["partitionTable"] == {"msdos": "dos", "gpt": "gpt"}[layout.table or ""], name
        assert seen["rootPartition"] == layout.root_number, name
        engine_vfat = [
            {"mountPoint": part.mountpoint, "label": part.fs_label, "partition": number}
            for number, part in enumerate(layout.partitions, start=1)
            if part.filesystem == "vfat"
        ]
        assert seen["bootFileSystems"] == engine_vfat, name


# The seed's asserts on its arguments, and the bootable layouts' firmware.
TOUCH_EFI_VARS_LAYOUTS = {"hybrid", "efi", "efixbootldr", "legacy+gpt"}
UEFI_ONLY_LAYOUTS = {"efi", "efixbootldr"}


def evaluate_with_stub(*, isx86: bool) -> dict[str, Any]:
    """Every test of nixos-tests/default.nix, evaluated against tests/nixos_tests_stub.nix."""
    proc = subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(Path(__file__).resolve().parent / "nixos_tests_stub.nix"),
            "--arg",
            "nixosTests",
            str(NIXOS_TESTS),
            "--arg",
            "isx86",
            "true" if isx86 else "false",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_tests_evaluate_per_platform() -> None:
    assert set(evaluate_with_stub(isx86=False)) == {"efi", "efixbootldr"}
    assert set(evaluate_with_stub(isx86=True)) == {
        "legacy",
        "legacy-boot",
        "legacy-gpt",
        "efi",
        "efixbootldr",
        "hybrid",
    }


@pytest.fixture(scope="module")
def evaluated() -> dict[str, Any]:
    return evaluate_with_stub(isx86=True)


@pytest.mark.parametrize(
    "name", ["legacy", "legacy-boot", "legacy-gpt", "efi", "efixbootldr", "hybrid"]
)
def test_test_is_consistent(name: str, evaluated: dict[str, Any]) -> None:
    test = evaluated[name]
    args, expected, node = test["imageArgs"], test["expected"], test["node"]
    layout = args["partitionTableType"]
    assert test["name"] == f"make-disk-image-{name}"

    # makeDiskImage gets what the reference accepts, as the reference's asserts demand.
    assert args["installBootLoader"] is True and args["deterministic"] is True
    assert args["format"] in {"raw", "qcow2", "qcow2-compressed", "vdi", "vpc"}
    assert not args["touchEFIVars"] or layout in TOUCH_EFI_VARS_LAYOUTS
    for entry in args["contents"]:
        assert ("user" in entry) == ("group" in entry), entry

    # The node boots the image from firmware, with the boot loader its layout needs.
    virtualisation = node["virtualisation"]
    assert virtualisation["directBoot"]["enable"] is False
    assert virtualisation["mountHostNixStore"] is False
    assert virtualisation["useBootLoader"] is False
    assert virtualisation["useEFIBoot"] == (layout in UEFI_ONLY_LAYOUTS)
    assert virtualisation["rootDevice"] == f"/dev/disk/by-label/{args['label']}"
    assert node["system"]["switch"]["enable"] is True
    loader = node["boot"]["loader"]
    uses_systemd_boot = layout in UEFI_ONLY_LAYOUTS
    assert loader["grub"]["enable"] is not uses_systemd_boot
    assert (loader["systemd-boot"] is not None) is uses_systemd_boot
    assert loader["efi"]["canTouchEfiVariables"] is args["touchEFIVars"]
    vfat = {fs["mountPoint"]: fs["label"] for fs in expected["bootFileSystems"]}
    assert {
        mount: fs["device"].removeprefix("/dev/disk/by-label/")
        for mount, fs in virtualisation["fileSystems"].items()
    } == vfat
    if layout == "efixbootldr":
        assert loader["efi"]["efiSysMountPoint"] == "/efi"
        assert loader["systemd-boot"]["xbootldrMountPoint"] == "/boot"
    if layout == "hybrid":
        assert loader["grub"]["efiSupport"] and loader["grub"]["efiInstallAsRemovable"]
        assert expected["firmwares"] == ["bios", "uefi"]

    # The guest checks every contents entry, and boots what makeDiskImage was given.
    assert {e["target"] for e in args["contents"]} <= {e["path"] for e in expected["contents"]}
    assert expected["partitionTableType"] == layout
    assert expected["imageFormat"] == ("raw" if args["format"] == "raw" else "qcow2")
    if args["touchEFIVars"]:
        assert expected["efiVariables"].endswith("/efi-vars.fd")

    # The script is checks.py plus the call; it must compile.
    compile(test["testScript"], f"{name}-testScript", "exec")
    assert test["testScript"].rstrip().endswith('-make-disk-image-expected.json")')

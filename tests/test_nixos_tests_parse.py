"""nixos-tests/ cannot run here (no nixpkgs), but every file in it must parse.

`nix-instantiate --parse` also resolves variable names, so an undefined variable or a
misspelt binding fails here too, not only a syntax error. layouts.nix, plain data, is
evaluated and held against the engine's layouts: the guests check what the engine makes.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

NIXOS_TESTS = Path(__file__).resolve().parent.parent / "nixos-tests"
NIX_FILES = sorted(NIXOS_TESTS.rglob("*.nix"))

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate (nix-bin) not installed"
)


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

"""The product (make_disk_image/, nix/package.nix) neither imports nor packages the tests
or the test system (tests/, testsys/): editing them must not change the engine."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_NIX = REPO / "nix/package.nix"
# The project's metadata the package is built from, besides the engine's own tree.
METADATA = {"setup.cfg", "pyproject.toml", "LICENSE", "README.md"}
TEST_PACKAGES = {"tests", "testsys"}


def _nix_list(name: str, text: str) -> list[str]:
    """The strings of a `NAME = [ "a" "b" ];` list in package.nix."""
    match = re.search(rf"^\s*{name} = \[([^\]]*)\]", text, re.MULTILINE)
    assert match, f"nix/package.nix has no `{name} = [ ... ]` list"
    return re.findall(r'"([^"]*)"', match.group(1))


def test_the_package_is_built_from_the_engine_and_metadata_only() -> None:
    text = PACKAGE_NIX.read_text()
    assert _nix_list("trees", text) == ["make_disk_image"]
    files = _nix_list("files", text)
    assert files and set(files) <= METADATA, files
    # Nothing else joins the source filter: it accepts only those two lists.
    assert "tests" not in text.split("wanted =")[1].split("in\n")[0]
    assert not re.search(r'"(tests|testsys)(/[^"]*)?"', text), "package.nix names tests/testsys"


def _imports(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return names


def test_no_engine_module_imports_the_tests_or_the_test_system() -> None:
    offenders = {
        str(source.relative_to(REPO)): sorted(
            name for name in _imports(source) if name.split(".")[0] in TEST_PACKAGES
        )
        for source in sorted((REPO / "make_disk_image").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_engine_message_sends_users_to_the_test_system() -> None:
    """testsys is not installed with the engine: no string of the engine may name it."""
    found = []
    for source in sorted((REPO / "make_disk_image").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and "testsys" in node.value:
                found.append(f"{source.relative_to(REPO)}:{node.lineno}")
    assert found == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import testsys.system\nfrom tests.conftest import X\n")
    assert _imports(bad) == {"testsys.system", "tests.conftest"}
    text = 'files = [\n  "setup.cfg"\n  "tests/conftest.py"\n];\n'
    assert not set(_nix_list("files", text)) <= METADATA

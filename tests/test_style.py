"""The package stays typed (mypy --strict, setup.cfg); it and the code around it (tests,
test system, benchmarks) stay lint-clean (ruff, pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PYTHON_TREES = ["make_disk_image"]
LINTED_TREES = [*PYTHON_TREES, "tests", "testsys", "bench"]


def test_mypy_strict() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", *PYTHON_TREES], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *LINTED_TREES], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

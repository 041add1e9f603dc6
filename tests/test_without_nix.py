"""The suite on a machine without Nix: every Nix test skips, saying why; none errors.

The suite runs again (only its `nix`-marked tests) with a PATH that holds every host
tool except Nix's own (nix-build, nix-instantiate, nix-store, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

HOST_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def path_without_nix(bin_dir: Path) -> str:
    """A directory of links to the host's tools, leaving out every `nix*` command."""
    bin_dir.mkdir()
    for directory in map(Path, HOST_BIN_DIRS):
        if not directory.is_dir():
            continue
        for tool in directory.iterdir():
            link = bin_dir / tool.name
            if not tool.name.startswith("nix") and not link.exists():
                link.symlink_to(tool)
    return str(bin_dir)


def test_nix_tests_skip_where_nix_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": path_without_nix(tmp_path / "bin")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "nix", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.fullmatch(r"=* ?\d+ skipped, \d+ deselected in .*", summary), (
        f"{summary}\n{proc.stdout[-3000:]}"
    )

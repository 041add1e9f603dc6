""".ci/setup names no package mirror: the backports source comes from the machine's own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / ".ci/backports-source.py"


def backports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "bookworm", str(root)],
                          capture_output=True, text=True, check=False)


def test_deb822_sources_give_the_same_mirror_and_keyring(tmp_path: Path) -> None:
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example.org/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://security.example.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    proc = backports(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Types: deb", "URIs: http://mirror.example.org/debian",
        "Suites: bookworm-backports", "Components: main contrib",
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
    ]


def test_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "etc/apt").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "# deb http://old.example.org/debian buster main\n"
        "deb [signed-by=/k.gpg] http://mirror.example.net/debian bookworm main\n")
    proc = backports(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "URIs: http://mirror.example.net/debian" in proc.stdout
    assert "Signed-By: /k.gpg" in proc.stdout


def test_no_source_for_the_suite_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "etc/apt").mkdir(parents=True)
    proc = backports(tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no apt source for bookworm")


def test_the_setup_script_names_no_host() -> None:
    setup = (REPO / ".ci/setup").read_text()
    assert not re.search(r"https?://", setup), "a URL in .ci/setup"

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


def backports_table() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for line in (REPO / ".ci/backports").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            release, package = words
            table.setdefault(release, []).append(package)
    return table


def test_backports_only_where_the_release_needs_them() -> None:
    """Debian 13 (trixie) ships e2fsprogs 1.47.2 and has no bookworm-backports."""
    table = backports_table()
    assert "e2fsprogs" in table["bookworm"]
    assert "trixie" not in table


def test_setup_reads_the_release_from_os_release_and_the_table() -> None:
    setup = (REPO / ".ci/setup").read_text()
    assert "VERSION_CODENAME" in setup and ".ci/backports" in setup
    assert "bookworm-backports" not in setup and "bookworm\"" not in setup


def test_python_packages_go_into_the_venv_only() -> None:
    """Debian's python3 is externally managed (PEP 668): pip only in .venv."""
    setup = (REPO / ".ci/setup").read_text()
    assert "/usr/bin/python3 -m venv --system-site-packages" in setup
    pips = [line for line in setup.splitlines() if "pip install" in line]
    assert pips and all(line.lstrip().startswith('"$venv/bin/python" -m pip') for line in pips)
    for entry in ("run-tests", "demo"):
        text = (REPO / entry).read_text()
        assert ".ci/setup\n" in text and "exec .venv/bin/python -m " in text, entry

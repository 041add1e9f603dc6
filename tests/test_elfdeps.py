"""make_disk_image.elfdeps: a program's interpreter and libraries, read from its files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from make_disk_image import elfdeps
from make_disk_image.process import StepError


def _ldd(program: Path) -> set[str]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return {line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines() if "=>" in line}


def test_a_static_program_needs_nothing() -> None:
    assert elfdeps.read_links(Path("/bin/busybox")).interpreter is None
    assert elfdeps.runtime_files(Path("/bin/busybox")) == []


def test_a_dynamic_programs_libraries_are_the_ones_the_loader_finds() -> None:
    """Without running it: the same libraries ldd lists, by name."""
    for program in (Path("/bin/ls"), Path("/usr/bin/python3")):
        files = elfdeps.runtime_files(program)
        assert files[0] == Path(elfdeps.read_links(program).interpreter or "")
        assert {p.name for p in files[1:]} == _ldd(program) - {"linux-vdso.so.1"}


@pytest.mark.skipif(shutil.which("patchelf") is None, reason="patchelf (.ci/setup) missing")
def test_libraries_are_found_through_the_programs_rpath_first(tmp_path: Path) -> None:
    """As in a Nix store: the program's DT_RUNPATH names where its libraries are."""
    libs = tmp_path / "libs"
    libs.mkdir()
    selinux = next(p for p in elfdeps.runtime_files(Path("/bin/ls")) if "selinux" in p.name)
    shutil.copy(selinux, libs / selinux.name)
    program = tmp_path / "ls"
    shutil.copy("/bin/ls", program)
    subprocess.run(["patchelf", "--set-rpath", str(libs), program], check=True)
    assert elfdeps.read_links(program).search_path == (str(libs),)
    assert libs / selinux.name in elfdeps.runtime_files(program)
    (libs / selinux.name).unlink()
    subprocess.run(["patchelf", "--set-interpreter", str(tmp_path / "ld.so"), program], check=True)
    with pytest.raises(StepError, match="interpreter .*ld.so does not exist"):
        elfdeps.runtime_files(program)


def test_a_library_found_nowhere_is_named(tmp_path: Path) -> None:
    program = tmp_path / "ls"
    shutil.copy("/bin/ls", program)
    if shutil.which("patchelf") is None:
        pytest.skip("patchelf (.ci/setup) missing")
    subprocess.run(["patchelf", "--add-needed", "libnowhere.so.9", program], check=True)
    with pytest.raises(StepError, match="needs libnowhere.so.9, which is in none of"):
        elfdeps.runtime_files(program)


def test_a_file_not_elf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="not a 64-bit little-endian ELF"):
        elfdeps.read_links(Path("/etc/os-release"))

"""What a dynamically linked program needs to run: its ELF interpreter and libraries.

The VM runner's initramfs has no C library of its own. A dynamically linked busybox
(nixpkgs' `busybox`, which Hydra builds for every Linux system where it builds no static
one) runs there when the initramfs carries its interpreter (PT_INTERP) and the libraries
it names (DT_NEEDED), at the same absolute paths. They are read from the files, never by
running them: the program may be of another architecture than this host.

Libraries are looked up, as the dynamic loader looks them up, in the DT_RPATH or
DT_RUNPATH directories of the object that needs them and of the program, then in the
directory of the interpreter (where glibc's own libraries sit, in nixpkgs and in Debian's
multiarch layout alike). The loader's cache and default directories are the host's, not
the program's, so they are not searched.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .process import StepError

STEP = "vm"

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29


@dataclass(frozen=True)
class ElfLinks:
    """The dynamic-linking facts of one ELF file."""

    interpreter: str | None
    needed: tuple[str, ...]
    search_path: tuple[str, ...]  # DT_RPATH/DT_RUNPATH entries, $ORIGIN expanded


def read_links(path: Path) -> ElfLinks:
    """The interpreter, needed libraries and search path of a 64-bit little-endian ELF."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise StepError(STEP, f"{path} is not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    headers = [
        struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize) for i in range(phnum)
    ]  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
    interpreter = None
    dynamic: list[tuple[int, int]] = []
    for p_type, _, offset, _, _, size in headers:
        if p_type == _PT_INTERP:
            interpreter = data[offset : offset + size].split(b"\0")[0].decode()
        elif p_type == _PT_DYNAMIC:
            for at in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == 0:
                    break
                dynamic.append((tag, value))
    strtab = next((v for t, v in dynamic if t == _DT_STRTAB), None)
    if strtab is None:
        return ElfLinks(interpreter, (), ())
    base = _file_offset(headers, strtab)

    def string(at: int) -> str:
        return data[base + at : data.index(b"\0", base + at)].decode()

    origin = str(path.parent)
    search = [
        entry.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for tag, value in dynamic
        if tag in (_DT_RPATH, _DT_RUNPATH)
        for entry in string(value).split(":")
        if entry
    ]
    needed = tuple(string(v) for t, v in dynamic if t == _DT_NEEDED)
    return ElfLinks(interpreter, needed, tuple(search))


def _file_offset(headers: list[tuple[int, ...]], vaddr: int) -> int:
    for p_type, _, offset, start, _, size in headers:
        if p_type == _PT_LOAD and start <= vaddr < start + size:
            return vaddr - start + offset
    raise StepError(STEP, f"ELF address {vaddr:#x} lies in no loaded segment")


def runtime_files(program: Path) -> list[Path]:
    """The interpreter and every library `program` loads, by the paths it finds them at.

    Empty for a static program. Raises StepError naming a library found nowhere.
    """
    links = read_links(program)
    if links.interpreter is None:
        return []
    interpreter = Path(links.interpreter)
    if not interpreter.is_file():
        raise StepError(STEP, f"{program}: its interpreter {interpreter} does not exist")
    fallback = [str(Path(os.path.realpath(interpreter)).parent)]
    found: dict[str, Path] = {interpreter.name: interpreter}
    files = [interpreter]
    todo = [(program, links)]
    while todo:
        needer, needer_links = todo.pop()
        dirs = [*needer_links.search_path, *links.search_path, *fallback]
        for name in needer_links.needed:
            if name in found:
                continue
            library = next((Path(d) / name for d in dirs if (Path(d) / name).is_file()), None)
            if library is None:
                raise StepError(
                    STEP, f"{needer} needs {name}, which is in none of {', '.join(dirs)}"
                )
            found[name] = library
            files.append(library)
            todo.append((library, read_links(library)))
    return files

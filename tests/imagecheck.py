"""Reading built images with the real tools: sfdisk, e2fsck, dumpe2fs, debugfs, qemu-img."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def sfdisk_json(image: Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]
    return table


def fs_spec(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}" if offset else str(image)


def e2fsck_clean(image: Path, offset: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["e2fsck", "-fn", fs_spec(image, offset)], capture_output=True,
                          text=True)


def dumpe2fs(image: Path, offset: int) -> dict[str, str]:
    """The superblock fields `dumpe2fs -h` prints.

    dumpe2fs 1.47.2 cannot open `IMG?offset=`; `tune2fs -l` prints the same listing
    and can, so it stands in for partitions inside an image.
    """
    if offset:
        out = run("tune2fs", "-l", fs_spec(image, offset))
    else:
        out = run("dumpe2fs", "-h", str(image))
    return header_fields(out)


def header_fields(listing: str) -> dict[str, str]:
    """`Name:   value` lines of a superblock listing (dumpe2fs -h, tune2fs -l, stats -h)."""
    fields = {}
    for line in listing.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


@dataclass(frozen=True)
class Inode:
    mode: int  # full st_mode
    uid: int
    gid: int
    size: int


def stat(image: Path, offset: int, path: str) -> Inode | None:
    proc = subprocess.run(["debugfs", "-R", f"stat {path}", fs_spec(image, offset)],
                          capture_output=True, text=True)
    if "File not found" in proc.stderr or "File not found" in proc.stdout:
        return None
    mode = re.search(r"Mode:\s+(\d+)", proc.stdout)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", proc.stdout)
    size = re.search(r"Size: (\d+)", proc.stdout)
    kind = re.search(r"Type: (\w+)", proc.stdout)
    assert mode and owner and size and kind, proc.stdout + proc.stderr
    type_bits = {"regular": 0o100000, "directory": 0o040000, "symlink": 0o120000}[kind.group(1)]
    return Inode(type_bits | int(mode.group(1), 8), int(owner.group(1)), int(owner.group(2)),
                 int(size.group(1)))


def cat(image: Path, offset: int, path: str) -> str:
    return run("debugfs", "-R", f"cat {path}", fs_spec(image, offset))


def ls(image: Path, offset: int, path: str) -> list[str]:
    out = run("debugfs", "-R", f"ls -p {path}", fs_spec(image, offset))
    names = [line.split("/")[5] for line in out.splitlines() if line.startswith("/")]
    return [n for n in names if n not in (".", "..")]


def qemu_img_info(image: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info`; pass `fmt` for a VHD, which qemu-img would probe as raw."""
    forced = ("-f", fmt) if fmt else ()
    info: dict[str, Any] = json.loads(run("qemu-img", "info", *forced, "--output=json", str(image)))
    return info

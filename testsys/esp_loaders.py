"""The UEFI loaders on a built image's ESP, read with mtools (no mount)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# PE/COFF machine types of UEFI binaries.
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x014C: "i386"}


def efi_loaders(raw: Path) -> dict[str, str]:
    """Every .EFI file under EFI/ on the raw image's ESP, with its PE machine type.

    The ESP is found by its GPT type; its files are read with mtools (no mount).
    """
    proc = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=False)
    if proc.returncode != 0:
        return {}
    table = json.loads(proc.stdout)["partitiontable"]
    esp = next((p for p in table.get("partitions", []) if p["type"] == ESP_TYPE_GUID), None)
    if esp is None:
        return {}
    image = f"{raw}@@{int(esp['start']) * 512}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", image, "::/EFI"], capture_output=True, env=env, check=False
    ).stdout.decode(errors="replace")
    found: dict[str, str] = {}
    for path in sorted(listing.split()):
        if not path.upper().endswith(".EFI"):
            continue
        data = subprocess.run(
            ["mtype", "-i", image, path], capture_output=True, env=env, check=True
        ).stdout
        pe = struct.unpack_from("<I", data, 0x3C)[0] if data[:2] == b"MZ" else None
        machine = struct.unpack_from("<H", data, pe + 4)[0] if pe is not None else None
        name = path.removeprefix("::")
        found[name] = (
            "not a PE binary" if machine is None else PE_MACHINES.get(machine, hex(machine))
        )
    return found

"""The EFI variable store a touchEFIVars image carries (an OVMF pflash image): its
variables and the Boot#### load options among them."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from testsys.guest_report import guid_le

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

_AUTHENTICATED_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
_PLAIN_STORE = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
_VAR_ADDED = 0x3F
_VAR_IN_DELETED_TRANSITION = 0xFE


def read_efi_variables(store: Path) -> dict[tuple[str, str], bytes]:
    """The live variables of an OVMF variable store file: {(name, vendor guid): data}."""
    blob = store.read_bytes()
    if not blob.strip(b"\0"):
        return {}  # AAVMF's empty store: the firmware formats it on first boot
    header_length = struct.unpack_from("<H", blob, 48)[0]
    store_guid = uuid.UUID(bytes_le=blob[header_length : header_length + 16])
    if store_guid not in (_AUTHENTICATED_STORE, _PLAIN_STORE):
        raise ValueError(f"{store}: no EFI variable store after the volume header")
    authenticated = store_guid == _AUTHENTICATED_STORE
    store_size = struct.unpack_from("<I", blob, header_length + 16)[0]
    end = min(len(blob), header_length + store_size)
    offset = header_length + 28
    variables: dict[tuple[str, str], bytes] = {}
    while offset + 4 <= end:
        offset = (offset + 3) & ~3
        start_id, state = struct.unpack_from("<HB", blob, offset)
        if start_id != 0x55AA:
            break
        if authenticated:
            name_size, data_size = struct.unpack_from("<II", blob, offset + 36)
            vendor = blob[offset + 44 : offset + 60]
            body = offset + 60
        else:
            name_size, data_size = struct.unpack_from("<II", blob, offset + 8)
            vendor = blob[offset + 16 : offset + 32]
            body = offset + 32
        name = blob[body : body + name_size].decode("utf-16-le").rstrip("\0")
        data = blob[body + name_size : body + name_size + data_size]
        if state in (_VAR_ADDED, _VAR_ADDED & _VAR_IN_DELETED_TRANSITION):
            variables[(name, str(uuid.UUID(bytes_le=vendor)))] = data
        offset = body + name_size + data_size
    return variables


@dataclass(frozen=True)
class EfiLoadOption:
    """A Boot#### variable: description and its hard drive + file path device path."""

    number: int
    active: bool
    description: str
    partition_number: int | None
    partition_start: int | None
    partition_size: int | None
    partition_guid: str | None
    file_path: str | None


def parse_load_option(number: int, data: bytes) -> EfiLoadOption:
    attributes, path_length = struct.unpack_from("<IH", data, 0)
    end_of_description = 6
    while data[end_of_description : end_of_description + 2] != b"\0\0":
        end_of_description += 2
    description = data[6:end_of_description].decode("utf-16-le")
    offset = end_of_description + 2
    path_end = offset + path_length
    partition: tuple[int, int, int, str] | None = None
    file_path: str | None = None
    while offset + 4 <= path_end:
        node_type, sub_type, length = struct.unpack_from("<BBH", data, offset)
        if length < 4 or node_type == 0x7F:
            break
        node = data[offset + 4 : offset + length]
        if (node_type, sub_type) == (4, 1) and len(node) >= 38:
            number_, start, size = struct.unpack_from("<IQQ", node, 0)
            partition = (number_, start, size, guid_le(node[20:36].hex()))
        elif (node_type, sub_type) == (4, 4):
            file_path = node.decode("utf-16-le").rstrip("\0")
        offset += length
    return EfiLoadOption(
        number=number,
        active=bool(attributes & 1),
        description=description,
        partition_number=partition[0] if partition else None,
        partition_start=partition[1] if partition else None,
        partition_size=partition[2] if partition else None,
        partition_guid=partition[3] if partition else None,
        file_path=file_path,
    )


def efi_boot_entries(store: Path) -> tuple[list[EfiLoadOption], list[int]]:
    """The Boot#### load options of a variable store and its BootOrder."""
    variables = read_efi_variables(store)
    options: list[EfiLoadOption] = []
    order: list[int] = []
    for (name, vendor), data in sorted(variables.items()):
        if vendor != EFI_GLOBAL_VARIABLE:
            continue
        if name == "BootOrder":
            order = list(struct.unpack(f"<{len(data) // 2}H", data))
        elif len(name) == 8 and name.startswith("Boot"):
            try:
                number = int(name[4:], 16)
            except ValueError:
                continue
            options.append(parse_load_option(number, data))
    return options, order

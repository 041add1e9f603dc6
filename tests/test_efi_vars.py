"""testsys.efi_vars: the variables of an OVMF variable store file and the Boot#### load
options among them. Read from Debian's own stores (the .ms one holds what the firmware
wrote when the keys were enrolled) and from a store written here by the UEFI layout, with
load options the engine composes (make_disk_image.efiboot)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from make_disk_image import efiboot
from testsys.efi_vars import EFI_GLOBAL_VARIABLE, efi_boot_entries, read_efi_variables

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_VARS_ENROLLED = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
ESP_GUID = uuid.UUID("2C1A5D0E-7B3F-4E21-9A6C-0D8E4F1B2A37")
VAR_ADDED = 0x3F
VAR_DELETED = 0x3F & 0xFD  # the firmware clears bit 1 of a deleted variable's state

needs_ovmf = pytest.mark.skipif(not OVMF_VARS_ENROLLED.is_file(), reason="needs Debian's ovmf")


def authenticated_variable(name: str, vendor: str, data: bytes, state: int) -> bytes:
    """One record of an authenticated variable store (UEFI PI, AUTHENTICATED_VARIABLE_HEADER),
    padded to 4 bytes."""
    encoded = (name + "\0").encode("utf-16-le")
    header = struct.pack("<HBBIQ16sIII16s", 0x55AA, state, 0, 0x7, 0, bytes(16), 0,
                         len(encoded), len(data), uuid.UUID(vendor).bytes_le)
    record = header + encoded + data
    return record + bytes(-len(record) % 4)


def store_with(tmp_path: Path, records: list[bytes]) -> Path:
    """A copy of OVMF's empty store with `records` written where its variables begin."""
    blob = bytearray(OVMF_VARS.read_bytes())
    start = struct.unpack_from("<H", blob, 48)[0] + 28  # volume header, store header
    body = b"".join(records)
    blob[start:start + len(body)] = body
    path = tmp_path / "efi-vars.fd"
    path.write_bytes(bytes(blob))
    return path


@needs_ovmf
def test_the_empty_store_holds_no_variables() -> None:
    assert read_efi_variables(OVMF_VARS) == {}
    assert efi_boot_entries(OVMF_VARS) == ([], [])


@needs_ovmf
def test_the_enrolled_store_holds_the_keys_and_boot_options() -> None:
    variables = read_efi_variables(OVMF_VARS_ENROLLED)
    assert {("PK", EFI_GLOBAL_VARIABLE), ("KEK", EFI_GLOBAL_VARIABLE),
            ("db", IMAGE_SECURITY_DATABASE)} <= set(variables)
    # Debian 12's holds the options of the firmware's first boot (UiApp, the shell);
    # a store enrolled by a tool holds none. Either way each Boot#### parses.
    options, _ = efi_boot_entries(OVMF_VARS_ENROLLED)
    assert all(option.description for option in options)
    assert [f"Boot{o.number:04X}" for o in options] == sorted(
        name for name, vendor in variables
        if vendor == EFI_GLOBAL_VARIABLE and name.startswith("Boot") and len(name) == 8
        and name != "BootOrder")


@needs_ovmf
def test_a_load_option_the_engine_composes_reads_back(tmp_path: Path) -> None:
    loader = "\\EFI\\systemd\\systemd-bootx64.efi"
    option = efiboot.LoadOption(efiboot.LOAD_OPTION_ACTIVE, "Linux Boot Manager",
                                efiboot.HardDrive(1, 2048, 524288, ESP_GUID), loader)
    inactive = efiboot.LoadOption(0, "Old", efiboot.HardDrive(1, 2048, 8, uuid.uuid4()), "\\x")
    store = store_with(tmp_path, [
        authenticated_variable("Boot0003", EFI_GLOBAL_VARIABLE,
                               efiboot.compose_load_option(option), VAR_ADDED),
        # Deleted, then written again: only the live one counts.
        authenticated_variable("BootOrder", EFI_GLOBAL_VARIABLE, struct.pack("<H", 9),
                               VAR_DELETED),
        authenticated_variable("BootOrder", EFI_GLOBAL_VARIABLE, struct.pack("<2H", 3, 4),
                               VAR_ADDED),
        authenticated_variable("Boot0004", EFI_GLOBAL_VARIABLE,
                               efiboot.compose_load_option(inactive), VAR_ADDED),
        authenticated_variable("Boot0006", EFI_GLOBAL_VARIABLE,
                               efiboot.compose_load_option(option), VAR_DELETED),
        # Another vendor's Boot####, and a name that only starts like one.
        authenticated_variable("Boot0005", str(uuid.uuid4()), b"x", VAR_ADDED),
        authenticated_variable("BootNext", EFI_GLOBAL_VARIABLE, b"\0\0", VAR_ADDED),
    ])
    options, order = efi_boot_entries(store)
    assert order == [3, 4]
    assert [(o.number, o.active) for o in options] == [(3, True), (4, False)]
    ours = options[0]
    assert ours.description == "Linux Boot Manager" and ours.file_path == loader
    assert (ours.partition_number, ours.partition_start, ours.partition_size) == (1, 2048, 524288)
    assert ours.partition_guid == str(ESP_GUID).upper()


def test_a_file_without_a_store_is_refused(tmp_path: Path) -> None:
    blank = tmp_path / "blank.fd"
    blank.write_bytes(bytes(4096))
    assert read_efi_variables(blank) == {}  # AAVMF's unformatted store
    other = tmp_path / "other.fd"
    other.write_bytes(struct.pack("<48xH", 64) + bytes(range(256)) * 16)
    with pytest.raises(ValueError, match="no EFI variable store"):
        read_efi_variables(other)

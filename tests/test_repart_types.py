"""GPT types and flags: facts recorded from systemd-repart 254 (sfdisk -d of its images)."""

from __future__ import annotations

import pytest

from make_disk_image.repart import types

# Type= -> (name repart reports, GPT type, attribute bits), x86-64 then arm64.
X86_64 = {
    "esp": ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", ()),
    "xbootldr": ("xbootldr", "BC13C2FF-59E6-4262-A352-B275FD6F7172", (59,)),
    "swap": ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", ()),
    "home": ("home", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915", (59,)),
    "srv": ("srv", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8", (59,)),
    "var": ("var", "4D21B016-B534-45C2-A9FB-5C16E091FD2D", (59,)),
    "tmp": ("tmp", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", (59,)),
    "linux-generic": ("linux-generic", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", ()),
    "root": ("root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", (59,)),
    "root-verity": ("root-x86-64-verity", "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5", (60,)),
    "usr": ("usr-x86-64", "8484680C-9521-48C6-9C11-B0720656F69E", (59,)),
    "usr-verity": ("usr-x86-64-verity", "77FF5F63-E7B6-4633-ACF4-1565B864C0E6", (60,)),
    "usr-arm64": ("usr-arm64", "B0E01050-EE5F-4390-949A-9101B17104E9", (59,)),
    "root-arm64-verity": ("root-arm64-verity", "DF3300CE-D69F-4C92-978C-9BFB0F38D820", (60,)),
}
ARM64 = {
    "root": ("root-arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", (59,)),
    "root-verity": ("root-arm64-verity", "DF3300CE-D69F-4C92-978C-9BFB0F38D820", (60,)),
    "usr": ("usr-arm64", "B0E01050-EE5F-4390-949A-9101B17104E9", (59,)),
    "usr-verity": ("usr-arm64-verity", "6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E", (60,)),
    "root-x86-64": ("root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", (59,)),
}


@pytest.mark.parametrize(("arch", "table"), [("x86-64", X86_64), ("arm64", ARM64)])
def test_types_as_repart_254_writes_them(arch: str, table: dict) -> None:
    for value, (name, guid, bits) in table.items():
        resolved = types.resolve(value, arch)
        assert (resolved.name, str(resolved.uuid).upper(), resolved.attribute_bits) == (
            name, guid, bits), value


def test_raw_uuid_known_and_unknown() -> None:
    assert types.resolve("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "x86-64").name == "root-x86-64"
    other = types.resolve("11111111-2222-4333-8444-555555555555", "x86-64")
    assert (other.name, other.default_label, other.attribute_bits) == (
        "11111111-2222-4333-8444-555555555555", "linux", ())


def test_unknown_type_and_architecture_named() -> None:
    with pytest.raises(ValueError, match="unknown partition type 'rot'.*root-x86-64"):
        types.resolve("rot", "x86-64")
    with pytest.raises(ValueError, match="architecture 'riscv64'"):
        types.resolve("root", "riscv64")

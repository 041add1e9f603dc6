"""GPT partition types as repart.d(5)'s `Type=` names them, for x86-64 and arm64.

`root` and `usr` (and their `-verity` forms) name the type of the image's architecture;
`root-x86-64` names it explicitly; a raw UUID is taken as it is. The flags are those
systemd-repart 254 sets on a new partition (checked against it: tests/test_repart_types.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

# Nix's cpu names -> systemd's architecture names (`--architecture=`).
ARCHITECTURES = {"x86_64": "x86-64", "aarch64": "arm64"}

GENERIC = {
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "xbootldr": "bc13c2ff-59e6-4262-a352-b275fd6f7172",
    "swap": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    "home": "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
    "srv": "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
    "var": "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
    "tmp": "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
    "linux-generic": "0fc63daf-8483-4772-8e79-3d69d8477de4",
}
PER_ARCHITECTURE = {
    ("root", "x86-64"): "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    ("root-verity", "x86-64"): "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
    ("usr", "x86-64"): "8484680c-9521-48c6-9c11-b0720656f69e",
    ("usr-verity", "x86-64"): "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
    ("root", "arm64"): "b921b045-1df0-41c3-af44-4c6f280d3fae",
    ("root-verity", "arm64"): "df3300ce-d69f-4c92-978c-9bfb0f38d820",
    ("usr", "arm64"): "b0e01050-ee5f-4390-949a-9101b17104e9",
    ("usr-verity", "arm64"): "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
}
# Families whose new partitions repart marks "grow the filesystem on first boot" (GPT
# attribute bit 59); verity hash partitions are marked read-only (bit 60) instead.
GROWFS_FAMILIES = frozenset({"xbootldr", "home", "srv", "var", "tmp", "root", "usr"})
GROWFS_BIT = 59
READ_ONLY_BIT = 60


@dataclass(frozen=True)
class PartitionType:
    """A resolved `Type=`: the name repart reports and writes as the default label."""

    name: str  # "esp", "root-x86-64", or the UUID when the type has no name
    uuid: uuid.UUID
    family: str | None  # "root", "usr", "esp", ...; None for an unnamed UUID

    @property
    def attribute_bits(self) -> tuple[int, ...]:
        if self.family in ("root-verity", "usr-verity"):
            return (READ_ONLY_BIT,)
        return (GROWFS_BIT,) if self.family in GROWFS_FAMILIES else ()

    @property
    def default_label(self) -> str:
        return self.name if self.family is not None else "linux"


def _all_named(architecture: str) -> dict[str, PartitionType]:
    named: dict[str, PartitionType] = {}
    for name, text in GENERIC.items():
        named[name] = PartitionType(name, uuid.UUID(text), name)
    for (family, arch), text in PER_ARCHITECTURE.items():
        base, _, verity = family.partition("-")
        full = f"{base}-{arch}" + (f"-{verity}" if verity else "")
        entry = PartitionType(full, uuid.UUID(text), family)
        named[full] = entry
        if arch == architecture:
            named[family] = entry
    return named


def supported_names(architecture: str) -> list[str]:
    return sorted(_all_named(architecture))


def resolve(value: str, architecture: str) -> PartitionType:
    """`Type=` for an image of `architecture` (systemd's name: x86-64, arm64)."""
    if architecture not in ARCHITECTURES.values():
        raise ValueError(
            f"architecture {architecture!r} is not supported; use one of "
            + ", ".join(sorted(ARCHITECTURES.values()))
        )
    named = _all_named(architecture)
    if value in named:
        return named[value]
    try:
        raw = uuid.UUID(value)
    except ValueError:
        raise ValueError(
            f"unknown partition type {value!r}; use a GPT type UUID or one of "
            + ", ".join(sorted(named))
        ) from None
    for entry in named.values():
        if entry.uuid == raw:
            return entry
    return PartitionType(str(raw), raw, None)

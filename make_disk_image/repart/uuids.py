"""The identities systemd-repart derives from `--seed`, and the labels it defaults to.

repart keys an HMAC-SHA256 with the seed and keeps the first 16 bytes of the digest,
marked as a version 4 UUID:
- the disk: message "disk-uuid";
- a partition: its type's UUID (16 bytes, in text order), followed by the partition's
  index among earlier partitions of the same type (64-bit little-endian) from the second
  partition of that type on;
- its filesystem: keyed by the partition's UUID, message "file-system-uuid"; a vfat volume
  id is that UUID's first 32 bits.
Checked against systemd-repart 254's output (tests/test_repart_uuids.py).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence

from make_disk_image.repart.definitions import Definition

# nixpkgs' image.repart.seed default.
NIXPKGS_SEED = uuid.UUID("0867da16-f251-457d-a9e8-c31f9a3c220b")


def _as_v4(digest: bytes) -> uuid.UUID:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def derive(key: uuid.UUID, message: bytes) -> uuid.UUID:
    return _as_v4(hmac.new(key.bytes, message, hashlib.sha256).digest())


def disk_uuid(seed: uuid.UUID) -> uuid.UUID:
    return derive(seed, b"disk-uuid")


def partition_uuids(seed: uuid.UUID, definitions: Sequence[Definition]) -> list[uuid.UUID]:
    """Each definition's partition UUID: its own `UUID=`, or derived from the seed."""
    found = []
    for index, definition in enumerate(definitions):
        earlier = sum(1 for d in definitions[:index] if d.type.uuid == definition.type.uuid)
        message = definition.type.uuid.bytes
        if earlier:
            message += struct.pack("<Q", earlier)
        found.append(definition.uuid or derive(seed, message))
    return found


def filesystem_uuid(partition_uuid: uuid.UUID) -> uuid.UUID:
    return derive(partition_uuid, b"file-system-uuid")


def vfat_volume_id(fs_uuid: uuid.UUID) -> str:
    """mkfs.vfat's `-i`: 8 hex digits."""
    return fs_uuid.hex[:8]


def labels(definitions: Sequence[Definition]) -> list[str]:
    """Each definition's label: its own `Label=`, or its type's name, then `NAME-2`, ..."""
    found: list[str] = []
    for definition in definitions:
        if definition.label is not None:
            found.append(definition.label)
            continue
        prefix = definition.type.default_label
        candidate, counter = prefix, 1
        while candidate in found:
            counter += 1
            candidate = f"{prefix}-{counter}"
        found.append(candidate)
    return found

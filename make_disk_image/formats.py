"""Output formats: how the raw image becomes each `format`, and its Hydra product line.

| format | file | made by | deterministic |
|---|---|---|---|
| raw | .img | moved | yes |
| qcow2 | .qcow2 | qemu-img | yes |
| qcow2-compressed | .qcow2 | `qcow2.write`: zlib on every core, qemu-img's bytes | yes |
| qcow2-zstd | .qcow2 | qemu-img, compression_type=zstd | yes |
| vdi | .vdi | qemu-img, then image and modification UUIDs fixed | when `deterministic` |
| vpc | .vhd | qemu-img (dynamic, exact size), then timestamp and UUID fixed | " |
| vmdk | .vmdk | qemu-img, streamOptimized, then CID fixed | " |
| vhdx | .vhdx | qemu-img (dynamic), then GUIDs, sequence numbers, stale log fixed | " |
| raw-zstd | .img.zst | `zstd -T<cores>` (same bytes for any thread count) | yes |

The identifiers qemu-img draws at random are, when `deterministic`, replaced by ones
derived from a SHA-256 of the converted file with those fields zeroed: two builds of the
same image agree, two different images still get different identifiers (VirtualBox
refuses to register two disks with one UUID).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from make_disk_image import process, qcow2
from make_disk_image.models import Format

# qemu-img convert options per format that qemu-img makes.
QEMU_IMG = {
    Format.QCOW2: ("-O", "qcow2"),
    Format.QCOW2_ZSTD: ("-O", "qcow2", "-c", "-o", "compression_type=zstd"),
    Format.VDI: ("-O", "vdi"),
    # Without force_size qemu-img rounds the size to a CHS geometry and the backup GPT is
    # no longer at the end of the disk.
    Format.VPC: ("-O", "vpc", "-o", "force_size=on"),
    # streamOptimized: what ESXi and OVA import (deflated grains, no random access).
    Format.VMDK: ("-O", "vmdk", "-o", "subformat=streamOptimized"),
    Format.VHDX: ("-O", "vhdx", "-o", "subformat=dynamic"),
}


def product_line(fmt: Format, image: Path) -> str:
    """The image's line of nix-support/hydra-build-products."""
    # The reference writes `file ${qemu-img format}-image`, so qcow2-compressed stays a
    # qcow2-image; the types are interface.json's.
    return f"file {fmt.product_type} {image}\n"


def workers() -> int:
    """Cores to compress on: NIX_BUILD_CORES inside a Nix build (0 means all), else the
    CPUs this process may run on. The output does not depend on it."""
    cores = os.environ.get("NIX_BUILD_CORES", "")
    if cores.isdigit() and int(cores) > 0:
        return int(cores)
    return max(1, len(os.sched_getaffinity(0)))


def command(fmt: Format, raw: Path, dest: Path, *, cores: int) -> list[str]:
    """The external command that converts `raw` into `dest` (not for raw and
    qcow2-compressed, which are a move and `qcow2.write`)."""
    if fmt is Format.RAW_ZSTD:
        # -T N >= 1 gives the same bytes for any N (--single-thread would not).
        return ["zstd", f"-T{cores}", "-q", "-f", "--no-progress", str(raw), "-o", str(dest)]
    return ["qemu-img", "convert", "-f", "raw", *QEMU_IMG[fmt], str(raw), str(dest)]


def convert(
    fmt: Format,
    raw: Path,
    dest: Path,
    *,
    deterministic: bool,
    step: str,
    name: str | None = None,
) -> None:
    """Write `raw` to `dest` in `fmt` (raw is moved, not copied).

    `name` is the file name the image will finally have, when `dest` is a temporary
    name: a VMDK's descriptor names its own file.
    """
    if fmt is Format.RAW:
        shutil.move(raw, dest)
        return
    if fmt is Format.QCOW2_COMPRESSED:
        cores = workers()
        process.logger.info("[%s] qcow2 (zlib) on %d cores: %s -> %s", step, cores, raw, dest)
        try:
            qcow2.write(raw, dest, workers=cores)
        except (OSError, ValueError) as exc:
            raise process.StepError(step, f"writing {dest} as qcow2: {exc}") from exc
        return
    process.run(command(fmt, raw, dest, cores=workers()), step=step)
    fix_header(fmt, dest, name or dest.name, deterministic=deterministic, step=step)


def fix_header(fmt: Format, image: Path, name: str, *, deterministic: bool, step: str) -> None:
    """After qemu-img: the random identifiers fixed when `deterministic`, and a VMDK's
    descriptor naming `name`."""
    fixer = _FIXERS.get(fmt)
    if fixer is None:
        return
    try:
        fixer(image, name, deterministic)
    except (OSError, ValueError, struct.error) as exc:
        raise process.StepError(step, f"fixing the header of {image}: {exc}") from exc


# --- identifiers qemu-img draws at random ------------------------------------------------

_NAMESPACE = uuid.UUID("6e2b9a52-8f0c-4c3e-9a43-3a5e0f1d7c21")  # make-disk-image's own


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _derived(digest: str, what: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{what}:{digest}")


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ValueError(f"file ends before byte {offset + length}")
    return data


def _fix_vdi(path: Path, name: str, deterministic: bool) -> None:
    """VDI header: uuid_image at 392, uuid_last_snap (modification UUID) at 408; no
    timestamp, no checksum."""
    if not deterministic:
        return
    if struct.unpack("<I", _read(path, 64, 4))[0] != 0xBEDA107F:
        raise ValueError("no VDI signature at byte 64")
    _patch(path, 392, bytes(32))
    digest = _digest(path)
    _patch(
        path, 392, _derived(digest, "vdi-image").bytes_le + _derived(digest, "vdi-modify").bytes_le
    )


_VHD_TIMESTAMP = slice(24, 28)  # seconds since 2000-01-01 00:00 UTC
_VHD_CHECKSUM = slice(64, 68)
_VHD_UUID = slice(68, 84)


def _vhd_footer(footer: bytearray, identifier: bytes) -> bytes:
    footer[_VHD_TIMESTAMP] = bytes(4)  # 2000-01-01, the format's epoch
    footer[_VHD_UUID] = identifier
    footer[_VHD_CHECKSUM] = bytes(4)
    footer[_VHD_CHECKSUM] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
    return bytes(footer)


def _fix_vpc(path: Path, name: str, deterministic: bool) -> None:
    """VHD footer (the last 512 bytes, and a copy at byte 0 of a dynamic VHD): creation
    timestamp, unique id and the checksum over the footer."""
    if not deterministic:
        return
    end = path.stat().st_size - 512
    footer = bytearray(_read(path, end, 512))
    if footer[:8] != b"conectix":
        raise ValueError("no VHD footer in the last 512 bytes")
    copies = [end] + ([0] if _read(path, 0, 8) == b"conectix" else [])
    for offset in copies:
        _patch(path, offset, _vhd_footer(bytearray(footer), bytes(16)))
    identifier = _derived(_digest(path), "vhd").bytes
    for offset in copies:
        _patch(path, offset, _vhd_footer(bytearray(footer), identifier))


def _fix_vmdk(path: Path, name: str, deterministic: bool) -> None:
    """The embedded descriptor of a streamOptimized VMDK: the extent names the file
    itself (qemu-img wrote the temporary name), CID is a random content id."""
    header = _read(path, 0, 512)
    magic, _version, _flags, _capacity, _grain, desc_offset, desc_size = struct.unpack_from(
        "<4sIIQQQQ", header
    )
    if magic != b"KDMV":
        raise ValueError("no VMDK sparse header")
    area = _read(path, desc_offset * 512, desc_size * 512)
    text = area.split(b"\0", 1)[0].decode()
    text, found = re.subn(r'^(RW \d+ SPARSE )".*"$', lambda m: f'{m[1]}"{name}"', text, flags=re.M)
    if found != 1:
        raise ValueError("the VMDK descriptor has no single SPARSE extent line")

    def write(cid: str) -> None:
        new = re.sub(r"^CID=[0-9a-f]+$", f"CID={cid}", text, count=1, flags=re.M).encode()
        if len(new) > len(area):
            raise ValueError(f"the descriptor no longer fits its {len(area)} bytes")
        _patch(path, desc_offset * 512, new.ljust(len(area), b"\0"))

    # qemu-img prints the CID without leading zeros.
    cid_line = re.search(r"^CID=([0-9a-f]+)$", text, flags=re.M)
    if cid_line is None:
        raise ValueError("the VMDK descriptor has no CID line")
    if not deterministic:
        write(cid_line[1])
        return
    write("00000000")
    cid = _derived(_digest(path), "vmdk-cid").int & 0xFFFFFFFF
    write(f"{min(cid, 0xFFFFFFFE):08x}")  # ffffffff means "no parent"


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()
_VHDX_HEADERS = (64 * 1024, 128 * 1024)  # two 4 KiB copies, the newer one current
_VHDX_REGION_TABLE = 192 * 1024
_VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
_VHDX_PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le


def _vhdx_table(
    path: Path, offset: int, signature: bytes, count: str, first: int, entry: str
) -> Iterator[tuple[Any, ...]]:
    """The 32-byte entries of a VHDX region or metadata table (`count`: the struct of
    the entry count, which follows the 8-byte signature field)."""
    table = _read(path, offset, 64 * 1024)
    if not table.startswith(signature):
        raise ValueError(f"no VHDX {signature.decode()} table at byte {offset}")
    (entries,) = struct.unpack_from(count, table, 8)
    for n in range(entries):
        yield struct.unpack_from(entry, table, first + 32 * n)


def _vhdx_page83_offset(path: Path) -> int:
    """File offset of the virtual disk id (the Page 83 Data metadata item)."""
    regions = _vhdx_table(path, _VHDX_REGION_TABLE, b"regi", "<I", 16, "<16sQII")
    metadata = next((r[1] for r in regions if r[0] == _VHDX_METADATA_REGION), None)
    if metadata is None:
        raise ValueError("no metadata region in the VHDX region table")
    # The metadata table: "metadata", 2 reserved bytes, the entry count.
    for item, offset, length, _ in _vhdx_table(path, metadata, b"metadata", "<xxH", 32, "<16sIII"):
        if item == _VHDX_PAGE83 and length == 16:
            return int(metadata + offset)
    raise ValueError("no Page 83 Data item in the VHDX metadata")


def _fix_vhdx(path: Path, name: str, deterministic: bool) -> None:
    """VHDX headers: file write, data write GUIDs and sequence numbers (random), each
    header's CRC-32C; the virtual disk id in the metadata; and the log qemu-img wrote
    while converting, stale once it closed the file (LogGuid zero): zeroed."""
    if not deterministic:
        return
    headers = [bytearray(_read(path, offset, 4096)) for offset in _VHDX_HEADERS]
    for header in headers:
        if header[:4] != b"head":
            raise ValueError("no VHDX header at 64 KiB or 128 KiB")
        if any(header[48:64]):
            raise ValueError("the VHDX log is not empty (LogGuid set): not closed cleanly")
    log_length, log_offset = struct.unpack_from("<IQ", headers[0], 68)
    newer = max(range(2), key=lambda n: int(struct.unpack_from("<Q", headers[n], 8)[0]))
    page83 = _vhdx_page83_offset(path)

    def write(file_write: bytes, data_write: bytes, disk_id: bytes) -> None:
        for n, header in enumerate(headers):
            header[4:8] = bytes(4)
            header[8:16] = struct.pack("<Q", 2 if n == newer else 1)
            header[16:32] = file_write
            header[32:48] = data_write
            header[4:8] = struct.pack("<I", _crc32c(bytes(header)))
            _patch(path, _VHDX_HEADERS[n], bytes(header))
        _patch(path, page83, disk_id)

    _patch(path, log_offset, bytes(log_length))
    write(bytes(16), bytes(16), bytes(16))
    digest = _digest(path)
    write(*(_derived(digest, what).bytes_le for what in ("vhdx-file", "vhdx-data", "vhdx-disk")))


_FIXERS: dict[Format, Callable[[Path, str, bool], None]] = {
    Format.VDI: _fix_vdi,
    Format.VPC: _fix_vpc,
    Format.VMDK: _fix_vmdk,
    Format.VHDX: _fix_vhdx,
}

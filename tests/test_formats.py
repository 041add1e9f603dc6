"""formats: every format checked and read back by qemu-img (or zstd), same bytes twice,
the random header fields fixed, qcow2-compressed byte-identical to `qemu-img convert -c`.

The source is a raw disk of 520 MiB + 3 sectors, mostly holes: compressible and random
(incompressible) data, zeros written out, data past the first L2 table's 512 MiB, and a
last cluster that is not whole. Conversions take well under a second each.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
from imagecheck import qemu_img_info

from make_disk_image import formats, qcow2
from make_disk_image.models import Format
from make_disk_image.process import StepError

MIB = 1024 * 1024
QEMU_NAMES = {
    Format.QCOW2: "qcow2",
    Format.QCOW2_COMPRESSED: "qcow2",
    Format.QCOW2_ZSTD: "qcow2",
    Format.VDI: "vdi",
    Format.VPC: "vpc",
    Format.VMDK: "vmdk",
    Format.VHDX: "vhdx",
}
CONVERTED = [f for f in Format if f is not Format.RAW]
RANDOM_HEADERS = [Format.VDI, Format.VPC, Format.VMDK, Format.VHDX]


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("formats") / "disk.raw"
    text = b"/nix/store/ lib/x86_64-linux-gnu GLIBC_2.34 .text .rodata " * 20000
    with path.open("wb") as f:
        f.write(text[: 3 * MIB])
        f.write(rng.randbytes(2 * MIB))  # incompressible: clusters stored plain
        f.write(bytes(MIB))  # zeros written out: unallocated in the image
        f.seek(17 * MIB + 12345)
        f.write(text[:MIB] + rng.randbytes(100_000))
        f.seek(515 * MIB)  # past the first L2 table (512 MiB)
        f.write(rng.randbytes(300_000) + text[: 2 * MIB])
        # Half-compressible clusters last: the file then ends inside a cluster, on the
        # sector after the last compressed byte, as qemu-img ends it.
        f.seek(519 * MIB)
        for _ in range(10):
            f.write(rng.randbytes(20_000) + text[:45_536])
        f.truncate(520 * MIB + 3 * 512)
    return path


def convert(fmt: Format, raw: Path, dest: Path, *, deterministic: bool = True) -> Path:
    # One final name for all: a VMDK names its file in its descriptor.
    formats.convert(fmt, raw, dest, deterministic=deterministic, step="test",
                    name=f"nixos.{fmt.extension}")  # fmt: skip
    return dest


def read_back_equal(fmt: Format, raw: Path, image: Path, scratch: Path) -> None:
    if fmt is Format.RAW_ZSTD:
        assert run("zstd", "-t", "-q", image).returncode == 0
        back = scratch / "back.raw"
        assert run("zstd", "-d", "-q", "-f", image, "-o", back).returncode == 0
        assert back.read_bytes() == raw.read_bytes()
        return
    name = QEMU_NAMES[fmt]
    info = qemu_img_info(image, name)
    assert (info["format"], info["virtual-size"]) == (name, raw.stat().st_size)
    compare = run("qemu-img", "compare", "-f", "raw", "-F", name, raw, image)
    assert compare.returncode == 0, compare.stdout + compare.stderr


@pytest.mark.parametrize("fmt", CONVERTED, ids=[f.value for f in CONVERTED])
def test_checked_read_back_and_same_bytes_twice(fmt: Format, raw: Path, tmp_path: Path) -> None:
    first = convert(fmt, raw, tmp_path / f"1.{fmt.extension}")
    second = convert(fmt, raw, tmp_path / f"2.{fmt.extension}")
    if fmt is not Format.VPC and fmt in QEMU_NAMES:  # qemu-img cannot check VHD
        check = run("qemu-img", "check", "-f", QEMU_NAMES[fmt], first)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No errors were found" in check.stdout
    read_back_equal(fmt, raw, first, tmp_path)
    assert first.read_bytes() == second.read_bytes()
    assert raw.exists()


@pytest.mark.parametrize("fmt", RANDOM_HEADERS, ids=[f.value for f in RANDOM_HEADERS])
def test_random_fields_stay_random_unless_deterministic(
    fmt: Format, raw: Path, tmp_path: Path
) -> None:
    """qemu-img draws them at random (so the test above can fail), and a build that
    does not ask for determinism keeps that; the image reads back all the same."""
    images = [
        convert(fmt, raw, tmp_path / f"{n}.{fmt.extension}", deterministic=False)
        for n in range(2)
    ]
    assert images[0].read_bytes() != images[1].read_bytes()
    read_back_equal(fmt, raw, images[0], tmp_path)


def test_qcow2_compressed_is_qemu_imgs_bytes_on_any_core_count(raw: Path, tmp_path: Path) -> None:
    reference = tmp_path / "qemu-img.qcow2"
    result = run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, reference)
    assert result.returncode == 0, result.stderr
    for workers in (1, 3):
        ours = tmp_path / f"ours-{workers}.qcow2"
        qcow2.write(raw, ours, workers=workers)
        assert ours.read_bytes() == reference.read_bytes(), workers
    check = run("qemu-img", "check", ours).stdout
    assert "compressed clusters" in check and "0.00% compressed" not in check


def test_vhdx_both_headers_valid(raw: Path, tmp_path: Path) -> None:
    """qemu reads either header copy alone (their CRC-32C is right), neither when both
    are broken, and the CRC is qemu's own on a header it wrote."""
    plain = convert(Format.VHDX, raw, tmp_path / "plain.vhdx", deterministic=False)
    header = bytearray(plain.read_bytes()[64 * 1024 : 68 * 1024])
    stored = struct.unpack_from("<I", header, 4)[0]
    header[4:8] = bytes(4)
    assert formats._crc32c(bytes(header)) == stored
    assert formats._crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value

    fixed = convert(Format.VHDX, raw, tmp_path / "fixed.vhdx").read_bytes()
    broken = []
    for offset in (64 * 1024, 128 * 1024):
        image = tmp_path / f"broken-{offset}.vhdx"
        data = bytearray(fixed)
        data[offset + 100] ^= 0xFF
        image.write_bytes(data)
        read_back_equal(Format.VHDX, raw, image, tmp_path)
        broken.append(data)
    both = tmp_path / "both.vhdx"
    both.write_bytes(bytes(broken[0][: 128 * 1024]) + bytes(broken[1][128 * 1024 :]))
    assert "No valid VHDX header" in run("qemu-img", "info", both).stderr


def test_vhd_footers_agree_and_checksum(raw: Path, tmp_path: Path) -> None:
    data = convert(Format.VPC, raw, tmp_path / "a.vhd").read_bytes()
    assert data[:512] == data[-512:]
    assert data[24:28] == bytes(4)  # created 2000-01-01, the VHD epoch
    broken = tmp_path / "broken.vhd"
    broken.write_bytes(data[:68] + bytes([data[68] ^ 1]) + data[69:])
    assert "checksum" in run("qemu-img", "info", "-f", "vpc", broken).stderr


def test_vmdk_descriptor_names_the_final_file(raw: Path, tmp_path: Path) -> None:
    for deterministic in (True, False):
        partial = tmp_path / ".nixos.vmdk.partial"
        formats.convert(Format.VMDK, raw, partial, deterministic=deterministic, step="test",
                        name="nixos.vmdk")  # fmt: skip
        descriptor = partial.read_bytes()[512 : 512 * 21].rstrip(b"\0").decode()
        assert 'RW 1064963 SPARSE "nixos.vmdk"' in descriptor, descriptor
        assert 'createType="streamOptimized"' in descriptor
    # qemu-img's random CID has no leading zeros: a short one is replaced as well.
    fixed = partial.read_bytes()
    cid = re.search(r"^CID=([0-9a-f]+)$", descriptor, flags=re.M)
    assert cid is not None
    partial.write_bytes(fixed.replace(f"CID={cid[1]}\n".encode(), b"CID=abc\n", 1))
    formats.fix_header(Format.VMDK, partial, "nixos.vmdk", deterministic=True, step="test")
    again = partial.read_bytes()
    formats.fix_header(Format.VMDK, partial, "nixos.vmdk", deterministic=True, step="test")
    assert b"CID=abc\n" not in again and partial.read_bytes() == again


def test_commands() -> None:
    argv = formats.command(Format.VPC, Path("a"), Path("b"), cores=2)
    assert argv[-4:] == ["-o", "force_size=on", "a", "b"]
    assert formats.command(Format.RAW_ZSTD, Path("a"), Path("b"), cores=3)[:2] == ["zstd", "-T3"]
    assert formats.product_line(Format.QCOW2_COMPRESSED, Path("/o/nixos.qcow2")) == (
        "file qcow2-image /o/nixos.qcow2\n"
    )


def test_broken_output_is_a_step_error(raw: Path, tmp_path: Path) -> None:
    not_vhdx = tmp_path / "not.vhdx"
    not_vhdx.write_bytes(bytes(300 * 1024))
    with pytest.raises(StepError, match=r"finish: fixing the header of .*not\.vhdx: no VHDX"):
        formats.fix_header(Format.VHDX, not_vhdx, "x", deterministic=True, step="finish")
    with pytest.raises(StepError, match=r"finish: writing .*missing/a\.qcow2 as qcow2"):
        formats.convert(Format.QCOW2_COMPRESSED, raw, tmp_path / "missing/a.qcow2",
                        deterministic=True, step="finish")  # fmt: skip


def test_raw_zstd_same_bytes_on_any_core_count(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builds on machines with other NIX_BUILD_CORES agree (zstd -T1 vs -T3)."""
    images = []
    for cores in ("1", "3"):
        monkeypatch.setenv("NIX_BUILD_CORES", cores)
        assert formats.workers() == int(cores)
        images.append(convert(Format.RAW_ZSTD, raw, tmp_path / f"{cores}.img.zst").read_bytes())
    assert images[0] == images[1]

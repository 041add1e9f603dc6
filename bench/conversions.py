"""Image conversions: `qemu-img convert` to qcow2 (plain, zlib, zstd), and every
`format` as the engine's finish makes it beside the reference's `qemu-img convert -c`."""

from __future__ import annotations

import sys
from pathlib import Path

from engine_cli import REPO
from measuring import human, run, stopwatch, timed


def bench_qcow2(work: Path, root: Path, size_mib: int) -> None:
    raw = work / "convert.img"
    raw.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, raw, f"{size_mib}M"])
    used = int(run(["du", "-B1", raw]).stdout.split()[0])
    print(f"  source: raw {human(raw.stat().st_size)} ({human(used)} allocated)")
    variants = {
        "qcow2": [],
        "qcow2 zlib (-c)": ["-c"],
        "qcow2 zstd (-c -o compression_type=zstd)": ["-c", "-o", "compression_type=zstd"],
    }
    for name, extra in variants.items():
        out = work / "convert.qcow2"
        out.unlink(missing_ok=True)
        seconds = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *extra, raw, out])
        print(f"  {name:<42} {seconds:6.1f} s   {human(out.stat().st_size)}")
        out.unlink()
    raw.unlink()


def bench_formats(work: Path, root: Path, size_mib: int) -> None:
    sys.path.insert(0, str(REPO))
    from make_disk_image import formats, qcow2
    from make_disk_image.models import Format

    raw = work / "convert.img"
    raw.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", root, raw, f"{size_mib}M"])
    used = int(run(["du", "-B1", raw]).stdout.split()[0])
    print(f"  source: raw {human(raw.stat().st_size)} ({human(used)} allocated), "
          f"{formats.workers()} workers")
    out = work / "converted"
    reference = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, out])
    reference_bytes = out.read_bytes()
    print(f"  {'reference: qemu-img convert -c':<40} {reference:6.1f} s   "
          f"{human(out.stat().st_size)}")
    out.unlink()
    with stopwatch() as elapsed:
        qcow2.write(raw, out, workers=1)
    print(f"  {'qcow2-compressed, 1 worker':<40} {elapsed():6.1f} s   {human(out.stat().st_size)}"
          f"   ({elapsed() / reference:.2f}x the reference)")
    out.unlink()
    for fmt in Format:
        if fmt is Format.RAW:
            continue
        with stopwatch() as elapsed:
            formats.convert(fmt, raw, out, deterministic=True, step="bench",
                            name=f"nixos.{fmt.extension}")  # fmt: skip
        note = ""
        if fmt is Format.QCOW2_COMPRESSED:
            same = "identical bytes" if out.read_bytes() == reference_bytes else "OTHER BYTES"
            note = f"   ({elapsed() / reference:.2f}x the reference, {same})"
        print(f"  {fmt.value + ' (.' + fmt.extension + ')':<40} {elapsed():6.1f} s   "
              f"{human(out.stat().st_size)}{note}", flush=True)
        out.unlink()
    raw.unlink()

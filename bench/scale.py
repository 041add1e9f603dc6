#!/usr/bin/env python3
"""The build at scale: the test system plus a synthetic closure (~2 GB, ~100k entries).

    python3 bench/scale.py [--size-mb 2000] [--layout legacy] [--workdir DIR]

With default arguments (deterministic, installBootLoader: GRUB on `legacy`), through
`make-disk-image build` (the guest phase in a TCG VM, as without KVM), it prints:
  - the build's wall time and each phase's time from its log;
  - the phases again as Nix runs them (prepare, the VM, finish: separate processes),
    each with its time and peak RSS (the largest process of the phase, mke2fs and qemu
    included);
  - in the same run, the plain baselines: `cp -a` of the closure and a native
    `mke2fs -d` of that copy, and the guest's time for the bare test system.
Asserts nothing. Run as root (Debian's Nix is single-user here); needs about 4x
--size-mb free under --workdir (default: /var/tmp, not the VM's /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import make_closure  # noqa: E402
from testsys.system import NIXOS_ENTER_DIR, BootLoader, build_test_system  # noqa: E402

MIB = 1024 * 1024
FS_UUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
PHASE_LINES = {
    "prepare": re.compile(r"prepare: done in ([0-9.]+) s"),
    "guest (in the VM)": re.compile(r"guest: done in ([0-9.]+) s"),
    "VM (boot to poweroff)": re.compile(r"\[vm\] guest ran for ([0-9.]+) s"),
    "finish": re.compile(r"finish: done in ([0-9.]+) s"),
}
DETAIL_LINES = re.compile(
    r"(prepare: staged .*|.*mke2fs took .*|guest: record changes: .*|guest: done in .*|"
    r"finish: \d+ entries .*|finish: .* partition: .*|finish: kept .*)"
)


def env_for(work: Path) -> dict[str, str]:
    scratch = work / "tmp"
    scratch.mkdir(exist_ok=True)
    return dict(
        os.environ,
        PATH=f"{NIXOS_ENTER_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        TMPDIR=str(scratch),
        PYTHONPATH=str(REPO),
    )


def measured(argv: list[str], **kwargs: object) -> tuple[float, int, str]:
    """Wall time, peak RSS (KiB) of the largest process, output (stderr+stdout)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:])\n"
        "sys.stderr.write(f'\\nPEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n')\n"
        "sys.exit(p.returncode)\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}")
    match = re.search(r"PEAK_RSS_KIB=(\d+)", proc.stdout)
    return seconds, int(match.group(1)) if match else 0, proc.stdout


def wall(argv: list[str], **kwargs: object) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - started


def build(spec: dict[str, object], work: Path, name: str) -> tuple[float, int, str]:
    spec_file = work / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    out = work / name
    return measured(
        [sys.executable, "-m", "make_disk_image", "build", str(spec_file), "--out", str(out)],
        env=env_for(work),
    )


def phases_apart(spec: dict[str, object], work: Path) -> list[tuple[str, float, int]]:
    """prepare, the guest in the VM, finish: separate processes, as under Nix."""
    build_dir = work / "apart" / "build"
    out = work / "apart" / "out"
    build_dir.mkdir(parents=True)
    spec_file = build_dir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = env_for(work)
    engine = [sys.executable, "-m", "make_disk_image"]
    rows = []
    t, rss, _ = measured([*engine, "prepare", str(spec_file), "--out", str(out)], cwd=build_dir,
                         env=env)
    rows.append(("prepare", t, rss))
    guest = [
        sys.executable, "-m", "testsys.vmtools", "--disk", str(build_dir / "nixos.raw"),
        "--share", f"{build_dir}:/tmp/build", "--share", f"{build_dir / 'xchg'}:/tmp/xchg:rw",
        "--mem", "1024", "--cwd", "/tmp/build",
        "--env", f"PATH={env['PATH']}", "--env", f"PYTHONPATH={REPO}", "--env", "HOME=/tmp",
        "--env", "TMPDIR=/tmp", "--env", "PYTHONDONTWRITEBYTECODE=1",
        "--", sys.executable, "-m", "make_disk_image", "guest", "/tmp/build/spec.json",
    ]  # fmt: skip
    t, rss, _ = measured(guest, env=env)
    rows.append(("guest VM (qemu)", t, rss))
    t, rss, _ = measured([*engine, "finish", str(spec_file), "--out", str(out)], cwd=build_dir,
                         env=env)
    rows.append(("finish", t, rss))
    return rows


def report_build(title: str, seconds: float, rss: int, log: str) -> dict[str, float]:
    print(f"{title}: {seconds:.1f} s wall, peak RSS {rss / 1024:.0f} MiB (largest process)")
    found: dict[str, float] = {}
    for name, pattern in PHASE_LINES.items():
        match = pattern.search(log)
        if match:
            found[name] = float(match.group(1))
            print(f"  {name:<24} {found[name]:7.1f} s")
    for line in DETAIL_LINES.findall(log):
        print(f"    {line.strip()}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2000)
    parser.add_argument("--packages", type=int, default=80)
    parser.add_argument("--layout", default="legacy")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdi-scale-", dir=args.workdir))
    try:
        mke2fs = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True)
        print(f"machine: {os.cpu_count()} cores; {mke2fs.stderr.splitlines()[0]}")
        started = time.monotonic()
        synthetic = make_closure(work, args.size_mb * MIB, packages=args.packages)
        print(f"synthetic closure: {len(synthetic.store_paths)} store paths, "
              f"{synthetic.entries:,} entries, {synthetic.apparent_bytes / MIB:,.0f} MiB "
              f"({time.monotonic() - started:.0f} s to make)", flush=True)
        loader = BootLoader(grub_devices=("/dev/vda",)) if args.layout.startswith("legacy") \
            else BootLoader(systemd_boot=True)
        bare = build_test_system(work / "system-bare", loader)
        big = build_test_system(work / "system-big", loader,
                                additional_paths=[Path(p) for p in synthetic.store_paths])
        spec_kw: dict[str, object] = {"partitionTableType": args.layout}

        # Baselines, in the same run (best of 2): cp -a of the closure, mke2fs -d of the copy.
        copy = work / "copy"
        cp_times, mke2fs_times = [], []
        used = 0
        for _ in range(2):
            copy.mkdir()
            cp_times.append(wall(["cp", "-a", *synthetic.store_paths, str(copy)]))
            used = int(subprocess.run(["du", "-sb", str(copy)], check=True, capture_output=True,
                                      text=True).stdout.split()[0])
            fs = work / "baseline.img"
            fs_kib = int(used * 1.6) // 1024 + 64 * 1024
            mke2fs_times.append(wall(
                ["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-F", "-U", FS_UUID,
                 "-d", str(copy), str(fs), f"{fs_kib}K"],
                env=dict(os.environ, SOURCE_DATE_EPOCH="1")))
            fs.unlink()
            shutil.rmtree(copy)
        cp_s, mke2fs_s = min(cp_times), min(mke2fs_times)
        print(f"baseline cp -a of the closure ({used / MIB:,.0f} MiB): {cp_s:.1f} s "
              f"(runs: {', '.join(f'{t:.1f}' for t in cp_times)})")
        print(f"baseline mke2fs -d of that copy (metadata_csum): {mke2fs_s:.1f} s "
              f"(runs: {', '.join(f'{t:.1f}' for t in mke2fs_times)})", flush=True)

        bare_s, bare_rss, bare_log = build(bare.spec(**spec_kw), work, "bare")
        bare_phases = report_build("make-disk-image build, bare test system", bare_s, bare_rss,
                                   bare_log)
        big_s, big_rss, big_log = build(big.spec(**spec_kw), work, "big")
        big_phases = report_build(f"make-disk-image build, test system + {args.size_mb} MB",
                                  big_s, big_rss, big_log)
        print("phases as Nix runs them (separate processes), test system + closure:")
        for name, t, rss in phases_apart(big.spec(**spec_kw), work):
            print(f"  {name:<24} {t:7.1f} s   peak RSS {rss / 1024:6.0f} MiB")
        guest_key = "guest (in the VM)"
        if guest_key in bare_phases and guest_key in big_phases:
            print(f"guest at scale / bare: {big_phases[guest_key] / bare_phases[guest_key]:.2f}x")
        print(f"full build / cp -a: {big_s / cp_s:.1f}x; / mke2fs -d: {big_s / mke2fs_s:.1f}x")
    finally:
        remove_unless_mounted(work)
    return 0


def remove_unless_mounted(work: Path) -> None:
    """Never remove a directory that may still hold mounts."""
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                            text=True).stdout.split()
    if any(m == str(work) or m.startswith(f"{work}/") for m in mounts):
        print(f"left {work} in place: something is still mounted under it")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

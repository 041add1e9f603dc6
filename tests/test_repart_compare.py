"""image.repart definitions built by the engine and by systemd-repart 254 in the same
test, compared, then booted.

The definitions are facts: those of nixpkgs' appliance test (nixos/tests/appliance-repart-
image.nix: an ESP with systemd-boot, its entry, kernel and initrd as `contents`; root ext4
`Minimize=guess`; sector size 512), with the XBOOTLDR and swap partitions issue 23 adds,
and of the verity-store module's layout without its verity partitions (an erofs store
under `nixStorePrefix = "/"`, `Minimize=best`). The system is the NixOS-shaped test system
(testsys.system), the peer runs as nixpkgs' builder runs it (testsys.repart).

Compared: partition types, UUIDs, labels, order and attributes; filesystem types, UUIDs
and labels; file lists with types, modes, sizes and link targets. Left out on purpose,
because they differ by design: partition sizes when repart's vfat would fail (not here),
the Nix database the engine registers in the root (nix/var/nix/db, nixpkgs #508743),
timestamps and allocation (the engine's images are bit-identical, repart's are not).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import boot_work_dir

from make_disk_image.repart import build, spec, uuids
from testsys import boot, repart, system

PEER = repart.find_peer()
pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(PEER is None, reason="systemd-repart >= 254 not found (.ci/setup "
                       "unpacks 254 from bookworm-backports)"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nix-build") is None,
                       reason="needs root (fakeroot + user namespace for the peer) and Nix"),
]
SEED = str(uuids.NIXPKGS_SEED)
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
ENGINE_ONLY = ("nix/var",)  # what only the engine writes: the Nix database


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    yield from boot_work_dir("mdi-repart-")


@pytest.fixture(scope="module")
def test_system(work_dir: Path) -> system.TestSystem:
    return system.build_test_system(work_dir / "system", system.BootLoader(), label="root")


def _esp_contents(ts: system.TestSystem, work: Path) -> dict[str, dict[str, str]]:
    entry = work / "nixos.conf"
    params = (ts.toplevel / "kernel-params").read_text().strip()
    entry.write_text("title NixOS\nlinux /EFI/nixos/kernel.efi\ninitrd /EFI/nixos/initrd.efi\n"
                     f"options init={ts.toplevel}/init {params}\n")
    return {
        "/EFI/BOOT/BOOTX64.EFI": {"source": str(SYSTEMD_BOOT)},
        "/loader/entries/nixos.conf": {"source": str(entry)},
        "/EFI/nixos/kernel.efi": {"source": str(ts.toplevel / "kernel")},
        "/EFI/nixos/initrd.efi": {"source": str(ts.toplevel / "initrd")},
    }


def _image(name: str, partitions: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "architecture": "x86-64", "seed": SEED, "sectorSize": 512,
            "partitions": partitions}


def appliance(ts: system.TestSystem, work: Path) -> dict[str, Any]:
    esp = {"Type": "esp", "Format": "vfat", "SizeMinBytes": "64M"}
    root = {"Type": "root", "Format": "ext4", "Label": "root", "Minimize": "guess"}
    swap = {"Type": "swap", "Format": "swap", "SizeMinBytes": "16M", "SizeMaxBytes": "16M"}
    xbootldr = {"Type": "xbootldr", "Format": "vfat", "SizeMinBytes": "32M"}
    return _image("appliance-gpt-image", {
        "esp": {"repartConfig": esp, "contents": _esp_contents(ts, work)},
        "root": {"repartConfig": root, "closureInfo": str(ts.closure_info)},
        "swap": {"repartConfig": swap},
        "xbootldr": {"repartConfig": xbootldr},
    })


def store_layout(ts: system.TestSystem, work: Path) -> dict[str, Any]:
    esp = {"Type": "esp", "Format": "vfat", "SizeMinBytes": "96M"}
    store = {"Type": "usr", "Format": "erofs", "Label": "store", "Minimize": "best"}
    return _image("verity-store-layout", {
        "00-esp": {"repartConfig": esp, "contents": _esp_contents(ts, work)},
        "20-store": {"repartConfig": store, "closureInfo": str(ts.closure_info),
                     "nixStorePrefix": "/"},
    })


def _table(image: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["sfdisk", "--json", image], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def _slice(image: Path, start: int, size: int, dest: Path) -> Path:
    with image.open("rb") as src, dest.open("wb") as dst:
        src.seek(start)
        remaining = size
        while remaining:
            chunk = src.read(min(remaining, 1 << 24))
            dst.write(chunk)
            remaining -= len(chunk)
    return dest


def _tree(root: Path) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            if rel.startswith(ENGINE_ONLY):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)))
            else:
                found[rel] = ("file", oct(stat.S_IMODE(st.st_mode)), str(st.st_size))
    return found


def _files(image: Path, part: dict[str, Any], fs: str, dest: Path) -> dict[str, tuple[str, ...]]:
    piece = _slice(image, part["start"] * 512, part["size"] * 512, dest.with_suffix(".img"))
    dest.mkdir()
    if fs == "ext4":
        subprocess.run(["debugfs", "-R", f"rdump / {dest}", piece], check=True,
                       capture_output=True)
    elif fs == "vfat":
        subprocess.run(["mcopy", "-s", "-n", "-i", piece, "::/", f"{dest}/"], check=True,
                       capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        # FAT has no modes: compare names and sizes only.
        return {k: v[:1] + v[2:] for k, v in _tree(dest).items()}
    elif fs == "erofs":
        subprocess.run(["fsck.erofs", f"--extract={dest}/x", piece], check=True,
                       capture_output=True)
        return _tree(dest / "x")
    piece.unlink()
    return _tree(dest)


def _describe(image: Path, work: Path) -> dict[str, Any]:
    table = _table(image)
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, part in enumerate(table):
        probe = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(part["start"] * 512),
                                image], capture_output=True, text=True).stdout
        fs = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        kind = fs.get("TYPE")
        files = _files(image, part, kind, work / f"p{i}") if kind in (
            "ext4", "vfat", "erofs") else None
        parts.append({"type": part["type"], "uuid": part["uuid"], "name": part.get("name"),
                      "attrs": part.get("attrs"), "fs": kind, "fs_uuid": fs.get("UUID"),
                      "fs_label": fs.get("LABEL"), "files": files})
    return {"partitions": parts}


def _engine(data: dict[str, Any], work: Path) -> Path:
    (work / "engine").mkdir(parents=True)
    build.build_to(spec.from_json(data), work / "out", work / "engine")
    return work / "out" / f"{data['name']}.raw"


@pytest.mark.parametrize("layout", ["appliance", "store"])
def test_same_as_systemd_repart(layout: str, test_system: system.TestSystem,
                                work_dir: Path) -> None:
    assert PEER is not None
    work = work_dir / f"compare-{layout}"
    work.mkdir()
    data = (appliance if layout == "appliance" else store_layout)(test_system, work)
    # The Nix database makes the root larger, which moves the partitions after it: the
    # offsets are compared without it (the boot test builds with it).
    engine_image = _engine({**data, "nixDatabase": False}, work)
    peer_image, seconds = repart.run_peer(PEER, data, work)
    ours = _describe(engine_image, work / "ours")
    theirs = _describe(peer_image, work / "theirs")
    for mine, peer in zip(ours["partitions"], theirs["partitions"], strict=True):
        assert {k: v for k, v in mine.items() if k != "files"} == \
            {k: v for k, v in peer.items() if k != "files"}
        assert mine["files"] == peer["files"], mine["name"]
    peer_records = json.loads((work / "peer-output.json").read_text())
    our_records = json.loads((work / "out/repart-output.json").read_text())
    assert [(r["type"], r["label"], r["uuid"], r["offset"]) for r in our_records] == \
        [(r["type"], r["label"], r["uuid"], r["offset"]) for r in peer_records]


@pytest.mark.boot
def test_engine_appliance_image_boots(test_system: system.TestSystem, work_dir: Path) -> None:
    """systemd-boot from the ESP's contents loads the kernel; the root is found by label
    and carries the derived UUID, the closure and the Nix database. (The store layout
    has no root filesystem of its own: the test system cannot boot from it alone.)"""
    work = work_dir / "boot-appliance"
    work.mkdir()
    image = _engine(appliance(test_system, work), work)
    result = boot.boot_image(image, firmware="uefi", timeout=150,
                             serial_log=work / "serial.log")
    report = result.report
    assert (report.firmware, report.fs_type, report.fs_label) == ("efi", "ext4", "root")
    assert report.fs_uuid.replace("-", "").lower() == "7981aaf42a9a4f869f1f5b42c8f28bbf"
    assert report.root_partition_number == 2  # esp, root, swap, xbootldr: by name
    assert test_system.toplevel.name in report.store_entries
    assert "/nix/var/nix/db/db.sqlite" in report.files
    assert report.stage2_version is not None

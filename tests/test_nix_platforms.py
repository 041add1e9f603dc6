"""default.nix for an image of another system: which package set supplies which part.

Evaluation only (nix-instantiate, no build). The stand-in's aarch64 set is Debian's
arm64 packages unpacked by derivations of this builder (tests/nixpkgs/cross.nix), where
real nixpkgs substitutes aarch64 packages from its binary cache. The build itself, and
the image's boot under AAVMF, is tests/test_nix_cross.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX, REPO

from testsys import guestroot

pytestmark = [
    pytest.mark.nix,
    NEEDS_NIX,
]

# An image of a NixOS configuration for `system`, built with the builder's (this
# machine's) stand-in pkgs.
IMAGE_NIX = """
{ repo, system, layout, lock, installBootLoader ? true, grubDevices ? [ "nodev" ] }:
let
  pkgs = import (repo + "/tests/nixpkgs") { };
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  config = (standIn.lib.nixosSystem {
    system = null;
    modules = [
      { nixpkgs.hostPlatform = system; nixpkgs.config.foreignDebianPackages = /. + lock; }
      { fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; }; }
      { boot.loader.grub.devices = grubDevices; }
    ];
  }).config;
in
import (repo + "/default.nix") {
  inherit pkgs config installBootLoader;
  inherit (pkgs) lib;
  partitionTableType = layout;
}
"""


@pytest.fixture(scope="module")
def lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 packages the stand-in's aarch64 set unpacks (apt's lists, no download)."""
    path = tmp_path_factory.mktemp("lock") / "arm64.json"
    path.write_text(json.dumps(guestroot.package_lock("arm64")))
    return path


def instantiate(tmp_path: Path, lock: Path, **args: Any) -> subprocess.CompletedProcess[str]:
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    argv = ["nix-instantiate", str(expr), "--arg", "repo", str(REPO), "--argstr", "lock", str(lock)]
    for key, value in args.items():
        argv += ["--arg", key, _nix(value)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _nix(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[ " + " ".join(_nix(v) for v in value) + " ]"
    raise TypeError(value)


def derivations(drv: str) -> dict[str, Any]:
    out = subprocess.run(["nix", "show-derivation", "-r", drv], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(json.loads(out))


def _closure(graph: dict[str, Any], drv: str) -> set[str]:
    seen: set[str] = set()
    todo = [drv]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(graph[path]["inputDrvs"])
    return seen


def named(graph: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    found = [(path, d) for path, d in graph.items() if path.split("-", 1)[1] == f"{name}.drv"]
    assert len(found) == 1, (name, [p for p, _ in found])
    return found[0]


def test_aarch64_image_runs_on_the_builder_with_the_guest_from_aarch64_packages(
    tmp_path: Path, lock: Path
) -> None:
    proc = instantiate(tmp_path, lock, system="aarch64-linux", layout="efi")
    assert proc.returncode == 0, proc.stderr
    drv = proc.stdout.strip()
    graph = derivations(drv)
    image = graph[drv]
    # The image's derivation (prepare, the VM, finish) is the builder's, and so is every
    # derivation it takes directly: prepare's and finish's tools, qemu, the engine.
    assert image["system"] == "x86_64-linux"
    assert {graph[d]["system"] for d in image["inputDrvs"]} == {"x86_64-linux"}
    command = image["env"]["buildCommand"]
    assert "-m make_disk_image.vm --system aarch64-linux --kernel" in command
    _, qemu = named(graph, "qemu-debian")
    assert "qemu-system-arm" in qemu["env"]["optionalDebianPackages"]

    # The guest: assembled by builder derivations from the image system's packages, which
    # are Debian's arm64 ones, fetched (fixed-output) and unpacked by the builder too.
    # Only the NixOS system itself (the stand-in's, which cannot boot) is aarch64-linux's.
    toplevel = next(p for p in graph if p.split("-", 1)[1].startswith("nixos-system-"))
    assert {p for p, d in graph.items() if d["system"] != "x86_64-linux"} <= _closure(
        graph, toplevel
    )
    _, root = named(graph, "make-disk-image-guest-root-aarch64-linux")
    _, engine = named(graph, "make-disk-image-guest-aarch64-linux")
    _, kernel = named(graph, "linux-debian-arm64")
    assert any(d.endswith(f"-{json.loads(lock.read_text())['kernel']}_arm64.deb.drv")
               for d in kernel["inputDrvs"])  # fmt: skip
    for name in ("linux", "python3", "pyudev", "busybox", "bash", "coreutils", "util-linux"):
        path, _ = named(graph, f"{name}-debian-arm64")
        assert path in {**root["inputDrvs"], **engine["inputDrvs"]}, name
        debs = [d for d in graph[path]["inputDrvs"] if d.endswith("_arm64.deb.drv")]
        assert debs and all(graph[d]["outputs"]["out"].get("hash") for d in debs), name
    assert any(d.endswith("-nixos-enter.drv") for d in root["inputDrvs"])
    # nixpkgs' busybox (dynamically linked, a Hydra job), not pkgsStatic's (no job).
    _, busybox = named(graph, "busybox-debian-arm64")
    assert [d.split("-", 1)[1] for d in busybox["inputDrvs"] if d.endswith(".deb.drv")] == [
        "busybox_arm64.deb.drv"
    ]

    # The spec tells the engine the image's system.
    _, spec = named(graph, "nixos-disk-image-spec.json")
    assert json.loads(spec["env"]["text"])["system"] == "aarch64-linux"


@pytest.mark.parametrize("layout", ["legacy", "legacy+boot", "legacy+gpt"])
def test_bios_layout_for_aarch64_fails_at_evaluation(
    tmp_path: Path, lock: Path, layout: str
) -> None:
    proc = instantiate(tmp_path, lock, system="aarch64-linux", layout=layout)
    assert proc.returncode != 0
    assert f'argument `partitionTableType`: "{layout}" boots only through BIOS' in proc.stderr
    assert instantiate(tmp_path, lock, system="aarch64-linux", layout=layout,
                       installBootLoader=False).returncode == 0  # fmt: skip


def test_bios_grub_for_aarch64_fails_at_evaluation(tmp_path: Path, lock: Path) -> None:
    proc = instantiate(
        tmp_path, lock, system="aarch64-linux", layout="hybrid", grubDevices=["/dev/vda"]
    )
    assert proc.returncode != 0 and "argument `grubDevices`: BIOS GRUB on /dev/vda" in proc.stderr


def test_same_system_spec_is_unchanged(tmp_path: Path, lock: Path) -> None:
    """An x86_64 image on this x86_64 builder: no `system` in its spec, no guest."""
    proc = instantiate(tmp_path, lock, system="x86_64-linux", layout="efi")
    assert proc.returncode == 0, proc.stderr
    graph = derivations(proc.stdout.strip())
    _, spec = named(graph, "nixos-disk-image-spec.json")
    assert "system" not in json.loads(spec["env"]["text"])
    assert not any("guest-root" in path for path in graph)


def test_aarch64_image_takes_the_image_systems_firmware(tmp_path: Path, lock: Path) -> None:
    expr = tmp_path / "efi.nix"
    with_vars = "partitionTableType = layout; touchEFIVars = true;"
    expr.write_text(IMAGE_NIX.replace("partitionTableType = layout;", with_vars))
    proc = subprocess.run(
        ["nix-instantiate", str(expr), "--arg", "repo", str(REPO), "--argstr", "system",
         "aarch64-linux", "--argstr", "layout", "efi", "--argstr", "lock", str(lock)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    graph = derivations(proc.stdout.strip())
    _, spec_drv = named(graph, "nixos-disk-image-spec.json")
    spec = json.loads(spec_drv["env"]["text"])
    assert spec["efiFirmware"].endswith("/FV/AAVMF_CODE.fd")
    assert spec["efiVariables"].endswith("/FV/AAVMF_VARS.fd")
    # The aarch64 set's OVMF (AAVMF), whose files the builder copies.
    ovmf = [d for p, d in graph.items() if p.endswith("-OVMF-debian-fd.drv")]
    assert len(ovmf) == 1 and "/usr/share/AAVMF/AAVMF_CODE.fd" in ovmf[0]["args"][1]

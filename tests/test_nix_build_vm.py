"""The build VM: the stand-in's runInLinuxVM as strict as nixpkgs' (kvm feature, `set
-euo pipefail`, empty guest root, `-smp`); default.nix boots it only where the guest has
work; without KVM the default build is refused and `requireKVM = false` builds."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from nixbuild import (
    ESP_GUID,
    IMAGE_NIX,
    NIX_BUILD_TESTS,
    NO_GRUB,
    REPO,
    check_ext4,
    checked,
    debugfs,
    nix_build_expression,
    nix_build_image,
    partition_table,
)

pytestmark = NIX_BUILD_TESTS


VM_PROBE_NIX = """
{ repo, guestExit }:
let
  pkgs = import (repo + "/tests/nixpkgs") { };
in
pkgs.vmTools.runInLinuxVM (
  pkgs.runCommand "vmtools-probe"
    {
      FROM_DERIVATION = "yes";
      memSize = 384;
      enableParallelBuilding = true;
      QEMU_OPTS = "-smbios type=1,serial=standin-probe";
      buildInputs = [ pkgs.util-linux ];
      preVM = ''
        export FROM_PRE_VM=1
        diskImage=$PWD/probe.raw
        truncate -s 4M $diskImage
        mkdir -p $out
      '';
      postVM = ''
        head -c 13 $diskImage > $out/disk-marker
      '';
    }
    ''
      env > $out/guest-env
      ls -A / > $out/guest-root
      nproc > $out/cpus
      grep MemTotal /proc/meminfo > $out/meminfo
      cat /sys/class/dmi/id/product_serial > $out/serial
      printf written-in-vm | dd of=/dev/vda conv=notrunc,fsync status=none
      exit ${toString guestExit}
    ''
)
"""


def build_vm_probe(
    tmp_path: Path, checkout: Path, guest_exit: int
) -> subprocess.CompletedProcess[str]:
    return nix_build_expression(tmp_path, "probe.nix", VM_PROBE_NIX,
                                ["--arg", "repo", str(checkout),
                                 "--arg", "guestExit", str(guest_exit)])


def test_stand_in_run_in_linux_vm(checkout: Path, tmp_path: Path) -> None:
    """The stand-in's vmTools.runInLinuxVM behaves like nixpkgs': the environment is
    saved before preVM, the original builder runs in the guest with $diskImage as
    /dev/vda and the store shared, memSize and QEMU_OPTS reach qemu, postVM runs after,
    and the guest's exit status is the build's."""
    proc = build_vm_probe(tmp_path, checkout, 0)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    guest_env = dict(
        line.split("=", 1) for line in (out / "guest-env").read_text().splitlines() if "=" in line
    )
    assert guest_env["FROM_DERIVATION"] == "yes"
    assert "FROM_PRE_VM" not in guest_env
    assert guest_env["TMPDIR"] == "/tmp"
    mem_kib = int((out / "meminfo").read_text().split()[1])
    assert 256 * 1024 < mem_kib <= 384 * 1024
    assert (out / "serial").read_text().strip() == "standin-probe"
    assert (out / "disk-marker").read_text() == "written-in-vm"
    # An empty tmpfs root: the store and xchg shared in, the host's /usr (and its Python's
    # prefix, which may lie under /root) for the stand-in's packages, nothing else of the
    # host (no /work, /home, /var).
    root = set((out / "guest-root").read_text().split())
    assert {"nix", "tmp", "usr", "dev", "proc", "sys"} <= root
    assert not root & {"work", "home", "var", "srv", "opt"}, root
    # enableParallelBuilding: -smp cpus=$NIX_BUILD_CORES (0: all cores).
    assert int((out / "cpus").read_text()) == os.cpu_count()

    # Stage 2 runs under set -euo pipefail: a failing builder writes no exit code.
    (tmp_path / "failing").mkdir()
    failed = build_vm_probe(tmp_path / "failing", checkout, 3)
    assert failed.returncode != 0
    assert "Virtual machine didn't produce an exit code." in failed.stderr, failed.stderr[-4000:]


def test_stand_in_run_in_linux_vm_requires_kvm(checkout: Path) -> None:
    expr = f"""
      let pkgs = import {checkout}/tests/nixpkgs {{ }};
      in (pkgs.vmTools.runInLinuxVM (pkgs.runCommand "x" {{ }} "true")).requiredSystemFeatures
    """
    features = json.loads(checked(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]))
    assert features == ["kvm"]


# A Nix whose builders have no KVM: no `kvm` system feature.
NO_KVM = ["--option", "system-features", "nixos-test benchmark big-parallel"]


def test_without_kvm_the_default_build_is_refused(checkout: Path, tmp_path: Path) -> None:
    proc = nix_build_image(checkout, tmp_path, {"diskSize": 64}, extra_args=NO_KVM)
    assert proc.returncode != 0
    assert "with features {kvm} is required" in proc.stderr, proc.stderr[-3000:]


def test_require_kvm_false_builds_without_kvm(checkout: Path, tmp_path: Path) -> None:
    """The opt-in drops the kvm feature; the VM (TCG) installs GRUB and chowns."""
    proc = nix_build_image(
        checkout, tmp_path,
        {"requireKVM": False, "partitionTableType": "legacy", "additionalSpace": "16M",
         "contents": [{"source": str(REPO / "README.md"), "target": "/etc/readme",
                       "user": "root", "group": "root"}]},
        extra_args=NO_KVM,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    drv = json.loads(checked(["nix", "show-derivation", str(out)]))
    env = next(iter(drv.values()))["env"]
    assert "kvm" not in env.get("requiredSystemFeatures", "")
    image = out / "nixos.img"
    _, parts = partition_table(image)
    check_ext4(f"{image}?offset={parts[0].offset}")
    # The image holds the contents entry the guest chowned (the result may be Nix's
    # cached one, without a build log).
    assert "readme" in debugfs(f"{image}?offset={parts[0].offset}", "ls -l /etc")


def vm_features(checkout: Path, tmp_path: Path, image_args: Mapping[str, Any]) -> list[str]:
    """The image derivation's requiredSystemFeatures: ["kvm"] where it boots a build VM."""
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    call = (f"(import {expr}) {{ repo = {checkout}; imageArgs = ''{json.dumps(image_args)}''; "
            f"configModule = ''{json.dumps(NO_GRUB)}''; }}")
    out = checked(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                   f"({call}).requiredSystemFeatures or [ ]"])
    return json.loads(out)  # type: ignore[no-any-return]


OWNED = {"source": str(REPO / "README.md"), "target": "/etc/readme"}


@pytest.mark.parametrize("image_args", [
    {},
    {"installBootLoader": False},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "0", "group": "00"}]},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "alice", "group": "100"}]},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "root", "group": "root"}]},
    {"installBootLoader": False, "touchEFIVars": True, "partitionTableType": "efi"},
    {"onlyNixStore": True, "partitionTableType": "none", "installBootLoader": False},
])
def test_a_build_vm_only_where_the_guest_has_work(checkout: Path, tmp_path: Path,
                                                 image_args: dict[str, Any]) -> None:
    """default.nix boots the build VM exactly where the engine's guest has work
    (prepare.guest_mounts_root) or the firmware may write efi-vars.fd."""
    from make_disk_image.models import ContentEntry, Spec
    from make_disk_image.prepare import guest_mounts_root

    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y",
                installBootLoader=image_args.get("installBootLoader", True),
                onlyNixStore=image_args.get("onlyNixStore", False),
                contents=tuple(ContentEntry(**c) for c in image_args.get("contents", [])))
    boots = guest_mounts_root(spec) or bool(image_args.get("touchEFIVars"))
    assert vm_features(checkout, tmp_path, image_args) == (["kvm"] if boots else [])


def test_without_a_boot_loader_no_vm_and_no_kvm(checkout: Path, tmp_path: Path) -> None:
    """No boot loader and no owners by name: prepare and finish alone, on a builder
    without KVM, and the image is complete (its ESP made by finish)."""
    proc = nix_build_image(checkout, tmp_path, {"partitionTableType": "efi",
                                                "installBootLoader": False},
                           extra_args=NO_KVM)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "guest:" not in proc.stderr  # no guest phase ran
    image = Path(proc.stdout.strip().splitlines()[-1]) / "nixos.img"
    table = json.loads(checked(["sfdisk", "--json", str(image)]))
    parts = table["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == [ESP_GUID, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]

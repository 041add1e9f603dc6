"""default.nix built inside a real Nix sandbox, as NixOS builds it (`sandbox = true`).

This machine's Nix runs unsandboxed for the rest of the suite (/etc/nix/nix.conf). Here
each build runs with `--option sandbox true` and `sandbox-fallback = false` (no silent
unsandboxed build), as a build user of its own group (`mdi-nixbld`, made by .ci/setup),
so the builder sees the store as a NixOS builder does: owned by the overflow uid. The
stand-in nixpkgs' packages are links to Debian's binaries, which the sandbox shows only
through `extra-sandbox-paths`: the merged-/usr tree and the links its packages are named
by (`/bin`, `/sbin`, `/lib`, `/lib64`: the loader behind /lib64 links into /lib), and for
the build VM `/boot` (the host kernel the stand-in's VM boots). Nothing else of the
host: no /etc beyond Nix's own, no /var; /dev/kvm only where the derivation requires the
`kvm` feature (Nix adds it; it belongs to nobody there, and the stand-in's VM is TCG).

Each sandboxed build carries a fresh `postVM` (a nonce), so it runs rather than coming
from the store; the same arguments without the nonce, built unsandboxed (or taken from
the store, where an earlier unsandboxed build left them), are the reference.
"""

from __future__ import annotations

import ctypes
import grp
import platform
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_repart_nix
from conftest import NEEDS_NIX
from nixbuild import (
    BuildResult,
    check_ext4,
    checked,
    ext4_header,
    nix_build_image,
    partition_table,
)

pytestmark = [pytest.mark.nix, NEEDS_NIX]

BUILD_USERS_GROUP = "mdi-nixbld"
# What the stand-in's links to Debian's binaries need: /usr, and the merged-/usr links
# through which its packages (/bin/bash, /sbin/mkfs.ext4, /sbin/modprobe) and the ELF
# loader (/lib64/ld-linux-x86-64.so.2 -> /lib/...) are named.
HOST_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64")
# The stand-in's build VM also boots the host's kernel.
VM_HOST_PATHS = (*HOST_PATHS, "/boot")
# What a build records of its own root, in $out: the proof it ran in the sandbox.
RECORD_ROOT = "ls -A / > $out/build-root"

STORE_IMAGE = {"onlyNixStore": True, "installBootLoader": False,
               "partitionTableType": "none", "copyChannel": False, "fsType": "erofs"}
BTRFS_ROOT = {"fsType": "btrfs", "partitionTableType": "efi", "installBootLoader": False,
              "copyChannel": False}


def sandbox_options(host_paths: tuple[str, ...], *, build_users: bool = True) -> list[str]:
    options = ["--option", "sandbox", "true", "--option", "sandbox-fallback", "false",
               "--option", "extra-sandbox-paths", " ".join(host_paths)]
    if build_users:
        options += ["--option", "build-users-group", BUILD_USERS_GROUP]
    return options


@pytest.fixture(scope="module", autouse=True)
def sandbox_available(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip where this machine cannot run a Nix sandbox at all: a trivial derivation,
    sandboxed, with nothing of the host. Anything else failing later is the product's."""
    try:
        members = grp.getgrnam(BUILD_USERS_GROUP).gr_mem
    except KeyError:
        members = []
    assert members, f"no build users: group {BUILD_USERS_GROUP} with members (run .ci/setup)"
    tmp = tmp_path_factory.mktemp("probe")
    nonce = uuid.uuid4().hex
    expr = (f'derivation {{ name = "sandbox-probe"; system = builtins.currentSystem; '
            f'builder = "/bin/sh"; args = [ "-c" "echo {nonce} > $out" ]; }}')
    proc = subprocess.run(
        ["nix-build", "-E", expr, "--out-link", str(tmp / "result"),
         *sandbox_options(HOST_PATHS)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"this machine cannot run a Nix sandbox: {proc.stderr.strip()[-500:]}")


# A seccomp filter failing unshare(2) with CLONE_NEWUSER with EPERM: what a host that
# refuses the build user a user namespace (an LSM, a container's seccomp profile) does
# to the builder. Nix makes its sandbox with clone(2), which the filter leaves alone.
# Per machine: the audit architecture and unshare's syscall number.
_UNSHARE_SYSCALL = {"x86_64": (0xC000003E, 272), "aarch64": (0xC00000B7, 97)}
_LD, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06  # classic BPF: ld abs, jeq, jset, ret
NEEDS_FILTER = pytest.mark.skipif(platform.machine() not in _UNSHARE_SYSCALL,
                                  reason="unshare's syscall number is not known here")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def refuse_user_namespaces() -> None:
    """In the child before exec: install the filter (prctl PR_SET_SECCOMP, mode filter;
    root needs no no_new_privs). It is inherited by nix-build and its builders."""
    arch, unshare_nr = _UNSHARE_SYSCALL[platform.machine()]
    # struct sock_filter (code, jt, jf, k); jumps count from the next instruction.
    program = [
        (_LD, 0, 0, 4), (_JEQ, 0, 4, arch),         # seccomp_data.arch, else allow
        (_LD, 0, 0, 0), (_JEQ, 0, 2, unshare_nr),   # .nr: unshare, else allow
        (_LD, 0, 0, 16), (_JSET, 1, 0, 0x10000000),  # .args[0] & CLONE_NEWUSER: refuse
        (_RET, 0, 0, 0x7FFF0000),                   # SECCOMP_RET_ALLOW
        (_RET, 0, 0, 0x00050000 | 1),               # SECCOMP_RET_ERRNO | EPERM
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def build(checkout: Path, tmp_path: Path, args: dict[str, Any],
          options: list[str], *, refused: bool = False) -> BuildResult:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = nix_build_image(checkout, tmp_path, args, extra_args=options,
                           preexec_fn=refuse_user_namespaces if refused else None)
    assert proc.returncode == 0, f"nix-build failed:\n{proc.stderr[-6000:]}"
    return BuildResult(out=Path(proc.stdout.strip().splitlines()[-1]), log=proc.stderr)


def build_sandboxed(checkout: Path, tmp_path: Path, args: dict[str, Any],
                    host_paths: tuple[str, ...], *, build_users: bool = True,
                    refused: bool = False) -> BuildResult:
    """A fresh build in the sandbox: its root is the sandbox's, not the host's."""
    nonce = {"postVM": f"{RECORD_ROOT}; echo {uuid.uuid4().hex} > $out/nonce"}
    result = build(checkout, tmp_path / "sandboxed", args | nonce,
                   sandbox_options(host_paths, build_users=build_users), refused=refused)
    root = set((result.out / "build-root").read_text().split())
    assert root <= {"bin", "build", "dev", "etc", "nix", "proc", "tmp", *(
        p.strip("/") for p in host_paths)}, root
    return result


def build_reference(checkout: Path, tmp_path: Path, args: dict[str, Any]) -> BuildResult:
    """The same arguments unsandboxed (the suite's nix.conf), nonce aside."""
    result = build(checkout, tmp_path / "reference", args | {"postVM": RECORD_ROOT}, [])
    assert "var" in (result.out / "build-root").read_text().split()
    return result


def storeview_lines(log: str) -> list[str]:
    """The engine's lines saying how the tool's tree was made."""
    return [line for line in log.splitlines()
            if "store paths not bound" in line or "store paths checked and bound" in line
            or "store view was refused" in line]


def same_bytes(one: Path, other: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(one), str(other)], check=False).returncode == 0


def test_erofs_store_image_in_the_sandbox(checkout: Path, tmp_path: Path) -> None:
    """mkfs.erofs reads the store in place: erofs-utils runs with --all-root, so the
    overflow uid does not matter, and the nested user namespace is allowed."""
    sandboxed = build_sandboxed(checkout, tmp_path, STORE_IMAGE, HOST_PATHS)
    lines = storeview_lines(sandboxed.log)
    assert any("the tree for erofs: 4 store paths checked and bound" in line
               for line in lines), sandboxed.log[-4000:]
    assert not any("not bound" in line or "refused" in line for line in lines), lines
    image = sandboxed.out / "nixos.img"
    checked(["fsck.erofs", str(image)])
    reference = build_reference(checkout, tmp_path, STORE_IMAGE)
    assert same_bytes(image, reference.out / "nixos.img")


def btrfs_root(result: BuildResult, tmp_path: Path) -> Path:
    """The image's root partition as a file of its own (btrfs check takes no offset)."""
    image = result.out / "nixos.img"
    _, parts = partition_table(image)
    part = tmp_path / f"root-{result.out.name}.btrfs"
    with image.open("rb") as src, part.open("wb") as dst:
        src.seek(parts[-1].offset)
        dst.write(src.read(parts[-1].size * 512))
    checked(["btrfs", "check", "--readonly", str(part)])
    return part


@pytest.mark.vm
def test_btrfs_root_in_the_sandbox(checkout: Path, tmp_path: Path) -> None:
    """The engine's btrfs writer reads the store as it is (the overflow uid's for a build
    user, the builder's own as root) and gives every entry its own owner: both sandboxed
    images are byte for byte the unsandboxed one. mkfs.btrfs is not run (it would copy
    the store, whose owners it records)."""
    copied = build_sandboxed(checkout, tmp_path, BTRFS_ROOT, VM_HOST_PATHS)
    bound = build_sandboxed(checkout, tmp_path / "as-root", BTRFS_ROOT, VM_HOST_PATHS,
                            build_users=False)
    reference = build_reference(checkout, tmp_path, BTRFS_ROOT)
    for result in (copied, bound):
        assert "btrfs_write took" in result.log, result.log[-4000:]
        assert not storeview_lines(result.log), result.log[-4000:]
        btrfs_root(result, tmp_path)
        assert same_bytes(result.out / "nixos.img", reference.out / "nixos.img")


@pytest.mark.vm
def test_default_image_through_the_build_vm_in_the_sandbox(
    checkout: Path, tmp_path: Path
) -> None:
    """The default arguments: the stand-in's build VM (TCG, the store over 9p, qemu
    run by the build user) installs the boot loader; the image is the unsandboxed one."""
    sandboxed = build_sandboxed(checkout, tmp_path, {}, VM_HOST_PATHS)
    assert "guest: done in" in sandboxed.log, sandboxed.log[-4000:]
    image = sandboxed.out / "nixos.img"
    _, parts = partition_table(image)
    root = f"{image}?offset={parts[0].offset}"
    check_ext4(root)
    assert ext4_header(root)["Filesystem volume name"] == "nixos"
    reference = build_reference(checkout, tmp_path, {})
    assert same_bytes(image, reference.out / "nixos.img")


@NEEDS_FILTER
def test_erofs_copies_where_the_sandbox_refuses_nested_user_namespaces(
    checkout: Path, tmp_path: Path
) -> None:
    """No namespace to bind the store in: the store paths are copied, the log says why,
    and the image is the one bound in place."""
    sandboxed = build_sandboxed(checkout, tmp_path, STORE_IMAGE, HOST_PATHS, refused=True)
    lines = storeview_lines(sandboxed.log)
    assert any("the store view was refused (unshare: unshare failed: Operation not "
               "permitted): the store paths are copied instead" in line
               for line in lines), sandboxed.log[-4000:]
    assert any("the tree for erofs: 0 store paths checked and bound" in line
               for line in lines), lines
    image = sandboxed.out / "nixos.img"
    checked(["fsck.erofs", str(image)])
    reference = build_reference(checkout, tmp_path, STORE_IMAGE)
    assert same_bytes(image, reference.out / "nixos.img")


@NEEDS_FILTER
@pytest.mark.vm
def test_btrfs_needs_no_user_namespace_in_the_sandbox(
    checkout: Path, tmp_path: Path
) -> None:
    """The engine's btrfs writer needs no namespace (mkfs.btrfs, which records the owners
    it reads, did: tests/test_storeview.py keeps its error): where the sandbox refuses
    nested user namespaces, the btrfs image is still the unsandboxed one."""
    sandboxed = build_sandboxed(checkout, tmp_path, BTRFS_ROOT, VM_HOST_PATHS, refused=True)
    assert "btrfs_write took" in sandboxed.log, sandboxed.log[-4000:]
    btrfs_root(sandboxed, tmp_path)
    reference = build_reference(checkout, tmp_path, BTRFS_ROOT)
    assert same_bytes(sandboxed.out / "nixos.img", reference.out / "nixos.img")


def test_repart_image_in_the_sandbox() -> None:
    """makeDiskImage.repart (tests/test_repart_nix.py's appliance: ESP with contents,
    ext4 root of the closure, Minimize=guess, split): the sandboxed build, named apart
    by its version, is byte for byte the unsandboxed one."""
    nonce = uuid.uuid4().hex[:12]
    reference_expr = test_repart_nix._expr()
    sandboxed_expr = reference_expr.replace('version = "1";', f'version = "{nonce}";')
    assert sandboxed_expr != reference_expr
    procs = [subprocess.run(["nix-build", "--no-out-link", "-E", expr, *options],
                            capture_output=True, text=True, check=False)
             for expr, options in ((sandboxed_expr, sandbox_options(HOST_PATHS)),
                                   (reference_expr, []))]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-4000:]
    # Built here, in the sandbox (sandbox-fallback = false), not taken from the store.
    assert f"-appliance-{nonce}.drv'..." in procs[0].stderr, procs[0].stderr[-2000:]
    builds = [Path(proc.stdout.strip().splitlines()[-1]) for proc in procs]
    for suffix in ("raw", "esp.raw", "root-x86-64.raw"):
        assert same_bytes(builds[0] / f"appliance_{nonce}.{suffix}",
                          builds[1] / f"appliance_1.{suffix}"), suffix


def test_without_the_host_paths_the_sandbox_hides_the_stand_in(
    checkout: Path, tmp_path: Path
) -> None:
    """The sandbox is real: without extra-sandbox-paths, the stand-in's links to
    Debian's binaries lead nowhere."""
    proc = nix_build_image(checkout, tmp_path, STORE_IMAGE | {"postVM": f"echo {uuid.uuid4().hex}"},
                           extra_args=sandbox_options(()))
    assert proc.returncode != 0
    assert "No such file or directory" in proc.stderr, proc.stderr[-3000:]


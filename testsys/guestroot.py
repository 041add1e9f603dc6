"""A root directory of another architecture's programs, from Debian packages.

An image for aarch64 built on an x86_64 host needs, in its build VM, an aarch64 kernel
and aarch64 programs: a python3 for the engine's guest phase and what it and
nixos-enter run (mount, unshare, chroot, sfdisk, bash). Its test system needs an
aarch64 kernel and modules, a static busybox, systemd-boot and GRUB's arm64-efi
modules. All of them come from Debian's arm64 packages, downloaded with apt-get and
unpacked with dpkg-deb: nothing is installed, no maintainer script runs, no binfmt
emulation is needed. The tree is cached by the exact package files it was made from.

    python3 -m testsys.guestroot [--arch arm64]   # prints the directory
    python3 -m testsys.guestroot --lock FILE      # the packages' list, for the stand-in

The same packages, named by version and checksum (`--lock`), are what the offline
nixpkgs stand-in (tests/nixpkgs/cross.nix) unpacks into an aarch64 package set.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

from make_disk_image import process
from make_disk_image.cache import cache_dir
from testsys.debian import DEBIAN

STEP = "guest root"
logger = logging.getLogger("make_disk_image")

# The kernel package is found by its meta-package's dependency (linux-image-ARCH).
KERNEL_META = "linux-image-{arch}"
PACKAGES: tuple[str, ...] = (
    # the engine's guest phase: python3 and pyudev (over libudev)
    "python3-minimal",
    "python3-pyudev", "libudev1", "libffi8", "libexpat1", "zlib1g", "libssl3", "libbz2-1.0",
    "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1",
    # nixos-enter and what the guest phase runs: bash, coreutils, mount/umount, unshare,
    # chroot, sfdisk, chattr, e2fsck
    "bash", "coreutils", "mount", "util-linux", "fdisk", "e2fsprogs", "libc6", "libacl1",
    "libattr1", "libaudit1", "libblkid1", "libcap-ng0", "libcap2", "libgcrypt20",
    "libgmp10", "libgpg-error0", "liblz4-1", "libmount1", "libpam0g", "libpcre2-8-0",
    "libselinux1", "libsmartcols1", "libsystemd0", "libuuid1", "libzstd1", "libfdisk1",
    "libext2fs2", "libcom-err2",
    # the test system: busybox, boot loaders (EFI binaries and GRUB's modules)
    "busybox-static", "systemd-boot-efi", "grub-efi-arm64-bin",
)  # fmt: skip
# Only in the stand-in's package list (--lock), not in the tree: Debian's dynamically
# linked busybox, as nixpkgs' `busybox` is (its /bin/busybox would replace the static one).
LOCK_ONLY: tuple[str, ...] = ("busybox",)
# Bump when the tree's fix-ups change, so cached trees are rebuilt.
_FORMAT = "2"


def _apt(arch: str, *args: str, cwd: Path | None = None) -> str:
    # With APT::Architecture a plain name means the package of that architecture (or
    # an architecture-independent one, which "NAME:arm64" would not find).
    argv = ["apt-get", "-q", "-o", f"APT::Architecture={arch}", *args]
    return process.run(argv, step=STEP, cwd=cwd).stdout.decode()


def _dependency(arch: str, package: str, pattern: str) -> str:
    """The dependency of `package` whose name matches `pattern` (apt-cache depends)."""
    out = process.run(
        ["apt-cache", "-o", f"APT::Architecture={arch}", "depends", package], step=STEP
    ).stdout.decode()
    found = re.search(rf"Depends: ({pattern})(:\S+)?$", out, re.MULTILINE)
    if not found:
        raise process.StepError(
            STEP,
            f"no {package} with a dependency {pattern} in apt's lists: run `dpkg "
            f"--add-architecture {arch}` and `apt-get update` (.ci/setup does)",
        )
    return found.group(1)


def kernel_package(arch: str) -> str:
    """The versioned kernel package the linux-image-ARCH meta-package depends on."""
    return _dependency(arch, KERNEL_META.format(arch=arch), r"linux-image-[0-9]\S*?")


def python_packages(arch: str) -> list[str]:
    """The release's python3.X interpreter and standard library (3.11 on Debian 12)."""
    minimal = _dependency(arch, "python3-minimal", r"python3\.[0-9]+-minimal")
    version = minimal.removesuffix("-minimal")
    return [minimal, f"lib{version}-minimal", f"lib{version}-stdlib"]


def _package_files(arch: str, extra: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(uri, file name, checksum) of each package apt would download, without downloading."""
    names = [*PACKAGES, *python_packages(arch), kernel_package(arch), *extra]
    out = _apt(arch, "--print-uris", "download", *names)
    files = []
    for line in out.splitlines():
        match = re.match(r"^'([^']+)' (\S+) \d+ (\S+)$", line)
        if match:
            files.append((match.group(1), match.group(2), match.group(3)))
    if len(files) != len(names):
        raise process.StepError(STEP, f"apt-get names {len(files)} files for {len(names)} packages")
    return sorted(files, key=lambda f: f[1])


def package_lock(arch: str = "arm64") -> dict[str, object]:
    """The packages (version, file, sha256) apt would download, without downloading.

    The stand-in fetches each as a fixed-output derivation: from the guest root's
    download cache when the file is there, else with `apt-get download`.
    """
    packages: dict[str, dict[str, str]] = {}
    for _, name, checksum in _package_files(arch, LOCK_ONLY):
        package, version, _ = unquote(name).split("_")
        algorithm, _, digest = checksum.partition(":")
        if algorithm != "SHA256":
            raise process.StepError(STEP, f"apt names no SHA256 for {name} ({checksum})")
        packages[package] = {"version": version, "file": name, "sha256": digest}
    return {
        "arch": arch,
        "cache": str(cache_dir() / f"debs-{arch}"),
        "kernel": kernel_package(arch),
        "python": python_packages(arch)[0].removesuffix("-minimal"),
        "packages": packages,
    }


def guest_root(arch: str = "arm64") -> Path:
    """The unpacked tree for Debian architecture `arch` (cached); see the module's doc."""
    if arch not in {p.arch for p in DEBIAN.values()}:
        raise process.StepError(STEP, f"no platform has the Debian architecture {arch!r}")
    files = _package_files(arch)
    digest = hashlib.sha256(_FORMAT.encode())
    for _, name, checksum in files:
        digest.update(f"{name} {checksum}\n".encode())
    cache = cache_dir()
    target = cache / f"guest-root-{arch}-{digest.hexdigest()[:16]}"
    if (target / ".complete").is_file():
        return target
    debs = cache / f"debs-{arch}"
    debs.mkdir(exist_ok=True)
    missing = [name.split("_")[0] for _, name, _ in files if not (debs / name).is_file()]
    if missing:
        logger.info("[%s] downloading %d %s packages", STEP, len(missing), arch)
        _apt(arch, "download", *missing, cwd=debs)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    try:
        for _, name, _ in files:
            deb = debs / name
            if not deb.is_file():
                # apt-get download escapes ":" of epochs as "%3a" in file names.
                deb = debs / name.replace(":", "%3a")
            process.run(["dpkg-deb", "-x", deb, work], step=STEP)
        _fix_up(work)
        (work / ".complete").write_text("".join(f"{name}\n" for _, name, _ in files))
        if target.exists():
            shutil.rmtree(target)
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _fix_up(root: Path) -> None:
    """What maintainer scripts and the base system would have done, that the VM needs."""
    # A shell at /bin/sh (dash's job) and python3 (python3-minimal ships the link).
    sh = root / "bin/sh"
    if not sh.exists():
        sh.symlink_to("bash")
    # modules.dep (the kernel package's postinst runs depmod).
    modules = root / "lib/modules"
    for version_dir in modules.iterdir():
        process.run(["depmod", "-b", root, version_dir.name], step=STEP)
    # GRUB and systemd-boot load only a plain arm64 Image (a PE file); Debian's vmlinuz
    # may be gzip-compressed.
    for image in (root / "boot").glob("vmlinuz-*"):
        data = image.read_bytes()
        if data[:2] == b"\x1f\x8b":
            image.write_bytes(gzip.decompress(data))
    for directory in ("dev", "proc", "sys", "tmp", "run", "mnt", "nix/store"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    _compile_python(root)


def _compile_python(root: Path) -> None:
    """The byte code the python3 packages' postinst (py3compile) would have written.

    Without it the guest's python3 compiles every module it imports at every start,
    under TCG: 4 s of each build VM. Byte code depends on the Python version only, so
    the host's interpreter of the guest's version writes it (none: the guest compiles).
    """
    for stdlib in sorted((root / "usr/lib").glob("python3.*")):
        python = shutil.which(stdlib.name)
        if python is None:
            logger.info("[%s] no %s here to precompile the guest's modules", STEP, stdlib.name)
            continue
        # Exit status 1: a few test files of the standard library do not compile on
        # purpose (lib2to3's bad examples); py3compile skips them too.
        process.run(
            [python, "-m", "compileall", "-q", "-j", "0", "-s", root, "-p", "/",
             stdlib, root / "usr/lib/python3/dist-packages"],
            step=STEP, ok_returncodes=(0, 1),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m testsys.guestroot", description=__doc__)
    parser.add_argument("--arch", default="arm64", help="Debian architecture (default arm64)")
    parser.add_argument("--lock", type=Path, help="write the packages' list here instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.lock:
        args.lock.write_text(json.dumps(package_lock(args.arch), indent=2) + "\n")
        return 0
    print(guest_root(args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run one command inside a throw-away qemu TCG guest that sees a disk image as /dev/vda.

The guest boots the host's own kernel with a small busybox initramfs, mounts the host's
`/` read-only over 9p, puts fresh devtmpfs/proc/sysfs/tmpfs mounts inside it, chroots
there and runs the command. So every host program (mkfs.vfat, tune2fs, python3, ...)
is available in the guest without building a guest root file system, and the only
writable things are the disk image, the tmpfs mounts and the shares asked for.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .filesystems import vm_kernel_modules
from .guestinit import CONTROL_TAG, HOST_ROOT_TAG, command_snippet, run_init_script
from .initramfs import build_initramfs
from .kernel import host_kernel, pvh_kernel, system_tool
from .platforms import Platform, host_platform, platform_for
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"

# What a guest needs to reach a disk, the host's root and the shares, and to format and
# mount ESPs and ext4 roots. Anything else can be modprobed from inside the guest: the
# host's /lib/modules for this very kernel is visible there.
DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "crc32c",
    *vm_kernel_modules(),
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859-1",
    "efivarfs",
    "loop",
)


@dataclass(frozen=True)
class Share:
    """A host directory made visible in the guest at `guest` (read-only unless writable)."""

    host: Path
    guest: str
    writable: bool = False


def uses_firmware(qemu_opts: Sequence[str]) -> bool:
    """Whether the extra options bring their own firmware (OVMF pflash, -bios).

    OVMF boots only an EFI-stub bzImage (and makes the guest a UEFI one); the PVH
    shortcut would bypass it.
    """
    return any(opt in ("-bios", "-pflash") or "if=pflash" in opt for opt in qemu_opts)



def qemu_command(
    *,
    kernel: Path,
    initramfs: Path,
    control_dir: Path,
    disk: Path | None,
    shares: Sequence[Share],
    mem_mib: int,
    qemu_opts: Sequence[str],
    accel: str = "tcg",
    platform: Platform | None = None,
    root: Path = Path("/"),
) -> list[str]:
    """qemu's argv for run_in_vm. `platform`: the guest's (the host's by default);
    `root`: the directory the guest sees as its root filesystem."""
    plat = platform or host_platform()
    # x86_64 keeps qemu's default machine (pc), so that QEMU_OPTS may pick q35.
    machine = [] if plat.bios else ["-machine", plat.qemu_machine]
    argv = [
        system_tool(plat.qemu_binary),
        *machine,
        # nixpkgs starts `qemu-kvm -machine accel=kvm:tcg -cpu max`: KVM where the
        # builder has it, else TCG. As -accel options (tried in order), so that TCG's
        # translation cache can be bounded: its default of 1 GiB, filled as the guest
        # runs, would be most of the VM's memory use.
        *_accel_options(accel),
        "-cpu",
        "max",
        "-m",
        str(mem_mib),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initramfs),
        "-append",
        # Kernel messages only at debug level; panics and warnings show regardless.
        f"console={plat.console} panic=-1 random.trust_cpu=on"
        + ("" if logger.isEnabledFor(logging.DEBUG) else " quiet"),
        "-device",
        "virtio-rng-pci",
        "-virtfs",
        f"local,path={_drive_path(root)},mount_tag={HOST_ROOT_TAG},security_model=none,"
        "readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={control_dir},mount_tag={CONTROL_TAG},security_model=none,multidevs=remap",
    ]
    if disk is not None:
        argv += [
            "-drive",
            f"file={_drive_path(disk)},if=virtio,format=raw,cache=unsafe,werror=report",
        ]
    for index, share in enumerate(shares):
        readonly = "" if share.writable else ",readonly=on"
        argv += [
            "-virtfs",
            f"local,path={_drive_path(share.host)},mount_tag=share{index},"
            f"security_model=none,multidevs=remap{readonly}",
        ]
    argv += list(qemu_opts)
    return argv


# MiB of TCG's translated code cache.
TCG_TB_SIZE = 64


def _accel_options(accel: str) -> list[str]:
    """`kvm:tcg` (qemu's -machine accel= syntax) as -accel options, TCG's cache bounded."""
    options: list[str] = []
    for name in accel.split(":"):
        options += ["-accel", f"tcg,tb-size={TCG_TB_SIZE}" if name == "tcg" else name]
    return options


def _drive_path(path: Path) -> str:
    # qemu splits -drive/-virtfs values at commas; doubling one escapes it.
    return str(path.resolve()).replace(",", ",,")


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL when this process dies (even by SIGKILL itself).

    `finally` covers exceptions; this covers a driver that is killed outright (a Nix
    build timeout), which would otherwise leave a guest running for up to `timeout`.
    """
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("qemu (pid %d) did not exit after SIGKILL", proc.pid)


def run_in_vm(
    argv: Sequence[str],
    *,
    disk: Path | None,
    shares: Sequence[Share] = (),
    env: Mapping[str, str] = {},
    cwd: str = "/",
    mem_mib: int = 1024,
    qemu_opts: Sequence[str] = (),
    timeout: float = 900,
    log: IO[str] | None = None,
    accel: str = "tcg",
    host_paths: Sequence[str] | None = None,
    system: str | None = None,
    guest_root: Path | None = None,
) -> int:
    """Run `argv` as root in a TCG guest and return its exit status.

    The guest sees `disk` as /dev/vda (partitions as /dev/vdaN), the host's / read-only
    as its root, fresh tmpfs on /tmp, /run and /mnt, and each share over its guest path.
    The command gets exactly `env` (PATH defaults to the usual system one), runs in
    `cwd`, reads /dev/null; its output and the guest kernel's messages stream to `log`
    (stderr by default). Raises StepError on timeout or when the guest ends without
    having run the command to completion.

    `host_paths`: the guest's root is an empty tmpfs instead, holding only these host
    paths (read-only) besides the shares: what nixpkgs' runInLinuxVM gives, where the
    store is a share. `accel`: qemu's accelerators, "kvm:tcg" as nixpkgs' qemu-kvm.

    `system` ("aarch64-linux"): the guest's architecture, the host's by default. A guest
    of another architecture cannot run the host's programs: `guest_root` is then a
    directory of that architecture's programs (testsys/guestroot.py makes one from
    Debian packages) with its kernel in boot/ and modules in lib/modules/; the guest
    boots that kernel and sees that directory in place of the host's / (as `host_paths`
    of it, so that shares may be mounted anywhere).
    """
    if not argv:
        raise StepError(STEP, "no command given to run in the VM")
    for share in shares:
        if not share.guest.startswith("/") or any(c.isspace() for c in share.guest):
            raise StepError(
                STEP, f"share guest path must be absolute without spaces: {share.guest!r}"
            )
        if not share.host.is_dir():
            raise StepError(STEP, f"share {share.host} is not a directory")
    if disk is not None and not disk.is_file():
        raise StepError(STEP, f"disk image {disk} does not exist")
    out = log if log is not None else sys.stderr
    plat = platform_for(system) if system else host_platform()
    root = Path("/")
    if guest_root is not None:
        root = guest_root.resolve()
        if not (root / "boot").is_dir():
            raise StepError(STEP, f"guest root {guest_root} has no boot/ with a kernel")
        kernel, version = host_kernel(root / "boot", root / "lib/modules")
        if host_paths is None:
            host_paths = [f"/{entry.name}" for entry in sorted(root.iterdir())]
    elif plat != host_platform():
        raise StepError(
            STEP,
            f"a {plat.system} guest on a {host_platform().system} host cannot run the "
            f"host's programs: give a guest root of {plat.system} programs (--guest-root)",
        )
    else:
        kernel, version = host_kernel()
    if plat.bios and not uses_firmware(qemu_opts):
        kernel = pvh_kernel(kernel, version) or kernel
    initramfs = build_initramfs(
        run_init_script(version), kernel_version=version, modules=DEFAULT_MODULES, root=root
    )

    with tempfile.TemporaryDirectory(prefix="make-disk-image-vm-") as control:
        control_dir = Path(control)
        (control_dir / "command").write_text(command_snippet(argv, env, cwd))
        (control_dir / "shares").write_text(
            "".join(
                f"share{i} {s.guest} {'rw' if s.writable else 'ro'}\n" for i, s in enumerate(shares)
            )
        )
        if host_paths is not None:
            (control_dir / "host-paths").write_text("".join(f"{p}\n" for p in host_paths))
        qemu = qemu_command(
            kernel=kernel,
            initramfs=initramfs,
            control_dir=control_dir,
            disk=disk,
            shares=shares,
            mem_mib=mem_mib,
            qemu_opts=qemu_opts,
            accel=accel,
            platform=plat,
            root=root,
        )
        logger.info("[%s] $ %s", STEP, shlex.join(qemu))
        logger.info("[%s] guest command: %s (cwd %s)", STEP, shlex.join(argv), cwd)
        tail = stream_qemu(qemu, out, timeout, plat)
        status_file = control_dir / "status"
        if not status_file.is_file():
            raise StepError(
                STEP,
                "the guest stopped without reporting the command's exit status; "
                f"last console output:\n{tail}",
            )
        status = status_file.read_text().strip()
    kind, _, value = status.partition(" ")
    if kind == "exit" and value.isdigit():
        logger.info("[%s] guest command exited with status %s", STEP, value)
        return int(value)
    raise StepError(STEP, f"guest setup failed: {value or status}")


class ConsoleText:
    """Turns serial console bytes into log text: plain newlines, no terminal controls.

    SeaBIOS and OVMF clear the screen and switch video modes with escape sequences;
    in a log they are noise. A sequence split across reads is held back until complete.
    """

    _CONTROL = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[A-Za-z])|\r(?=\n)")
    _INCOMPLETE = re.compile(r"\x1b(\[[0-9;=?]*)?$|\r$")

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        incomplete = self._INCOMPLETE.search(text)
        if incomplete:
            self._held = text[incomplete.start() :]
            text = text[: incomplete.start()]
        else:
            self._held = ""
        return self._CONTROL.sub("", text)


def stream_qemu(
    qemu: Sequence[str], out: IO[str], timeout: float, plat: Platform | None = None
) -> str:
    """Run qemu, copying its console to `out` until it exits; return the console's tail."""
    started = time.monotonic()
    deadline = started + timeout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    try:
        proc = subprocess.Popen(
            list(qemu),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as exc:
        plat = plat or host_platform()
        raise StepError(
            STEP,
            f"{plat.qemu_binary} not found; install the Debian package {plat.qemu_package}",
        ) from exc
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        console = ConsoleText()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StepError(
                    STEP,
                    f"the guest did not finish within {timeout:g} s; last console output:\n{tail}",
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text = console.feed(decoder.decode(chunk))
            out.write(text)
            out.flush()
            tail = (tail + text)[-4000:]
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        logger.info("[%s] guest ran for %.1f s", STEP, time.monotonic() - started)
        if proc.returncode != 0:
            raise StepError(
                STEP, f"qemu exited with status {proc.returncode}; last output:\n{tail}"
            )
        return "\n".join(tail.splitlines()[-30:])
    finally:
        _kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()

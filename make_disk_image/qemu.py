"""qemu for the VM runner: its command line, and a run streamed to a log with a deadline.

qemu never outlives the run: it is killed on any exception and gets SIGKILL if the
calling process dies.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .guestinit import CONTROL_TAG, ROOT_TAG
from .kernel import tool
from .platforms import Platform
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"


@dataclass(frozen=True)
class Share:
    """A host directory made visible in the guest at `guest` (read-only unless writable)."""

    host: Path
    guest: str
    writable: bool = False


def qemu_command(
    *,
    platform: Platform,
    kernel: Path,
    initramfs: Path,
    root: Path,
    control_dir: Path,
    disk: Path | None,
    shares: Sequence[Share],
    mem_mib: int,
    qemu_opts: Sequence[str],
    accel: str = "tcg",
) -> list[str]:
    """qemu's argv for the runner: a guest of `platform` booting `kernel` (an image
    qemu can boot directly) with `initramfs`, seeing `root` as its root directory."""
    plat = platform
    # Where OVMF may need SMM, QEMU_OPTS pick the machine (q35,smm=on): qemu's default
    # (pc) is kept unless they do.
    machine = [] if plat.smm else ["-machine", plat.qemu_machine]
    argv = [
        tool(plat.qemu_binary),
        *machine,
        # nixpkgs starts `qemu-kvm -machine accel=kvm:tcg -cpu max`: KVM where the
        # builder has it, else TCG. As -accel options (tried in order), so that TCG's
        # translation cache can be bounded: its default of 1 GiB, filled as the guest
        # runs, would be most of the VM's memory use.
        *_accel_options(accel),
        "-cpu",
        plat.qemu_cpu,
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
        " ".join([f"console={plat.console}", "panic=-1", "random.trust_cpu=on",
                  *plat.vm_kernel_params, *([] if logger.isEnabledFor(logging.DEBUG)
                                            else ["quiet"])]),
        "-device",
        "virtio-rng-pci",
        "-virtfs",
        f"local,path={_drive_path(root)},mount_tag={ROOT_TAG},security_model=none,"
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


def stream_qemu(qemu: Sequence[str], out: IO[str], timeout: float) -> str:
    """Run qemu, copying its console to `out` until it exits; return the console's tail."""
    started = time.monotonic()
    deadline = started + timeout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    proc = subprocess.Popen(
        list(qemu),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
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

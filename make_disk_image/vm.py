"""`python3 -m make_disk_image.vm`: the VM runner's command line (make_disk_image.runner).

What default.nix's build of an image of another system runs: the guest's kernel,
modules, busybox and root are that system's packages, passed as paths.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from .kernel import Kernel
from .platforms import host_system, platform_for
from .process import StepError
from .runner import Guest, Share, run_in_vm


def _parse_share(value: str) -> Share:
    host, sep, rest = value.partition(":")
    if not sep or not host or not rest:
        raise argparse.ArgumentTypeError(f"expected HOST:GUEST[:rw], got {value!r}")
    guest, _, mode = rest.partition(":")
    if mode not in ("", "rw", "ro"):
        raise argparse.ArgumentTypeError(f"share mode must be rw or ro, got {mode!r}")
    return Share(host=Path(host), guest=guest, writable=mode == "rw")


def _parse_env(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one run, whatever the guest (other front ends add their own guest)."""
    parser.add_argument("--disk", type=Path, help="raw disk image, /dev/vda in the guest")
    parser.add_argument(
        "--share", type=_parse_share, action="append", default=[], metavar="HOST:GUEST[:rw]",
        help="host directory to mount at GUEST (read-only unless :rw); repeatable",
    )  # fmt: skip
    parser.add_argument("--mem", type=int, default=1024, metavar="MIB")
    parser.add_argument(
        "--qemu-opts", default="", metavar="STRING", help="extra qemu arguments (shell words)"
    )
    parser.add_argument("--timeout", type=float, default=900, metavar="S")
    parser.add_argument("--cwd", default="/", metavar="DIR")
    parser.add_argument(
        "--env", type=_parse_env, action="append", default=[], metavar="K=V", help="repeatable"
    )
    parser.add_argument(
        "--accel", default="tcg", metavar="ACCELS", help='qemu accelerators, e.g. "kvm:tcg"'
    )
    parser.add_argument(
        "--system", metavar="SYSTEM", help="the guest's system, e.g. aarch64-linux (default: "
        "this machine's)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log qemu's command line")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV")


def command(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> list[str]:
    """The guest command after `--`; a usage error without one."""
    argv = list(ns.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        parser.error("no command given (put it after --)")
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(message)s")
    return argv


def run(ns: argparse.Namespace, argv: list[str], guest: Guest) -> int:
    """Run `argv` in `guest` as the options say; its exit status. Raises StepError."""
    return run_in_vm(
        argv, guest, disk=ns.disk, shares=ns.share, env=dict(ns.env), cwd=ns.cwd,
        mem_mib=ns.mem, qemu_opts=shlex.split(ns.qemu_opts), timeout=ns.timeout,
        accel=ns.accel,
    )  # fmt: skip


def failed(exc: StepError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def main(args: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m make_disk_image.vm",
        description="Run a command as root in a qemu guest that boots KERNEL, sees ROOT "
        "read-only as its root and DISK as /dev/vda; exit with the command's status.",
    )
    parser.add_argument("--kernel", type=Path, required=True, metavar="IMAGE",
                        help="the kernel image qemu boots (bzImage, Image)")  # fmt: skip
    parser.add_argument("--modules", type=Path, required=True, metavar="DIR",
                        help="the kernel's lib/modules/VERSION (with modules.dep)")  # fmt: skip
    parser.add_argument("--busybox", type=Path, required=True, metavar="PATH",
                        help="a busybox of the guest's architecture (static, or dynamically "
                        "linked: its interpreter and libraries go along)")  # fmt: skip
    parser.add_argument("--root", type=Path, required=True, metavar="DIR",
                        help="the guest's programs, seen read-only as its root")  # fmt: skip
    add_run_arguments(parser)
    ns = parser.parse_args(list(args) if args is not None else None)
    argv = command(parser, ns)
    try:
        platform = platform_for(ns.system or host_system())
    except StepError as exc:
        parser.error(str(exc))
    guest = Guest(platform, Kernel(ns.kernel, ns.modules), ns.busybox, ns.root)
    try:
        return run(ns, argv, guest)
    except StepError as exc:
        return failed(exc)


if __name__ == "__main__":
    sys.exit(main())

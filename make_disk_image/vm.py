"""`python3 -m make_disk_image.vm`: the VM runner's command line (make_disk_image.runner)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from .process import StepError
from .runner import Share, run_in_vm


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


def main(args: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m make_disk_image.vm",
        description="Run a command as root in a qemu TCG guest that sees DISK as /dev/vda "
        "and the host's / read-only; exit with the command's status.",
    )
    parser.add_argument("--disk", type=Path, help="raw disk image, /dev/vda in the guest")
    parser.add_argument(
        "--share",
        type=_parse_share,
        action="append",
        default=[],
        metavar="HOST:GUEST[:rw]",
        help="host directory to mount at GUEST (read-only unless :rw); repeatable",
    )
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
        "--host-path",
        action="append",
        metavar="PATH",
        help="with this, the guest's root is an empty tmpfs holding only the shares and "
        "these host paths (read-only); repeatable",
    )
    parser.add_argument(
        "--like-qemu",
        action="store_true",
        help="exit 0 once the guest ran the command, whatever its status, as qemu does "
        "when its guest powers off (runInLinuxVM reads the status from xchg/ instead)",
    )
    parser.add_argument(
        "--system", metavar="SYSTEM", help='the guest\'s architecture, e.g. "aarch64-linux"'
    )
    parser.add_argument(
        "--guest-root",
        type=Path,
        metavar="DIR",
        help="programs, kernel and modules of the guest's architecture, seen as its root",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log qemu's command line")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV")
    ns = parser.parse_args(list(args) if args is not None else None)
    command = list(ns.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given (put it after --)")
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(message)s")
    try:
        status = run_in_vm(
            command,
            disk=ns.disk,
            shares=ns.share,
            env=dict(ns.env),
            cwd=ns.cwd,
            mem_mib=ns.mem,
            qemu_opts=shlex.split(ns.qemu_opts),
            timeout=ns.timeout,
            accel=ns.accel,
            host_paths=ns.host_path,
            system=ns.system,
            guest_root=ns.guest_root,
        )
        return 0 if ns.like_qemu else status
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

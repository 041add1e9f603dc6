"""The VM runner as the tests and the nixpkgs stand-in use it: this host's own guest.

make_disk_image.runner takes its kernel, busybox and root as paths. Here they are the
host's (make_disk_image.hostkernel: /boot, /lib/modules, busybox-static), and the root
is either the host's `/` or, with `--host-path`, a directory holding only some host
paths: what nixpkgs' runInLinuxVM gives (an otherwise empty root where the store is a
share), which the stand-in's vmTools (tests/nixpkgs/build-support/vm.nix) runs as

    python3 -m testsys.vmtools --like-qemu --host-path /usr ... -- bash stage2

`--like-qemu` exits 0 once the guest ran the command, whatever its status, as qemu does
when its guest powers off (runInLinuxVM reads the status from xchg/ instead).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from make_disk_image import vm
from make_disk_image.hostkernel import installed_busybox, installed_kernel
from make_disk_image.platforms import host_platform
from make_disk_image.process import StepError
from make_disk_image.runner import Guest, Share


def host_guest(root: Path = Path("/")) -> Guest:
    """A guest of this machine's kind booting the host's kernel, seeing `root`."""
    return Guest(host_platform(), installed_kernel(), installed_busybox(), root)


def guest_options(guest: Guest) -> list[str]:
    """`python3 -m make_disk_image.vm`'s options for `guest`."""
    return ["--kernel", str(guest.kernel.image), "--modules", str(guest.kernel.modules),
            "--busybox", str(guest.busybox), "--root", str(guest.root),
            "--system", guest.platform.system]  # fmt: skip


def host_path_root(paths: Sequence[str], directory: Path) -> list[Share]:
    """Make `directory` a root holding only the host's `paths`; return the shares it needs.

    A symbolic link is recreated (merged /usr's /bin), a file copied (/etc/ld.so.cache),
    a directory shared read-only at its own path, with an empty mount point made for it.
    A path inside another one given is already there.
    """
    shares: list[Share] = []
    wanted = [Path(p) for p in paths]
    for path in wanted:
        if any(path != other and path.is_relative_to(other) for other in wanted):
            continue
        inside = directory / path.relative_to("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            inside.symlink_to(path.readlink())
        elif path.is_dir():
            inside.mkdir(exist_ok=True)
            shares.append(Share(host=path, guest=str(path)))
        elif path.exists():
            shutil.copyfile(path, inside)
    return shares


def main(args: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m testsys.vmtools",
        description="Run a command as root in a qemu guest booting this host's kernel, "
        "seeing the host's / read-only (or only the --host-path ones).",
    )
    parser.add_argument(
        "--host-path", action="append", default=[], metavar="PATH",
        help="the guest's root holds only the shares and these host paths (read-only); "
        "repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--like-qemu", action="store_true",
        help="exit 0 once the guest ran the command, whatever its status",
    )  # fmt: skip
    vm.add_run_arguments(parser)
    ns = parser.parse_args(list(args) if args is not None else None)
    argv = vm.command(parser, ns)
    if ns.system is not None and ns.system != host_platform().system:
        parser.error(f"--system {ns.system}: this runner boots only the host's own kernel")
    with tempfile.TemporaryDirectory(prefix="mdi-host-paths-") as directory:
        root = Path("/")
        if ns.host_path:
            root = Path(directory)
            ns.share = host_path_root(ns.host_path, root) + ns.share
        try:
            status = vm.run(ns, argv, host_guest(root))
        except StepError as exc:
            return vm.failed(exc)
    return 0 if ns.like_qemu else status


if __name__ == "__main__":
    sys.exit(main())

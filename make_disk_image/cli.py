"""`make-disk-image`: plan, prepare, guest, finish, build."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from make_disk_image.guest import guest
from make_disk_image.guestinit import DEFAULT_PATH
from make_disk_image.handoff import EFI_VARS, HANDOFF, STORE_DIR, XCHG, read_handoff
from make_disk_image.platforms import host_system
from make_disk_image.process import StepError
from make_disk_image.spec import SpecError, load_spec

# Only the guest phase's modules load at start: `make-disk-image guest` runs in the
# build VM, under TCG for an image of another system, where every import costs (the
# other phases' modules took 0.9 s of each build VM, measured in an x86_64 guest).
# The other commands import theirs when they run.
if TYPE_CHECKING:
    from make_disk_image.models import Spec
    from make_disk_image.runner import Guest

logger = logging.getLogger("make_disk_image")


def _out_dir(arg: str | None) -> Path:
    value = arg or os.environ.get("out")  # noqa: SIM112 - Nix names it so
    if not value:
        raise SpecError("--out", "no output directory: pass --out DIR or set $out")
    return Path(value).absolute()


def cmd_plan(args: argparse.Namespace) -> int:
    from make_disk_image.prepare import compute_plan, nix_db_files
    from make_disk_image.staging import build_tree, check_sources

    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory(prefix="mdi-plan-") as tmp:
        tree = None
        if spec.diskSize is None:
            check_sources(spec)
            tree = build_tree(spec, nix_db_files(spec, Path(tmp)))
        plan = compute_plan(spec, tree)
    json.dump(plan.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from make_disk_image.prepare import prepare

    spec = load_spec(args.spec)
    prepare(spec, Path.cwd(), _out_dir(args.out))
    return 0


def cmd_guest(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    handoff = args.handoff
    if handoff is None:
        # runInLinuxVM shares the build directory's xchg/ at /tmp/xchg.
        handoff = Path("/tmp") / XCHG / HANDOFF
        if not handoff.is_file():
            handoff = Path.cwd() / XCHG / HANDOFF
    guest(spec, read_handoff(handoff, step="guest"), handoff.parent)
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    from make_disk_image.finish import finish

    spec = load_spec(args.spec)
    dest = finish(spec, Path.cwd(), _out_dir(args.out))
    print(dest)
    return 0


def qemu_options(spec: Spec, efi_vars: Path) -> list[str]:
    """The reference's QEMU_OPTS for the build VM."""
    opts: list[str] = []
    if spec.touchEFIVars:
        opts += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={spec.efiFirmware}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars}",
        ]
        if spec.ovmfSystemManagementModeRequired:
            opts += [
                "-machine",
                "q35,smm=on",
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
            ]
    return opts


def cmd_build(args: argparse.Namespace) -> int:
    """All phases on this host; the guest phase in a qemu VM. For use without Nix."""
    from make_disk_image.finish import finish
    from make_disk_image.prepare import prepare

    spec_path = args.spec.absolute()
    spec = load_spec(spec_path)
    out = _out_dir(args.out)
    if out.exists() and any(out.iterdir()):
        raise SpecError("--out", f"{out} exists and is not empty; remove it or pick another")
    build_dir = Path(tempfile.mkdtemp(prefix="mdi-build-"))
    succeeded = False
    try:
        vm_guest = None if spec.onlyNixStore else _build_vm_guest(spec, args.guest_root)
        prepare(spec, build_dir, out)
        if vm_guest is not None:
            run_guest_vm(spec, spec_path, build_dir, out / EFI_VARS, vm_guest)
        dest = finish(spec, build_dir, out)
        if spec.postVM:
            # As in the reference's postVM: the image is $diskImage, the output $out.
            env = dict(os.environ, out=str(out), diskImage=str(dest))
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", spec.postVM],
                                    env=env, cwd=build_dir, check=False)
            if result.returncode != 0:
                raise StepError("postVM", f"the postVM script exited {result.returncode}")
        succeeded = True
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        if not succeeded:
            # Like a failed Nix build: no output at all rather than a half-written one.
            shutil.rmtree(out, ignore_errors=True)
    print(dest)
    return 0


def _build_vm_guest(spec: Spec, guest_root: Path | None) -> Guest:
    """The build VM's guest on this host, checked before any work: the host's kernel and
    root, or for an image of another system the kernel and programs in `guest_root`."""
    from make_disk_image.hostkernel import host_guest, with_system_dirs

    foreign = spec.system is not None and spec.system != host_system()
    if foreign and guest_root is None:
        raise SpecError(
            "system",
            f"{spec.system} on this {host_system()} host needs a guest root of "
            f"{spec.system} programs for the build VM: pass --guest-root DIR, a root of "
            f"that system with usr/bin/python3, static busybox (bin/busybox) and a kernel "
            "(boot/vmlinuz-VERSION, lib/modules/VERSION), as Debian packages unpack",
        )
    if not foreign:
        guest_root = None
    root = guest_root or Path("/")
    if guest_root is not None and not (guest_root / "usr/bin/python3").exists():
        raise SpecError("--guest-root", f"{guest_root} has no usr/bin/python3 for the guest phase")
    # modprobe and qemu may be in the system directories a user's PATH lacks.
    os.environ["PATH"] = with_system_dirs(os.environ.get("PATH", ""))
    return host_guest(root, spec.system)


def run_guest_vm(
    spec: Spec, spec_path: Path, build_dir: Path, efi_vars: Path, vm_guest: Guest
) -> None:
    """The guest phase in a qemu VM, as runInLinuxVM would run it.

    The guest sees its root read-only but its own /tmp, so the build directory (with
    a copy of the spec) is shared in at /tmp/build read-only, and its xchg/ at /tmp/xchg
    writable, as nixpkgs shares it. With a root other than the host's (an image of
    another architecture) the guest runs that root's python3, and gets this engine's
    source tree (pure Python) shared in at the same path as here.
    """
    from make_disk_image.runner import Share, run_in_vm

    guest_build = "/tmp/build"
    shutil.copyfile(spec_path, build_dir / "spec.json")
    python = sys.executable
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    pythonpath = os.environ.get("PYTHONPATH")
    shares = [Share(host=build_dir, guest=guest_build),
              Share(host=build_dir / XCHG, guest=f"/tmp/{XCHG}", writable=True)]
    if vm_guest.root != Path("/"):
        source = Path(__file__).resolve().parent.parent
        shares.append(Share(host=source, guest=str(source)))
        # The guest binds the closure's store paths into the image's root filesystem
        # (storebind): the builder's store, at its own path, as runInLinuxVM shares it.
        store = Path("/") / STORE_DIR
        shares.append(Share(host=store, guest=str(store)))
        python = "/usr/bin/python3"
        pythonpath = str(source)
        # Only the PATH entries the guest can see: those in the shared tree (nixos-enter's
        # stand-in in the tests), then the guest root's own directories.
        own = [p for p in path.split(":") if Path(p).is_relative_to(source)]
        path = ":".join([*own, DEFAULT_PATH])
    argv = [python, "-m", "make_disk_image", "guest", f"{guest_build}/spec.json",
            "--handoff", f"/tmp/{XCHG}/{HANDOFF}"]
    if logger.isEnabledFor(logging.DEBUG):
        argv.insert(3, "--verbose")
    env = {"PATH": path, "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    status = run_in_vm(
        argv, vm_guest, disk=build_dir / "nixos.raw", env=env, cwd=guest_build, shares=shares,
        mem_mib=spec.memSize, qemu_opts=qemu_options(spec, efi_vars),
    )
    if status != 0:
        raise StepError("guest", f"the guest phase failed in the VM (exit {status}); its "
                        "output is above")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make-disk-image", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log every command's stderr")
    sub = p.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        ("plan", cmd_plan, "print the disk plan as JSON; writes nothing"),
        ("prepare", cmd_prepare, "preVM: stage, size, partition, fill the root filesystem"),
        ("guest", cmd_guest, "inside the build VM: boot partitions, bootloader, ownership"),
        ("finish", cmd_finish, "postVM: convert into $out, hydra-build-products"),
        ("build", cmd_build, "all phases here, the guest phase in a qemu VM"),
    ):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("spec", type=Path, metavar="SPEC.json")
        sp.set_defaults(func=func)
        if name in ("prepare", "finish", "build"):
            sp.add_argument("--out", help="output directory (default: $out)")
        if name == "build":
            sp.add_argument("--guest-root", type=Path, metavar="DIR",
                            help="for an image of another architecture (the spec's `system`): "
                            "that architecture's programs, kernel and modules, which the "
                            "build VM boots and sees as its root")
        if name == "guest":
            sp.add_argument("--handoff", type=Path,
                            help="prepare's handoff (default: /tmp/xchg/make-disk-image.json)")
    return p


class Interrupted(BaseException):
    """A termination signal arrived. Like KeyboardInterrupt, no `except Exception` stops
    it, so every phase's cleanup (`except BaseException`, `finally`) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP (what Nix, systemd or a closed terminal send) raise Interrupted.

    A second signal during the cleanup gets the default action and ends the process.
    """
    handled = (signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (main() called from a thread)
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in handled:
            signal.signal(sig, signal.SIG_DFL)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in handled}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def _describe(exc: BaseException) -> str:
    """One line for an exception no step turned into a message of its own."""
    if isinstance(exc, OSError) and exc.strerror:
        # A copy's error names the source in `filename` and the destination in `filename2`.
        names = [str(n) for n in (exc.filename, exc.filename2) if n]
        where = f" ({' -> '.join(names)})" if names else ""
        return f"{exc.strerror}{where}"
    return f"internal error, please report it: {type(exc).__name__}: {exc}"


def _failure(command: str, exc: BaseException) -> tuple[int, str]:
    """Exit status and message for a failed command."""
    if isinstance(exc, SpecError):
        return 2, str(exc)
    if isinstance(exc, StepError):
        return 1, str(exc)
    if isinstance(exc, Interrupted | KeyboardInterrupt):
        name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
        return 1, f"{command}: interrupted by {name}; what it had written is removed"
    return 1, f"{command}: {_describe(exc)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends in one `error:` line on stderr, no traceback.

    Exit status 2 for a bad spec, 1 for any other failure (also a termination signal,
    after the phase removed what it had written). MDI_DEBUG=1 also prints the traceback.
    """
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="make-disk-image: %(message)s",
        stream=sys.stderr,
    )
    try:
        with signals_as_exceptions():
            return int(args.func(args))
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
        status, message = _failure(args.command, exc)
        if os.environ.get("MDI_DEBUG") == "1":
            traceback.print_exception(exc)
    # What follows the first line (a command's stderr, the VM's console) is indented, so
    # that a quoted "error: ..." line is not taken for this one.
    print("error: " + message.replace("\n", "\n  "), file=sys.stderr)
    return status

"""Build an image of the test system through the engine's `make-disk-image build`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from make_disk_image.platforms import host_system
from make_disk_image.spec import parse_spec
from testsys.debian import debian_arch
from testsys.guestroot import guest_root
from testsys.system import NIXOS_ENTER_DIR


class BuildError(Exception):
    """`make-disk-image build` failed; the message ends with its output."""


@dataclass(frozen=True)
class BuiltImage:
    spec: Mapping[str, Any]
    image: Path
    efi_vars: Path | None  # $out/efi-vars.fd when built with touchEFIVars
    out: Path
    seconds: float
    log: str


def build_image(
    spec: Mapping[str, Any], work_dir: Path, *, name: str = "image", timeout: float = 900
) -> BuiltImage:
    """Write `spec` to WORK_DIR/NAME.json and build it into WORK_DIR/NAME.

    WORK_DIR must be visible in the build VM: anywhere but /tmp, /run and /mnt.

    The engine's guest phase runs the system's switch-to-configuration and chown
    through `nixos-enter`, so testsys/bin (this project's stand-in) goes first on PATH;
    the guest sees the host's / and so the same PATH works there.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = work_dir / f"{name}.json"
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    out = work_dir / name
    # The engine's build directory goes under WORK_DIR too, not the host's /tmp, which
    # the build VM covers with its own tmpfs.
    scratch = work_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        PATH=f"{NIXOS_ENTER_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        TMPDIR=str(scratch),
    )
    argv = [sys.executable, "-m", "make_disk_image", "build", str(spec_file), "--out", str(out)]
    system = spec.get("system")
    if system is not None and system != host_system():
        # The build VM of another architecture boots Debian's packages of it.
        argv += ["--guest-root", str(guest_root(debian_arch(system)))]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    log = proc.stdout.decode(errors="replace")
    (work_dir / f"{name}.log").write_text(log)
    if proc.returncode != 0:
        tail = "\n".join(log.splitlines()[-40:])
        raise BuildError(f"make-disk-image build {spec_file} exited {proc.returncode}:\n{tail}")
    image = out / parse_spec(dict(spec)).filename
    if not image.is_file():
        raise BuildError(f"make-disk-image build succeeded but {image} is missing")
    efi_vars = out / "efi-vars.fd"
    return BuiltImage(
        spec=spec,
        image=image,
        efi_vars=efi_vars if efi_vars.exists() else None,
        out=out,
        seconds=time.monotonic() - started,
        log=log,
    )

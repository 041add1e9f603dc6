"""The build VM's kernel and busybox on a host without Nix, for `make-disk-image build`.

The VM runner (make_disk_image.runner) takes its kernel, modules and busybox as paths.
A Nix build passes packages; `build` runs on a plain host instead (tests, demo, users
without Nix), whose kernel lies where Debian and most distributions put it: the image
as boot/vmlinuz-VERSION and its modules in lib/modules/VERSION of a root (the host's
/, or the root of another architecture given to `build --guest-root`). Only `build`
(and `make-disk-image-repart`'s boot loader) and the test system use this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .initramfs import is_static_elf
from .kernel import Kernel
from .platforms import host_system, platform_for
from .process import StepError
from .runner import Guest

STEP = "host kernel"

# Where a distribution installs a statically linked busybox (Debian: busybox-static).
_BUSYBOX_PATHS = ("bin/busybox", "usr/bin/busybox")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order kernel versions numerically where they are numbers ("6.10" > "6.9")."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+~_]", version)
    )


def installed_kernel(root: Path = Path("/")) -> Kernel:
    """The newest kernel installed in `root` that has its modules."""
    boot, modules_root = root / "boot", root / "lib/modules"
    candidates: list[Kernel] = []
    for image in boot.glob("vmlinuz-*"):
        modules = modules_root / image.name.removeprefix("vmlinuz-")
        if (modules / "modules.dep").is_file():
            candidates.append(Kernel(image, modules))
    if not candidates:
        raise StepError(
            STEP,
            f"no kernel found: need {boot}/vmlinuz-VERSION with modules in "
            f"{modules_root}/VERSION; install a kernel package (Debian: linux-image-amd64, "
            "linux-image-arm64)",
        )
    kernel = max(candidates, key=lambda k: version_key(k.version))
    if not os.access(kernel.image, os.R_OK):
        raise StepError(STEP, f"kernel image {kernel.image} is not readable by this user")
    return kernel


def installed_busybox(root: Path = Path("/")) -> Path:
    """The statically linked busybox installed in `root`."""
    # Debian's dynamically linked `busybox` package installs the same path as
    # busybox-static, so check rather than trust it.
    for candidate in _BUSYBOX_PATHS:
        path = root / candidate
        if path.is_file() and is_static_elf(path):
            return path
    raise StepError(
        STEP, f"no static busybox found in {root}; install busybox-static (Debian's package)"
    )


def host_guest(root: Path = Path("/"), system: str | None = None) -> Guest:
    """The build VM's guest from what is installed in `root` (the host's / by default):
    its kernel and busybox, `root` as the guest's root; `system`: the root's (the
    host's by default)."""
    platform = platform_for(system or host_system())
    guest = Guest(platform, installed_kernel(root), installed_busybox(root), root.resolve())
    guest.check()
    return guest


def with_system_dirs(path: str) -> str:
    """PATH plus the system directories a user's PATH may lack (modprobe is in sbin)."""
    entries = path.split(":") if path else []
    return ":".join(entries + [d for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
                               if d not in entries])  # fmt: skip

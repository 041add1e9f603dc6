"""The skip marks of the tests that build and boot aarch64 images on this x86_64 host.

Not in conftest.py: the engine package's check phase (nix/package.nix) loads conftest,
and testsys.boot is not part of that package.
"""

from __future__ import annotations

import os
import shutil

import pytest

from make_disk_image.platforms import host_system
from testsys import boot

# Building (as root, with single-user Nix) and booting aarch64 images on this x86_64 host.
AARCH64_BOOT = [
    pytest.mark.boot,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nix-build") is None,
        reason="aarch64 image tests need root (the engine's build, single-user Nix) and nix-build",
    ),
    pytest.mark.skipif(
        host_system() == "aarch64-linux"
        or shutil.which("qemu-system-aarch64") is None
        or not boot.AAVMF_CODE.is_file(),
        reason="needs an x86_64 host with qemu-system-aarch64 (qemu-system-arm) and AAVMF "
        "(qemu-efi-aarch64)",
    ),
]

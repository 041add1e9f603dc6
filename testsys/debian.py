"""What the platforms (interface.json's `platforms`) are called in Debian.

Only the test system needs this: it takes a guest root of another architecture from
Debian's packages (testsys.guestroot), and .ci/setup installs each platform's qemu.
The engine takes its packages from Nix, or from whatever host runs `build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from make_disk_image.platforms import PLATFORMS


@dataclass(frozen=True)
class DebianPlatform:
    arch: str  # dpkg's architecture name
    qemu_package: str  # the package that holds the platform's qemu_binary


DEBIAN: dict[str, DebianPlatform] = {
    "x86_64-linux": DebianPlatform(arch="amd64", qemu_package="qemu-system-x86"),
    "aarch64-linux": DebianPlatform(arch="arm64", qemu_package="qemu-system-arm"),
}


def debian_arch(system: str) -> str:
    try:
        return DEBIAN[system].arch
    except KeyError:
        raise ValueError(
            f"no Debian architecture for {system!r}; testsys/debian.py knows "
            + ", ".join(sorted(DEBIAN)) + f" (the engine's platforms: {', '.join(PLATFORMS)})"
        ) from None

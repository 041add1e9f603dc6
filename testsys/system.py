"""Build the NixOS-shaped test system: real store paths, no nixpkgs.

The toplevel has what make-disk-image and a boot loader use of a NixOS system:
`kernel` (the host's Debian kernel), `initrd` (a busybox initramfs whose /init is
scripts/stage-1-init.sh), `init`, `kernel-params`, `etc`, `activate`, `nixos-version`,
`sw` and `bin/switch-to-configuration`. Its scripts run inside the image through
nixos-enter, so everything they need is in the closure: a static busybox, Debian's
grub-install and chattr with their libraries and dynamic loader, GRUB's i386-pc modules
and systemd-boot's EFI binary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from make_disk_image import process, vm

STEP = "testsys"
PACKAGE_DIR = Path(__file__).resolve().parent
NIXOS_ENTER_DIR = PACKAGE_DIR / "bin"
NIXOS_VERSION = "25.05.test"

# What the initramfs loads: the disk, the root filesystems the engine makes writable
# (ext4 with the checksum it needs, btrfs, xfs) and efivarfs (to report which boot
# entry the firmware used).
INITRD_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc32c",
    "ext4",
    "btrfs",
    "xfs",
    "efivarfs",
)

# Host programs the image's switch-to-configuration runs (through the copied loader).
HOST_PROGRAMS: tuple[str, ...] = ("/usr/sbin/grub-install", "/usr/bin/chattr")
GRUB_MODULES_DIR = "/usr/lib/grub/i386-pc"
SYSTEMD_BOOT_EFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    group: str
    home: str = "/var/empty"


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...] = ()


DEFAULT_USERS: tuple[User, ...] = (
    User("root", 0, "root", "/root"),
    User("alice", 1000, "users", "/home/alice"),
    User("bob", 1001, "bob", "/home/bob"),
    User("nobody", 65534, "nogroup"),
)
DEFAULT_GROUPS: tuple[Group, ...] = (
    Group("root", 0),
    Group("wheel", 1, ("alice",)),
    Group("users", 100, ("alice",)),
    Group("bob", 1001),
    Group("nogroup", 65534),
)


@dataclass(frozen=True)
class BootLoader:
    """The boot loader options of the test system's configuration.

    `grub_devices` is boot.loader.grub.devices (empty: GRUB disabled); systemd-boot
    installs to `efi_sys_mount_point` and puts entries and kernels on
    `xbootldr_mount_point` when set (boot.loader.systemd-boot.xbootldrMountPoint).
    """

    grub_devices: tuple[str, ...] = ()
    systemd_boot: bool = False
    can_touch_efi_variables: bool = False
    efi_sys_mount_point: str = "/boot"
    xbootldr_mount_point: str | None = None
    # The systemd whose `bootctl install` switch-to-configuration follows for EFI
    # variables: below 257 it writes them (Debian 12 has 252); from 257 on it skips
    # them in a container, which includes nixos-enter's PID namespace.
    bootctl_systemd: int = 252


def host_systemd_version() -> int:
    """The major version of the host's systemd (`systemd-detect-virt --version`)."""
    out = process.run(["systemd-detect-virt", "--version"], step=STEP).stdout.decode()
    return int(out.split()[1])


def boot_loader_for(
    partition_table_type: str, *, touch_efi_vars: bool = False, grub_device: str = "/dev/sda"
) -> BootLoader:
    """The NixOS boot loader configuration that fits an image layout.

    BIOS layouts get GRUB, UEFI layouts systemd-boot, hybrid both; the mount points are
    where make-disk-image's guest mounts the ESP (and XBOOTLDR for efixbootldr).
    """
    grub = (grub_device,)
    match partition_table_type:
        case "legacy" | "legacy+boot" | "legacy+gpt":
            return BootLoader(grub_devices=grub)
        case "efi":
            return BootLoader(systemd_boot=True, can_touch_efi_variables=touch_efi_vars)
        case "efixbootldr":
            return BootLoader(
                systemd_boot=True,
                can_touch_efi_variables=touch_efi_vars,
                efi_sys_mount_point="/efi",
                xbootldr_mount_point="/boot",
            )
        case "hybrid":
            return BootLoader(
                grub_devices=grub, systemd_boot=True, can_touch_efi_variables=touch_efi_vars
            )
        case _:
            raise ValueError(f"no boot loader for partition table type {partition_table_type!r}")


@dataclass(frozen=True)
class TestSystem:
    """A built test system: its store paths and what a SPEC.json needs of it."""

    __test__ = False  # not a pytest test class, despite its name

    toplevel: Path
    channel: Path
    closure_info: Path
    kernel_version: str
    label: str
    boot_loader: BootLoader
    users: tuple[User, ...] = DEFAULT_USERS
    groups: tuple[Group, ...] = DEFAULT_GROUPS
    additional_paths: tuple[Path, ...] = field(default=())

    def store_paths(self) -> list[Path]:
        """The closure (toplevel, channel, additional paths), as closureInfo lists it."""
        text = (self.closure_info / "store-paths").read_text()
        return [Path(line) for line in text.splitlines() if line]

    def spec(self, **overrides: Any) -> dict[str, Any]:
        """A SPEC.json object for make-disk-image with this system; `overrides` win."""
        spec: dict[str, Any] = {
            "toplevel": str(self.toplevel),
            "closureInfo": str(self.closure_info),
            "channelSources": str(self.channel),
            "grubDevices": list(self.boot_loader.grub_devices),
            "label": self.label,
        }
        if self.additional_paths:
            spec["additionalPaths"] = [str(p) for p in self.additional_paths]
        spec.update(overrides)
        return spec


def _passwd(users: Sequence[User], groups: Sequence[Group]) -> str:
    gids = {g.name: g.gid for g in groups}
    return "".join(
        f"{u.name}:x:{u.uid}:{gids[u.group]}::{u.home}:/run/current-system/sw/bin/sh\n"
        for u in users
    )


def _group(groups: Sequence[Group]) -> str:
    return "".join(f"{g.name}:x:{g.gid}:{','.join(g.members)}\n" for g in groups)


def initramfs(kernel_version: str) -> Path:
    """The test system's initramfs (cached by make_disk_image.vm)."""
    init = (PACKAGE_DIR / "scripts" / "stage-1-init.sh").read_text()
    return vm.build_initramfs(init, kernel_version=kernel_version, modules=INITRD_MODULES)


def write_closure_info(roots: Sequence[Path], directory: Path) -> Path:
    """Add a nixpkgs closureInfo equivalent for `roots` to the store; return its path.

    `store-paths` lists the closure, `registration` is `nix-store --dump-db` of it
    (what `nix-store --load-db` reads), `total-nar-size` the sum of the NAR sizes.
    """
    query = process.run(["nix-store", "--query", "--requisites", *roots], step=STEP)
    paths = sorted(set(query.stdout.decode().split()))
    registration = process.run(["nix-store", "--dump-db", *paths], step=STEP).stdout
    sizes = process.run(["nix-store", "--query", "--size", *paths], step=STEP).stdout
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "store-paths").write_text("".join(f"{p}\n" for p in paths))
    (directory / "registration").write_bytes(registration)
    (directory / "total-nar-size").write_text(f"{sum(int(s) for s in sizes.split())}\n")
    added = process.run(["nix-store", "--add", directory], step=STEP)
    return Path(added.stdout.decode().strip())


def build_test_system(
    work_dir: Path,
    boot_loader: BootLoader,
    *,
    label: str = "nixos",
    host_name: str = "testsys",
    additional_paths: Sequence[Path] = (),
    copy_channel: bool = True,
    users: Sequence[User] = DEFAULT_USERS,
    groups: Sequence[Group] = DEFAULT_GROUPS,
    extra_kernel_params: Sequence[str] = (),
) -> TestSystem:
    """Build the test system with Nix and its closureInfo; GC roots go in `work_dir`."""
    kernel_image, kernel_version = vm.host_kernel()
    work_dir.mkdir(parents=True, exist_ok=True)
    # systemd >= 257 bootctl semantics: the host's own systemd-detect-virt decides when
    # it is that new (the same detect_container()), the script's copy of it otherwise.
    detect_virt = boot_loader.bootctl_systemd >= 257 and host_systemd_version() >= 257
    host_programs = [*HOST_PROGRAMS, *(["/usr/bin/systemd-detect-virt"] if detect_virt else [])]
    config: Mapping[str, Any] = {
        "scriptsDir": str(PACKAGE_DIR / "scripts"),
        "busybox": str(Path("/bin/busybox").resolve()),
        "hostPrograms": host_programs,
        "grubModules": GRUB_MODULES_DIR,
        "systemdBootEfi": SYSTEMD_BOOT_EFI,
        "kernelImage": str(kernel_image),
        "kernelVersion": kernel_version,
        "initrd": str(initramfs(kernel_version)),
        "kernelParams": " ".join(
            [f"root=LABEL={label}", "console=ttyS0,115200", "panic=1", *extra_kernel_params]
        ),
        "nixosVersion": NIXOS_VERSION,
        "hostName": host_name,
        "passwd": _passwd(users, groups),
        "group": _group(groups),
        "bootLoader": {
            "grubDevices": list(boot_loader.grub_devices),
            "systemdBoot": boot_loader.systemd_boot,
            "canTouchEfiVariables": boot_loader.can_touch_efi_variables,
            "efiSysMountPoint": boot_loader.efi_sys_mount_point,
            "xbootldrMountPoint": boot_loader.xbootldr_mount_point or "",
            "bootctlSystemd": boot_loader.bootctl_systemd,
            "detectVirt": detect_virt,
        },
    }
    config_file = work_dir / "testsys-config.json"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    built = process.run(
        [
            "nix-build",
            PACKAGE_DIR / "system.nix",
            "--argstr",
            "configFile",
            config_file,
            "-A",
            "toplevel",
            "-A",
            "channel",
            "--out-link",
            work_dir / "result",
        ],
        step=STEP,
        env={"NIX_PATH": os.environ.get("NIX_PATH", "")},
        timeout=600,
    )
    toplevel_text, channel_text = built.stdout.decode().split()
    toplevel, channel = Path(toplevel_text), Path(channel_text)
    roots = [toplevel, *([channel] if copy_channel else []), *additional_paths]
    closure_info = write_closure_info(roots, work_dir / "closure-info")
    return TestSystem(
        toplevel=toplevel,
        channel=channel,
        closure_info=closure_info,
        kernel_version=kernel_version,
        label=label,
        boot_loader=boot_loader,
        users=tuple(users),
        groups=tuple(groups),
        additional_paths=tuple(additional_paths),
    )

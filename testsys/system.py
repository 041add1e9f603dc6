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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from make_disk_image import initramfs as vm_initramfs
from make_disk_image import process
from make_disk_image.hostkernel import installed_busybox, installed_kernel
from make_disk_image.kernel import Kernel
from make_disk_image.platforms import Platform, host_system, platform_for

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
# In a system of another architecture, unpacked from Debian's packages (guestroot.py).
GUEST_GRUB_MODULES_DIR = "usr/lib/grub/{target}"
GUEST_SYSTEMD_BOOT_EFI = "usr/lib/systemd/boot/efi/systemd-boot{efi_arch}.efi"


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
    # GRUB for UEFI (boot.loader.grub.efiSupport, installed as the removable loader).
    grub_efi: bool = False
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
    partition_table_type: str,
    *,
    touch_efi_vars: bool = False,
    grub_device: str = "/dev/sda",
    system: str | None = None,
) -> BootLoader:
    """The NixOS boot loader configuration that fits an image layout.

    BIOS layouts get GRUB, UEFI layouts systemd-boot, hybrid both; the mount points are
    where make-disk-image's guest mounts the ESP (and XBOOTLDR for efixbootldr).

    A `system` without BIOS (aarch64) has no BIOS layouts; its hybrid gets GRUB for UEFI
    (grub.devices = [ "nodev" ]). Its systemd-boot leaves the EFI boot entry to the
    engine (as systemd >= 257's bootctl does in nixos-enter): the test system has no
    chattr of that architecture to lift efivarfs' immutable flag on BootOrder.
    """
    grub = (grub_device,)
    if system is not None and not platform_for(system).bios:
        match partition_table_type:
            case "efi" | "efixbootldr":
                return replace(
                    boot_loader_for(partition_table_type, touch_efi_vars=touch_efi_vars),
                    can_touch_efi_variables=False,
                )
            case "hybrid":
                return BootLoader(grub_devices=("nodev",), grub_efi=True)
            case _:
                raise ValueError(f"{system} has no boot loader for {partition_table_type!r}")
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
    system: str = "x86_64-linux"
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
        if self.system != host_system():
            spec["system"] = self.system
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


def initramfs(kernel: Kernel, busybox: Path) -> Path:
    """The test system's initramfs (cached by make_disk_image.initramfs)."""
    init = (PACKAGE_DIR / "scripts" / "stage-1-init.sh").read_text()
    return vm_initramfs.build_initramfs(
        init, kernel=kernel, modules=INITRD_MODULES, busybox=busybox
    )


@dataclass(frozen=True)
class SystemInputs:
    """Where a test system's architecture-specific files come from."""

    platform: Platform
    root: Path  # "/" for the host's own architecture, else a guest root
    kernel: Kernel
    busybox: Path
    host_programs: tuple[str, ...]
    grub_modules: str
    grub_target: str
    systemd_boot_efi: str


def system_inputs(system: str | None) -> SystemInputs:
    """The host's files for its own architecture; Debian's unpacked ones for another."""
    plat = platform_for(system or host_system())
    if plat.system == host_system():
        return SystemInputs(
            plat, Path("/"), installed_kernel(), installed_busybox().resolve(),
            HOST_PROGRAMS, GRUB_MODULES_DIR, "i386-pc", SYSTEMD_BOOT_EFI,
        )  # fmt: skip
    from testsys.debian import debian_arch
    from testsys.guestroot import guest_root

    root = guest_root(debian_arch(plat.system))
    return SystemInputs(
        plat, root, installed_kernel(root), installed_busybox(root), (),
        str(root / GUEST_GRUB_MODULES_DIR.format(target=plat.grub_efi_target)),
        plat.grub_efi_target,
        str(root / GUEST_SYSTEMD_BOOT_EFI.format(efi_arch=plat.efi_arch)),
    )  # fmt: skip


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


def _boot_loader_config(boot_loader: BootLoader, detect_virt: bool) -> dict[str, Any]:
    """system.nix's bootLoader: what switch-to-configuration installs, and how."""
    return {
        "grubDevices": list(boot_loader.grub_devices),
        "grubEfi": boot_loader.grub_efi,
        "systemdBoot": boot_loader.systemd_boot,
        "canTouchEfiVariables": boot_loader.can_touch_efi_variables,
        "efiSysMountPoint": boot_loader.efi_sys_mount_point,
        "xbootldrMountPoint": boot_loader.xbootldr_mount_point or "",
        "bootctlSystemd": boot_loader.bootctl_systemd,
        "detectVirt": detect_virt,
    }


def _nix_build_system(config_file: Path, work_dir: Path) -> tuple[Path, Path]:
    """nix-build of system.nix with `config_file`: (toplevel, channel)."""
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
    return toplevel, channel


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
    system: str | None = None,
) -> TestSystem:
    """Build the test system with Nix and its closureInfo; GC roots go in `work_dir`.

    `system` ("aarch64-linux"): the system's architecture, the host's by default.
    """
    inputs = system_inputs(system)
    kernel_version = inputs.kernel.version
    work_dir.mkdir(parents=True, exist_ok=True)
    # systemd >= 257 bootctl semantics: the host's own systemd-detect-virt decides when
    # it is that new (the same detect_container()), the script's copy of it otherwise.
    detect_virt = boot_loader.bootctl_systemd >= 257 and host_systemd_version() >= 257
    host_programs = [
        *inputs.host_programs, *(["/usr/bin/systemd-detect-virt"] if detect_virt else [])
    ]
    plat = inputs.platform
    config: Mapping[str, Any] = {
        "system": plat.system,
        "scriptsDir": str(PACKAGE_DIR / "scripts"),
        "busybox": str(inputs.busybox),
        "busyboxApplets": vm_initramfs.busybox_applets(inputs.busybox.read_bytes()),
        "hostPrograms": host_programs,
        "grubModules": inputs.grub_modules,
        "grubTarget": inputs.grub_target,
        "systemdBootEfi": inputs.systemd_boot_efi,
        "efiArch": plat.efi_arch,
        "kernelImage": str(inputs.kernel.image),
        "kernelFile": plat.kernel_file,
        "kernelVersion": kernel_version,
        "initrd": str(initramfs(inputs.kernel, inputs.busybox)),
        "kernelParams": " ".join(
            [f"root=LABEL={label}", f"console={plat.console},115200", "panic=1",
             *extra_kernel_params]
        ),
        "nixosVersion": NIXOS_VERSION,
        "hostName": host_name,
        "passwd": _passwd(users, groups),
        "group": _group(groups),
        "bootLoader": _boot_loader_config(boot_loader, detect_virt),
    }
    config_file = work_dir / "testsys-config.json"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    toplevel, channel = _nix_build_system(config_file, work_dir)
    roots = [toplevel, *([channel] if copy_channel else []), *additional_paths]
    closure_info = write_closure_info(roots, work_dir / "closure-info")
    return TestSystem(
        toplevel=toplevel,
        channel=channel,
        closure_info=closure_info,
        kernel_version=kernel_version,
        label=label,
        boot_loader=boot_loader,
        system=plat.system,
        users=tuple(users),
        groups=tuple(groups),
        additional_paths=tuple(additional_paths),
    )

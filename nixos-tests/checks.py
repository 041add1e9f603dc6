# Test script body for nixos-tests/make-image-test.nix, run by the nixpkgs NixOS test
# driver (which provides `machine` and `subtest`; they are passed in explicitly so
# this file stays plain Python). The expectations come from a JSON file the Nix side
# writes: image path, layout, contents owners and modes, the toplevel.
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

# systemd-boot's vendor GUID: it sets LoaderEntrySelected when it booted an entry.
SYSTEMD_BOOT_VENDOR_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

Subtest = Callable[[str], AbstractContextManager[None]]

# Options the caller gave qemu (the driver passes QEMU_OPTS through to the start script).
BASE_QEMU_OPTS = os.environ.get("QEMU_OPTS", "")


def output_of(machine: Any, command: str) -> str:
    return str(machine.succeed(command)).strip()


def assert_equal(what: str, actual: object, expected: object) -> None:
    assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


def start_from_image(machine: Any, expected: dict[str, Any], firmware: str) -> None:
    """Boot a fresh qcow2 overlay of the built image, as nixpkgs' image tests do."""
    state = tempfile.mkdtemp(prefix=f"make-disk-image-{firmware}-")
    overlay = os.path.join(state, "disk.qcow2")
    subprocess.run(
        [
            expected["qemuImg"],
            "create",
            "-f",
            "qcow2",
            "-F",
            expected["imageFormat"],
            "-b",
            expected["imageFile"],
            overlay,
        ],
        check=True,
    )
    # qemu-vm's start script attaches $NIX_DISK_IMAGE as the virtio root drive.
    os.environ["NIX_DISK_IMAGE"] = overlay
    qemu_opts = [BASE_QEMU_OPTS] if BASE_QEMU_OPTS else []
    if firmware == "uefi":
        # Writable copy of the variable store: the image's efi-vars.fd (with the boot
        # entry bootctl made) when touchEFIVars, else OVMF's empty template.
        efi_vars = os.path.join(state, "efi-vars.fd")
        shutil.copyfile(expected["efiVariables"], efi_vars)
        os.chmod(efi_vars, 0o644)
        os.environ["NIX_EFI_VARS"] = efi_vars
        if not expected["nodeHasEFI"]:
            qemu_opts += [
                f"-drive if=pflash,format=raw,unit=0,readonly=on,file={expected['efiFirmware']}",
                f"-drive if=pflash,format=raw,unit=1,file={efi_vars}",
            ]
    os.environ["QEMU_OPTS"] = " ".join(qemu_opts)
    machine.start()


def check_firmware_and_root(
    machine: Any, subtest: Subtest, expected: dict[str, Any], firmware: str
) -> None:
    root = expected["rootDevice"]
    with subtest(f"{firmware}: booted by firmware"):
        if firmware == "uefi":
            machine.succeed("test -d /sys/firmware/efi")
        else:
            machine.fail("test -d /sys/firmware/efi")

    with subtest(f"{firmware}: root filesystem from partition {root}, found by label"):
        assert_equal(
            "partition table",
            output_of(machine, "lsblk -dn -o PTTYPE /dev/vda"),
            expected["partitionTable"],
        )
        partitions = output_of(machine, "lsblk -ln -o TYPE /dev/vda").split()
        assert_equal("partitions", partitions.count("part"), expected["partitionCount"])
        assert_equal("source of /", output_of(machine, "findmnt -n -o SOURCE /"), root)
        assert_equal("fstype of /", output_of(machine, "findmnt -n -o FSTYPE /"), "ext4")
        assert_equal(
            f"by-label/{expected['label']}",
            output_of(machine, f"readlink -f /dev/disk/by-label/{expected['label']}"),
            root,
        )
        assert_equal(
            "root fs UUID",
            output_of(machine, f"blkid -s UUID -o value {root}"),
            expected["rootFSUID"],
        )
        if expected["rootPartUUID"] is not None:
            assert_equal(
                "root partition GUID",
                output_of(machine, f"blkid -s PARTUUID -o value {root}"),
                expected["rootPartUUID"],
            )

    with subtest(f"{firmware}: boot partitions mounted by label"):
        for fs in expected["bootFileSystems"]:
            device = f"/dev/vda{fs['partition']}"
            mount_point = fs["mountPoint"]
            machine.succeed(f"mountpoint -q {mount_point}")
            assert_equal(
                f"source of {mount_point}",
                output_of(machine, f"findmnt -n -o SOURCE {mount_point}"),
                device,
            )
            assert_equal(
                f"fstype of {mount_point}",
                output_of(machine, f"findmnt -n -o FSTYPE {mount_point}"),
                "vfat",
            )
            assert_equal(
                f"by-label/{fs['label']}",
                output_of(machine, f"readlink -f /dev/disk/by-label/{fs['label']}"),
                device,
            )


def check_boot_loader(
    machine: Any, subtest: Subtest, expected: dict[str, Any], firmware: str
) -> None:
    with subtest(f"{firmware}: {expected['bootLoader']} booted the system"):
        if expected["bootLoader"] == "systemd-boot":
            machine.succeed(
                f"test -e /sys/firmware/efi/efivars/LoaderEntrySelected-{SYSTEMD_BOOT_VENDOR_GUID}"
            )
            machine.succeed("bootctl list --no-pager | grep -q nixos-generation-1")
            if expected["partitionTableType"] == "efixbootldr":
                # Entries and kernels on XBOOTLDR, the boot manager on the ESP.
                machine.succeed("test -e /boot/loader/entries/nixos-generation-1.conf")
                machine.succeed("ls /efi/EFI/systemd/systemd-boot*.efi")
                machine.fail("test -e /efi/loader/entries/nixos-generation-1.conf")
            else:
                machine.succeed("test -e /boot/loader/entries/nixos-generation-1.conf")
        else:
            machine.succeed("test -s /boot/grub/grub.cfg")
            # The menu entry boots this system: its kernel line names init=<toplevel>/init.
            machine.succeed(f"grep -q 'init={expected['toplevel']}/init' /boot/grub/grub.cfg")
            if expected["bootLoader"] == "grub-hybrid":
                machine.succeed("test -e /boot/EFI/BOOT/BOOTX64.EFI")

    if firmware == "uefi" and expected["bootLoader"] == "systemd-boot":
        with subtest(
            f"{firmware}: EFI boot entry {'present' if expected['touchEFIVars'] else 'absent'}"
        ):
            # bootctl registers "Linux Boot Manager" only when it may touch the variables.
            if expected["touchEFIVars"]:
                machine.succeed("efibootmgr | grep 'Linux Boot Manager'")
            else:
                machine.fail("efibootmgr | grep 'Linux Boot Manager'")


def check_system(machine: Any, subtest: Subtest, expected: dict[str, Any], firmware: str) -> None:
    toplevel = expected["toplevel"]
    with subtest(f"{firmware}: the booted system is the image's NixOS"):
        assert_equal("nixos-version", output_of(machine, "nixos-version"), expected["nixosVersion"])
        assert_equal(
            "current system", output_of(machine, "readlink -f /run/current-system"), toplevel
        )
        assert_equal(
            "system profile",
            output_of(machine, "readlink -f /nix/var/nix/profiles/system"),
            toplevel,
        )
        machine.succeed("test -e /etc/NIXOS")
        # The image's Nix database knows its closure.
        machine.succeed(f"nix-store --check-validity {toplevel}")
        if expected["copyChannel"]:
            machine.succeed("test -e /nix/var/nix/profiles/per-user/root/channels/nixos")


def check_contents(machine: Any, subtest: Subtest, expected: dict[str, Any], firmware: str) -> None:
    with subtest(f"{firmware}: contents have their owners and modes"):
        for entry in expected["contents"]:
            path = entry["path"]
            uid, gid, user, group, mode = output_of(
                machine, f"stat -c '%u %g %U %G %a' {path}"
            ).split()
            assert_equal(f"mode of {path}", int(mode, 8), int(entry["mode"], 8))
            if "uid" in entry:
                assert_equal(f"owner of {path}", (int(uid), int(gid)), (entry["uid"], entry["gid"]))
            if "user" in entry:
                assert_equal(
                    f"owner names of {path}", (user, group), (entry["user"], entry["group"])
                )
            if "text" in entry:
                assert_equal(f"text of {path}", machine.succeed(f"cat {path}"), entry["text"])


def run_image_test(machine: Any, subtest: Subtest, expected_file: str) -> None:
    with open(expected_file) as f:
        expected = json.load(f)
    for firmware in expected["firmwares"]:
        start_from_image(machine, expected, firmware)
        machine.wait_for_unit("multi-user.target")
        check_firmware_and_root(machine, subtest, expected, firmware)
        check_boot_loader(machine, subtest, expected, firmware)
        check_system(machine, subtest, expected, firmware)
        check_contents(machine, subtest, expected, firmware)
        machine.shutdown()

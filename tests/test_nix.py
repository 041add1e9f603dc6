"""The Nix layer, built for real: nix-build of default.nix in every layout and the flake
against the offline nixpkgs stand-in (tests/nixpkgs), through preVM / the qemu guest /
postVM; bad arguments and a failing guest fail the build with the engine's message.

Each image is checked with the tools a user would use (sfdisk, e2fsck, debugfs,
dumpe2fs, mtools, qemu-img), not with the engine's own code (tests/nixbuild.py). See
docs/nix.md. What default.nix evaluates to: test_nix_evaluation.py; when it boots a
build VM and asks for KVM: test_nix_build_vm.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nixbuild import (
    BIOS_BOOT_GUID,
    BOOTLOADER_MARKER,
    ESP_GUID,
    IMAGE_NIX,
    NIX_BUILD_TESTS,
    NO_GRUB,
    ROOT_GPUID,
    SEED_DISK_GUID,
    XBOOTLDR_GUID,
    Partition,
    as_raw,
    build_image,
    check_ext4,
    checked,
    debugfs,
    ext4_header,
    ext4_read,
    ext4_stat,
    fat_label,
    fat_read,
    hydra_products,
    nix_build_image,
    partition_table,
    run,
    store_path_names,
)

pytestmark = NIX_BUILD_TESTS


@pytest.fixture
def contents_file(tmp_path: Path) -> Path:
    source = tmp_path / "motd"
    source.write_text("welcome to the image\n")
    return source



# Config modules of the stand-in NixOS (NixOS options, evaluated by lib.evalModules):
# grub on a device the guest must link to /dev/vda, and a user the guest must chown
# contents to; nixbuild.NO_GRUB for none.
GRUB_SDA = {
    "boot": {"loader": {"grub": {"enable": True, "devices": ["/dev/sda"]}}},
    "users": {"users": {"alice": {"isNormalUser": True, "uid": 1000}}},
}
LIMINE_SDB = {
    "boot": {
        "loader": {
            "grub": {"enable": False},
            "limine": {"enable": True, "biosSupport": True, "biosDevice": "/dev/sdb"},
        }
    }
}


@dataclass(frozen=True)
class LayoutCase:
    partition_table_type: str
    image_format: str
    extension: str
    config: Mapping[str, Any]
    # 1-based number of the root partition (0: the image is the file system), of the
    # partition /boot lives on when it is not the root, and the boot loader devices.
    root: int
    boot: int | None
    devices: tuple[str, ...]
    extra_args: Mapping[str, Any]


LAYOUTS = [
    LayoutCase("legacy", "raw", "img", GRUB_SDA, 1, None, ("/dev/sda",), {"diskSize": 700}),
    LayoutCase("legacy+boot", "qcow2", "qcow2", GRUB_SDA, 2, 1, ("/dev/sda",), {}),
    LayoutCase("legacy+gpt", "vpc", "vhd", GRUB_SDA, 2, None, ("/dev/sda",), {}),
    LayoutCase("efi", "qcow2-compressed", "qcow2", NO_GRUB, 2, 1, (), {"touchEFIVars": True}),
    LayoutCase("efixbootldr", "vdi", "vdi", NO_GRUB, 3, 2, (), {"bootSize": "160M"}),
    LayoutCase("hybrid", "raw", "img", LIMINE_SDB, 3, 1, ("/dev/sdb",), {}),
    LayoutCase(
        "none",
        "raw",
        "img",
        NO_GRUB,
        0,
        None,
        (),
        {"copyChannel": False, "baseName": "rootfs", "label": "standin-root", "name": "rootfs"},
    ),
]


@pytest.mark.parametrize(
    "case", LAYOUTS, ids=lambda c: f"{c.partition_table_type}-{c.image_format}"
)
def test_nix_build_layout(
    case: LayoutCase, checkout: Path, tmp_path: Path, contents_file: Path
) -> None:
    args: dict[str, Any] = {
        "partitionTableType": case.partition_table_type,
        "format": case.image_format,
        "contents": [
            {"source": str(contents_file), "target": "/etc/motd", "mode": "0640"}
            | ({"user": "alice", "group": "users"} if "users" in case.config else {})
        ],
        "postVM": 'echo "$diskImage" > $out/post-vm-disk-image',
        **case.extra_args,
    }
    result = build_image(checkout, tmp_path, args, case.config)
    out = result.out
    image = out / f"{case.extra_args.get('baseName', 'nixos')}.{case.extension}"
    assert out.name.endswith("-" + case.extra_args.get("name", "nixos-disk-image"))
    assert image.is_file()
    # The user's postVM ran after the engine's finish, with diskImage set to the output.
    assert (out / "post-vm-disk-image").read_text().strip() == str(image)
    fmt = "qcow2" if case.image_format == "qcow2-compressed" else case.image_format
    assert hydra_products(out) == [f"file {fmt}-image {image}"]
    info = json.loads(checked(["qemu-img", "info", "--output=json", str(image)]))
    assert info["format"] == fmt
    if "diskSize" in case.extra_args:
        assert info["virtual-size"] == case.extra_args["diskSize"] * 1024 * 1024
    assert (out / "efi-vars.fd").is_file() == bool(case.extra_args.get("touchEFIVars"))

    raw = as_raw(image, tmp_path)
    if case.root == 0:
        root_spec = str(raw)
        assert not run(["sfdisk", "--json", str(raw)]).stdout.strip()
        parts: list[Partition] = []
    else:
        table, parts = partition_table(raw)
        root_part = parts[case.root - 1]
        root_spec = f"{raw}?offset={root_part.offset}"
        if table["label"] == "gpt":
            assert table["id"].upper() == SEED_DISK_GUID
            if case.partition_table_type != "legacy+gpt":
                assert root_part.uuid is not None and root_part.uuid.upper() == ROOT_GPUID
        else:
            assert table["label"] == "dos"
    check_ext4(root_spec)
    header = ext4_header(root_spec)
    assert header["Filesystem volume name"] == case.extra_args.get("label", "nixos")
    # tune2fs in the guest set the UUID and the deterministic timestamps.
    assert header["Filesystem UUID"].upper() == ROOT_GPUID
    assert header["Last checked"].endswith("1970")

    assert "Type: symlink" in debugfs(root_spec, "stat /nix/var/nix/profiles/system")
    assert ext4_read(root_spec, "/etc/motd") == "welcome to the image\n"
    motd = ext4_stat(root_spec, "/etc/motd")
    assert motd["mode"].endswith("0640")
    if "users" in case.config:
        # chown in the guest through nixos-enter, with the image's own /etc/passwd.
        assert (motd["user"], motd["group"]) == ("1000", "100")

    # switch-to-configuration boot ran in the guest through nixos-enter, with the boot
    # loader devices linked to /dev/vda and /boot mounted where the layout puts it.
    if case.boot is None:
        marker = ext4_read(root_spec, f"/boot/{BOOTLOADER_MARKER}")
    else:
        boot_part = parts[case.boot - 1]
        marker = fat_read(raw, boot_part, f"/{BOOTLOADER_MARKER}")
        expected_label = {"legacy+boot": "BOOT", "efixbootldr": "BOOT"}.get(
            case.partition_table_type, "ESP"
        )
        assert fat_label(raw, boot_part).endswith(expected_label)
    lines = marker.splitlines()
    assert lines[0].startswith("system=/nix/store/") and "install=1" in lines
    assert [line for line in lines if line.startswith("device=")] == [
        f"device={d}" for d in case.devices
    ]
    if case.partition_table_type == "efixbootldr":
        esp = parts[0]
        assert esp.type == ESP_GUID and parts[1].type == XBOOTLDR_GUID
        assert fat_label(raw, esp).endswith("ESP")
    if case.partition_table_type in ("legacy+gpt", "hybrid"):
        assert BIOS_BOOT_GUID in {p.type for p in parts}


def test_nix_build_only_nix_store(checkout: Path, tmp_path: Path) -> None:
    """onlyNixStore: a plain derivation without VM, the store at the image's root."""
    result = build_image(
        checkout,
        tmp_path,
        {
            "onlyNixStore": True,
            "installBootLoader": False,
            "partitionTableType": "none",
            "copyChannel": False,
            "additionalTexts": ["an additional path\n"],
        },
    )
    image = result.out / "nixos.img"
    check_ext4(str(image))
    assert ext4_header(str(image))["Filesystem volume name"] == "nix-store"
    names = store_path_names(str(image), "/")
    assert any(n.endswith("-busybox-static-debian") for n in names), names
    assert any(n.endswith("-additional-path") for n in names), names
    assert "nix" not in names
    assert "Virtual machine" not in result.log


@pytest.mark.parametrize(
    ("image_args", "message"),
    [
        # Wrong in ways only the engine sees (default.nix checks types and the
        # reference's asserts at evaluation: tests/test_interface.py).
        ({"bootSize": "7M", "partitionTableType": "efi"}, "bootSize"),
        ({"memSize": 128}, "memSize"),
        ({"contents": [{"source": "/etc/hostname", "target": "/x", "mode": "999"}]},
         "contents[0].mode"),
    ],
    ids=["bootSize-too-small", "memSize-too-little", "mode-not-octal"],
)
def test_nix_build_wrong_argument_fails_with_engine_message(
    checkout: Path, tmp_path: Path, image_args: dict[str, Any], message: str
) -> None:
    proc = nix_build_image(checkout, tmp_path, image_args | {"copyChannel": False})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines()
              if "error:" in line and f"`{message}`" in line]  # fmt: skip
    assert errors, proc.stderr[-4000:]
    # The engine refused in preVM: nothing ran in a guest.
    assert "[guest" not in proc.stderr


def test_contents_entry_with_an_unknown_key_warns_and_evaluates(
    checkout: Path, tmp_path: Path
) -> None:
    """The reference ignores keys a contents entry does not use; so does default.nix,
    so that such a call site still builds, but it names them in a warning."""
    source = tmp_path / "motd"
    source.write_text("hello\n")
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    entry = {"source": str(source), "target": "/etc/motd", "owner": "root"}
    proc = run(["nix-instantiate", str(expr), "--arg", "repo", str(checkout),
                "--argstr", "imageArgs", json.dumps({"contents": [entry]}),
                "--argstr", "configModule", json.dumps(NO_GRUB)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(".drv"), proc.stdout
    assert "argument `contents`" in proc.stderr, proc.stderr
    assert "/etc/motd has keys that are ignored: owner" in proc.stderr, proc.stderr


def test_nix_build_guest_failure_fails_the_build(
    checkout: Path, tmp_path: Path, contents_file: Path
) -> None:
    """A command failing inside the VM fails the build: as in nixpkgs, stage 2 runs
    under `set -e`, so no exit code is written and the host says so, after the
    engine's own error line from the guest."""
    proc = nix_build_image(
        checkout,
        tmp_path,
        {
            "copyChannel": False,
            "contents": [
                {
                    "source": str(contents_file),
                    "target": "/etc/motd",
                    "user": "nosuchuser",
                    "group": "users",
                }
            ],
        },
        GRUB_SDA,
    )
    assert proc.returncode != 0
    # The guest's steps ran (the engine logs them), and chown's complaint came back.
    assert "[guest" in proc.stderr
    assert "nosuchuser" in proc.stderr, proc.stderr[-4000:]
    assert "error: guest: chown /etc/motd: command failed" in proc.stderr
    assert "Virtual machine didn't produce an exit code" in proc.stderr


def flake_ref_of_stand_in(checkout: Path) -> str:
    # git+file with dir=: the stand-in's vmTools and nixos-enter come from the checkout
    # around it (path: flake refs take no dir= in Nix 2.8).
    return f"git+file://{checkout}?dir=tests/nixpkgs"


def test_flake_build_package_and_check(checkout: Path) -> None:
    override = ["--override-input", "nixpkgs", flake_ref_of_stand_in(checkout)]
    built = json.loads(
        checked(
            ["nix", "build", "--no-link", "--json", f"{checkout}#packages.x86_64-linux.default"]
            + override,
            cwd=checkout,
        )
    )
    app = Path(built[0]["outputs"]["out"])
    help_text = checked([str(app / "bin" / "make-disk-image"), "--help"])
    assert "prepare" in help_text and "guest" in help_text

    shown = json.loads(checked(["nix", "flake", "show", "--json", str(checkout)] + override))
    checks = shown["checks"]["x86_64-linux"]
    assert {"package", "image-legacy-raw", "image-efi-qcow2", "image-nix-store"} <= set(checks)
    assert set(shown["checks"]) == {"x86_64-linux", "aarch64-linux"}
    assert "formatter" in shown and "lib" in shown
    assert set(shown["overlays"]) == {"default"} and set(shown["nixosModules"]) == {"default"}
    # nixpkgs' GRUB has no BIOS target on aarch64.
    assert "image-legacy-raw" not in shown["checks"]["aarch64-linux"]

    proc = run(["nix", "flake", "check", "-L", str(checkout)] + override, cwd=checkout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    # The checks were really built: their outputs are valid store paths now.
    for name in ("image-legacy-raw", "image-efi-qcow2"):
        out = json.loads(
            checked(
                ["nix", "build", "--no-link", "--json", f"{checkout}#checks.x86_64-linux.{name}"]
                + override,
                cwd=checkout,
            )
        )[0]["outputs"]["out"]
        assert (Path(out) / "nix-support" / "hydra-build-products").is_file()
